"""One recorded call of a public event function: replayable, readable, printable as code."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

import nytorch_func as nf

__all__ = ["Edit", "NO_VALUE", "short", "code_value"]


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()


@dataclasses.dataclass(frozen=True, eq=False)
class Edit:
    """One call of a public event function, ready to replay: ``edit.apply(p)`` returns
    ``nf.<kind>(p, path, value, **kwargs)``.

    ``value`` is the tensor or module an ``add_*`` edit adds (the very object, so initiator
    semantics can be checked with ``is``); other kinds have none. ``invalid`` marks edits from
    :func:`invalid_events`, which must raise a ``NytorchFuncError``. ``code`` is the Python
    expression that rebuilds ``value`` (``{p}`` stands for the particle the edit is applied
    to), used by :meth:`code_lines` to print a replayable example.

    Some kinds are not one plain call: ``to`` (``nf.to(p, **kwargs)``, no path);
    ``replace_module``, which deletes the submodule at ``path`` and adds ``value`` there, two
    versions (:meth:`steps`); ``insert_module`` (``path`` the container, ``value`` the module or
    list of modules, ``index`` an option); ``widen`` (``path`` the layer; ``consumers``, ``by``,
    ``between``, ``method`` and ``seed`` options: the generator is
    ``torch.Generator().manual_seed(seed)``, so every replay draws the same new units).
    ``keeps_output`` overrides the kind's promise for this one edit (``False`` for a block of
    the user's inserted by ``insert_module``, which computes something of its own).

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> e = nft.Edit("add_buffer", "count", torch.zeros(2), (("state", False),))
    >>> e
    add_buffer('count', <tensor [2] float32>, state=False)
    >>> p = e.apply(nf.from_module(torch.nn.Linear(1, 1)))
    >>> p.buffers["count"] is e.value
    True
    >>> nft.Edit("to", kwargs=(("dtype", torch.float64),)).code_lines("p0", ["p1"])
    ['p1 = nf.to(p0, dtype=torch.float64)']
    >>> w = nft.Edit("widen", "0", kwargs=(("consumers", ("2",)), ("by", 2), ("seed", 7)))
    >>> w.code_lines("p0", ["p1"])
    ["p1 = nf.widen(p0, '0', ['2'], 2, generator=torch.Generator().manual_seed(7))"]
    """

    kind: str
    path: Any = NO_VALUE
    value: Any = NO_VALUE
    kwargs: tuple[tuple[str, Any], ...] = ()
    invalid: bool = False
    code: str | None = dataclasses.field(default=None, repr=False)
    keeps_output: bool | None = dataclasses.field(default=None, repr=False)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def steps(self) -> tuple["Edit", ...]:
        """The primitive edits this one is made of, one version each."""
        if self.kind == "replace_module":
            if "index" in self.options:  # a Sequential/ModuleList child: back in its place
                container = self.path.rpartition(".")[0]
                return (Edit("del_module", self.path),
                        Edit("insert_module", container, self.value, self.kwargs, code=self.code))
            return (Edit("del_module", self.path),
                    Edit("add_module", self.path, self.value, code=self.code))
        return (self,)

    def apply(self, p: nf.Particle) -> nf.Particle:
        if self.kind == "replace_module":
            for step in self.steps():
                p = step.apply(p)
            return p
        if self.kind == "insert_module":
            return nf.insert_module(p, self.path, self.options["index"], self.value)
        if self.kind == "widen":
            o = self.options
            seed = o.get("seed")
            return nf.widen(p, self.path, list(o["consumers"]), o["by"],
                            between=list(o.get("between", ())), method=o.get("method", "net2net"),
                            generator=None if seed is None else torch.Generator().manual_seed(seed))
        fn = getattr(nf, self.kind)
        args = [p] + [a for a in (self.path, self.value) if a is not NO_VALUE]
        return fn(*args, **self.options)

    def __repr__(self) -> str:
        args = [] if self.path is NO_VALUE else [repr(self.path)]
        if self.value is not NO_VALUE:
            args.append(short(self.value))
        args += [f"{k}={short(v) if isinstance(v, type) else repr(v)}" for k, v in self.kwargs]
        return f"{self.kind}(" + ", ".join(args) + ")"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' printer
        printer.text(repr(self))

    def code_lines(self, before: str, after: list[str]) -> list[str]:
        """Python lines replaying this edit on the particle named ``before``; ``after`` names
        the particle after each of :meth:`steps` (one name, or two for ``replace_module``)."""
        if self.kind == "replace_module":
            first, second = self.steps()
            second = dataclasses.replace(second, code="block")
            return ([f"block = {self._value_code(before)}"] + first.code_lines(before, after[:1])
                    + second.code_lines(after[0], after[1:]))
        if self.kind == "insert_module":
            call = (f"nf.insert_module({before}, {self.path!r}, {self.options['index']}, "
                    f"{self._value_code(before)})")
            if self.invalid:
                return [f"{call}  # must raise nf.NytorchFuncError and change nothing"]
            return [f"{after[0]} = {call}"]
        if self.kind == "widen":
            o = self.options
            args = [before, repr(self.path), repr(list(o["consumers"])), repr(o["by"])]
            args += [f"between={list(o['between'])!r}"] if o.get("between") else []
            args += [f"method={o['method']!r}"] if o.get("method", "net2net") != "net2net" else []
            if o.get("seed") is not None:
                args.append(f"generator=torch.Generator().manual_seed({o['seed']})")
            call = f"nf.widen({', '.join(args)})"
            if self.invalid:
                return [f"{call}  # must raise nf.NytorchFuncError and change nothing"]
            return [f"{after[0]} = {call}"]
        lines, args = [], [before] + ([] if self.path is NO_VALUE else [repr(self.path)])
        if self.value is not NO_VALUE:
            value = self._value_code(before)
            if value.startswith("..."):  # not printable: name it on a line of its own
                lines.append(f"value = {value}")
                value = "value"
            args.append(value)
        args += [f"{k}={code_value(v)}" for k, v in self.kwargs]
        call = f"nf.{self.kind}({', '.join(args)})"
        if self.invalid:
            return lines + [f"{call}  # must raise nf.NytorchFuncError and change nothing"]
        return lines + [f"{after[0]} = {call}"]

    def _value_code(self, before: str) -> str:
        if self.code is not None:
            return self.code.replace("{p}", before)
        return code_value(self.value)


def code_value(value: Any) -> str:
    """Python for a keyword value or small value (configs, dtypes, plain data)."""
    if isinstance(value, nf.ParamConfig):
        return f"nf.{value!r}"
    if isinstance(value, torch.dtype):
        return repr(value)
    if isinstance(value, type) and issubclass(value, nn.Module) and \
            getattr(nn, value.__name__, None) is value:
        return f"nn.{value.__name__}"
    if isinstance(value, list) and value and all(isinstance(v, nn.Module) for v in value):
        return "[" + ", ".join(code_value(v) for v in value) + "]"
    if isinstance(value, torch.Tensor):
        if value.numel() == 0 or bool((value == 0).all()):
            base = f"torch.zeros({tuple(value.shape)!r}, dtype={value.dtype!r})"
            return f"nn.Parameter({base})" if isinstance(value, nn.Parameter) else base
        return f"...  # {short(value)}: not replayable as code"
    if isinstance(value, nn.Module):
        if not list(value.children()) and type(value).__module__.startswith("torch.nn"):
            return "nn." + " ".join(repr(value).split())
        return f"...  # {short(value)}: not printable as code"
    return repr(value)


def short(value: Any) -> str:
    """A one-line description of a tensor or module for reprs."""
    if isinstance(value, torch.Tensor):
        shape = "x".join(map(str, value.shape)) or "scalar"
        kind = "Parameter" if isinstance(value, nn.Parameter) else "tensor"
        grad = " requires_grad" if value.requires_grad and kind == "tensor" else ""
        grad = " no_grad" if kind == "Parameter" and not value.requires_grad else grad
        return f"<{kind} [{shape}] {str(value.dtype).replace('torch.', '')}{grad}>"
    if isinstance(value, nn.Module):
        return " ".join(repr(value).split())
    if isinstance(value, list) and value and all(isinstance(v, nn.Module) for v in value):
        return "[" + ", ".join(short(v) for v in value) + "]"
    if isinstance(value, type) and issubclass(value, nn.Module):
        return f"nn.{value.__name__}" if getattr(nn, value.__name__, None) is value \
            else value.__qualname__
    return repr(value)
