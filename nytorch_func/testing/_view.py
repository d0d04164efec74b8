"""What an event strategy sees of one version, and the user's forward pass it must keep working."""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Any

import hypothesis.strategies as st
import optree
import torch
from torch import nn

import nytorch_func as nf

from ._edit import Edit

__all__ = ["View", "Forward", "view_of", "zeros_at", "signature", "pretty"]

_NAMES = ("extra", "gain", "aux", "head", "w")


def signature(schema: nf.Schema) -> tuple:
    """The structure of a version as far as a forward pass can tell: every tensor's paths, kind,
    shape, dtype and device, and every module's class and ``None`` slots. Values are left out."""
    specs = tuple((s.paths, s.kind, s.shape, s.dtype, s.device) for s in schema.specs)
    mods = tuple((name, type(m), tuple(k for k, v in m._parameters.items() if v is None),
                  tuple(k for k, v in m._modules.items() if v is None))
                 for name, m in schema._skeleton.named_modules(remove_duplicate=False))
    return specs, mods


def _value_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", type(value), tuple(value.shape), value.dtype)
    if isinstance(value, nn.Module):
        tensors = [*value.named_parameters(remove_duplicate=False),
                   *value.named_buffers(remove_duplicate=False)]
        return ("module", type(value), tuple((n, tuple(t.shape), t.dtype) for n, t in tensors))
    return ("other", repr(value))


class Forward:
    """The user's example input and a memo of which structures still run it.

    ``example_input`` is one tensor, or a tuple of positional arguments (wrap a tuple argument
    in another tuple). Floating-point inputs are cast to the model's floating-point dtype, so
    the model still runs after ``nf.to(p, dtype=torch.bfloat16)``. Whether an edit keeps the
    forward pass working is decided once per (structure, edit) on a throw-away copy: the
    memo lives in this object, one per law-suite run or strategy, never in a global.
    """

    def __init__(self, example_input: Any) -> None:
        self.args = example_input if isinstance(example_input, tuple) else (example_input,)
        self._runs: dict[tuple, bool] = {}
        self._dtype_of: dict[tuple, torch.dtype] = {}
        self._memo: dict[tuple, Any] = {}

    def _dtypes(self, schema: nf.Schema) -> list[torch.dtype | None]:
        """Floating-point dtypes of the model, most values first (events may add tensors of
        other dtypes after an ``nf.to``); ``None``: leave the input as it is."""
        weight: dict[torch.dtype, int] = {}
        for s in schema.specs:
            if s.dtype.is_floating_point:
                weight[s.dtype] = weight.get(s.dtype, 0) + max(1, math.prod(s.shape))
        return sorted(weight, key=weight.__getitem__, reverse=True) or [None]

    def cast(self, dtype: torch.dtype | None) -> tuple:
        """The example input with floating-point tensors cast to ``dtype`` (None: as given)."""
        return self._cast(dtype)

    def _cast(self, dtype: torch.dtype | None) -> tuple:
        if dtype is None:
            return self.args
        return optree.tree_map(
            lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x,
            self.args, none_is_leaf=True)

    def inputs_for(self, schema: nf.Schema) -> tuple:
        """The example input with floating-point tensors cast to the model's dtype (the one
        a forward pass of this structure last ran with, else the one most values have)."""
        dtype = self._dtype_of.get(signature(schema))
        return self._cast(dtype if dtype is not None else self._dtypes(schema)[0])

    def run(self, p: nf.Particle) -> Any:
        """``nf.apply(p, *example_input)``, the input cast to ``p``'s dtype: each floating
        dtype of the model is tried, most common first, and the first that runs is kept."""
        key = signature(p.schema)
        known = self._dtype_of.get(key)
        if known is not None:
            return nf.apply(p, *self._cast(known))
        first: Exception | None = None
        for dtype in self._dtypes(p.schema):
            try:
                out = nf.apply(p, *self._cast(dtype))
            except Exception as err:  # noqa: BLE001 - try the next dtype, raise the first error
                first = first or err
                continue
            if dtype is not None:
                self._dtype_of[key] = dtype
            return out
        raise first  # type: ignore[misc]

    def runs_after(self, p: nf.Particle, edit: Edit) -> bool:
        """Whether the forward pass works on ``p``'s structure after ``edit`` (``p`` untouched)."""
        key = (signature(p.schema), edit.kind, repr(edit.path), repr(edit.kwargs),
               _value_key(edit.value))
        known = self._runs.get(key)
        if known is None:
            try:
                self.run(edit.apply(nf.from_module(nf.to_module(p))))
                known = True
            except Exception:  # noqa: BLE001 - any failure means "does not run"
                known = False
            self._runs[key] = known
        return known


    def memo(self, key: tuple, compute: Any) -> Any:
        """``compute()``, once per ``key`` for the life of this object (probes of a structure)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def plain(self, module: nn.Module, schema: nf.Schema) -> Any:
        """``module(*example_input)`` in plain torch (no nytorch_func call), the input cast as
        for ``schema``; the global RNG forked and seeded, so two calls compare exactly."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            return module(*self.inputs_for(schema))


@dataclasses.dataclass(frozen=True)
class View:
    """One version as the event strategies see it.

    ``particle``: a particle at that version holding real values (a scratch copy, or zeros);
    ``batched``: whether the edit will be applied to a population; ``new_modules``: the
    user's strategy for modules to add (``None``: small random layers); ``forward``: when set,
    only edits after which the forward pass still runs are drawn.
    """

    particle: nf.Particle
    batched: bool = False
    new_modules: st.SearchStrategy[nn.Module] | None = None
    forward: Forward | None = None

    @property
    def schema(self) -> nf.Schema:
        return self.particle.schema

    @property
    def params(self) -> list[str]:
        return sorted(p for s in self.schema.specs if s.kind == "param" for p in s.paths)

    @property
    def buffers(self) -> list[str]:
        return sorted(p for s in self.schema.specs if s.kind == "buffer" for p in s.paths)

    @property
    def modules(self) -> list[tuple[str, nn.Module]]:
        return sorted(self.schema._skeleton.named_modules(remove_duplicate=False),
                      key=lambda item: item[0])

    @property
    def submodules(self) -> list[str]:
        return [path for path, _ in self.modules if path]

    def free_names(self, module: nn.Module) -> list[str]:
        taken = lambda n: (n in module._parameters or n in module._buffers  # noqa: E731
                           or n in module._modules or hasattr(module, n))
        names = [n for n in _NAMES if not taken(n)]
        k = 0
        while not names:
            names = [f"n{k}"] if not taken(f"n{k}") else []
            k += 1
        return names

    @functools.cached_property
    def module(self) -> nn.Module:
        """``nf.to_module(particle)``, made once per view (read it, do not change it)."""
        return nf.to_module(self.particle)

    def runs(self, edit: Edit) -> bool:
        """True when no forward is watched, or the forward pass still runs after ``edit``."""
        return self.forward is None or self.forward.runs_after(self.particle, edit)

    def accepts(self, kind: Any, target: Any) -> bool:
        """Whether ``kind``'s probe lets ``target`` be drawn: its probe gives an edit the forward
        pass must survive, or the verdict itself (True/False); no probe or no forward: True."""
        if self.forward is None or kind.probe is None:
            return True
        verdict = kind.probe(self, target)
        return self.runs(verdict) if isinstance(verdict, Edit) else bool(verdict)


def zeros_at(schema: nf.Schema) -> nf.Particle:
    """A particle of ``schema``'s species at that version holding zeros."""
    return nf.Particle(schema, tuple(torch.zeros(s.shape, dtype=s.dtype, device=s.device)
                                     for s in schema.leaf_specs))


def view_of(target: Any, allow_shared: bool | None, what: str, **fields: Any) -> View:
    """The view of ``target``: a Particle (its species' newest version) or a Schema."""
    if isinstance(target, nf.Schema):
        schema, batched = target, False
    elif isinstance(target, nf.Particle):
        schema = target.species.head or target.schema
        batched = bool(target.batch_shape)
    else:
        raise nf.ArgumentTypeError(f"{what}: expected a Particle or Schema, got "
                                   f"{type(target).__name__}")
    return View(zeros_at(schema), batched if allow_shared is None else not allow_shared,
                **fields)


def pretty(value: Any) -> str | None:
    """The call that built ``value`` as hypothesis prints it in a falsifying example
    (``MyBlock(4)`` for a module drawn from ``st.builds(MyBlock, ...)``); ``None`` when
    hypothesis does not know one (the value is then not printable as code)."""
    try:
        from hypothesis.control import current_build_context
        from hypothesis.vendor.pretty import IDKey, RepresentationPrinter

        context = current_build_context()
        if not context.known_object_printers.get(IDKey(value)):
            return None
        out = io.StringIO()
        printer = RepresentationPrinter(out, context=context)
        printer.pretty(value)
        printer.flush()
        return " ".join(out.getvalue().split())
    except Exception:  # noqa: BLE001 - outside a hypothesis test, or another hypothesis
        return None
