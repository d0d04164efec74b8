"""A deliberately plain model of what a particle should hold: a dict of tensors, updated eagerly.

:class:`Reference` shares no code with the core's migration: it is built from a particle once,
then every event of the species updates it eagerly. Particles are immutable and events record
snapshots, so "what a lazy touch gives later" must equal "the eager update now".
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import nytorch_func as nf

from ._edit import Edit
from ._reference_growth import apply_resize, events_of, inserted_groups, one_event

__all__ = ["Reference", "Group", "OPS", "UNARY"]

#: Binary particle operators the reference model can mirror.
OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "**": operator.pow,
}
#: Unary particle operators the reference model can mirror.
UNARY: dict[str, Callable[[Any], Any]] = {"neg": operator.neg, "pos": operator.pos,
                                           "abs": operator.abs}


@dataclasses.dataclass
class Group:
    """One parameter or buffer object (tied aliases share a group): its paths and value."""

    paths: set[str]
    kind: str
    value: torch.Tensor
    config: nf.ParamConfig | None = None
    policy: str = "mean"  # the default buffer policy
    pid: int | None = None  # a parameter's id when the model was made; None: added since

    @property
    def operational(self) -> bool:
        return self.kind == "param" and self.config.operational  # type: ignore[union-attr]


def _gone(path: str) -> Callable[[str], bool]:
    return lambda q: q == path or q.startswith(path + ".")


@dataclasses.dataclass
class Reference:
    """What one particle should hold at the species head, as plain groups of tensors.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> ref = nft.Reference.of(p)
    >>> edit = nft.Edit("add_param", "gain", torch.nn.Parameter(torch.ones(1)))
    >>> q = edit.apply(p)
    >>> ref.event(edit).check(q)
    >>> ref.event(edit).binary("*", 2.0).check(q * 2.0)
    >>> ref.check(q)
    Traceback (most recent call last):
    ...
    AssertionError: paths differ: missing [], unexpected ['gain']
    """

    groups: list[Group]
    #: every Sequential/ModuleList: its path -> the keys of its children, in order
    indexed: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    old_ids: frozenset[int] = frozenset()  # every parameter id the model started with
    #: whether the chain passed through a 16-bit dtype: values carry its rounding afterwards
    #: (growth then rounds differently from this model's float64 arithmetic), so they are
    #: compared at the 16-bit tolerance even once converted back
    coarse: bool = False

    @classmethod
    def of(cls, p: nf.Particle) -> "Reference":
        """The reference model of one particle (not a population: take ``pop[i]``)."""
        return cls([Group(set(spec.paths), spec.kind, p[spec.key].detach().clone(), spec.config,
                          spec.policy, spec.pid) for spec in p.schema.specs],
                   _indexed(p.schema._skeleton, ""),
                   frozenset(s.pid for s in p.schema.specs if s.pid is not None))

    def copy(self) -> "Reference":
        return Reference([dataclasses.replace(g, paths=set(g.paths)) for g in self.groups],
                         {k: list(v) for k, v in self.indexed.items()}, self.old_ids,
                         self.coarse)

    def _rekey(self, container: str, keys: list[str | None]) -> list[str]:
        """Give ``container``'s children (in their new order; ``None``: an inserted one) their
        keys by the rule of ``nf.insert_module``/``nf.del_module``: a numbered child is keyed by
        its place, as torch's ``insert`` and ``del seq[i]`` renumber; a named one keeps its name.
        Every path under a child whose key changes follows it; returns the new keys."""
        new = [str(i) if k is None or k.isdigit() else k for i, k in enumerate(keys)]
        moves = {k: n for k, n in zip(keys, new) if k is not None and k != n}
        if moves:
            move = lambda q: _moved(q, container, moves)  # noqa: E731
            for g in self.groups:
                g.paths = {move(q) for q in g.paths}
            self.indexed = {move(q): v for q, v in self.indexed.items()}
        self.indexed[container] = new
        return new

    def _insert(self, container: str, index: int, n: int) -> list[str]:
        """Make room for ``n`` children at ``container[index]``; returns their paths."""
        keys: list[str | None] = list(self.indexed[container])
        keys[index:index] = [None] * n
        new = self._rekey(container, keys)
        return [f"{container}.{k}" if container else k for k in new[index:index + n]]

    def by_path(self) -> dict[str, Group]:
        return {path: g for g in self.groups for path in g.paths}

    # events -----------------------------------------------------------------------------------
    def event(self, edit: Edit, initiator: "Reference | None" = None, *,
              schemas: "tuple[nf.Schema, nf.Schema] | None" = None) -> "Reference":
        """The model after ``edit``; ``initiator`` is the initiator's model (None: this one).

        ``schemas``: the species' versions before and after the edit, which growth edits
        (``widen``, ``deepen``) need: the new units a widening draws and the layer deepen
        makes are read from the event the species recorded (see ``_reference_growth``).
        """
        new = self
        events = events_of(schemas)
        for step in edit.steps():
            source = initiator if initiator is not None else new
            new = new._step(step, source, events)
            initiator = None if initiator is None else initiator._step(step, initiator, events)
        return new

    def _step(self, edit: Edit, initiator: "Reference", events: list | None = None
              ) -> "Reference":
        new = self.copy()
        kind, path, opts = edit.kind, edit.path, edit.options
        if kind == "add_param":
            new.groups.append(Group({path}, "param", edit.value.detach().clone(),
                                    opts.get("config") or _default_config(edit.value)))
        elif kind == "add_buffer":
            new.groups.append(Group({path}, "buffer", edit.value.detach().clone()))
        elif kind == "add_module":
            new.groups += _module_groups(path, edit.value)
            new.indexed.update(_indexed(edit.value, path))
            parent, _, name = path.rpartition(".")
            if parent in new.indexed:  # a child added by name comes last
                new.indexed[parent] = new.indexed[parent] + [name]
        elif kind == "insert_module":  # into the Sequential/ModuleList ``path`` at ``index``
            modules = list(edit.value) if isinstance(edit.value, (list, tuple)) else [edit.value]
            for child, module in zip(new._insert(path, opts["index"], len(modules)), modules):
                new.groups += _module_groups(child, module)
                new.indexed.update(_indexed(module, child))
        elif kind == "widen":  # the recorded map, applied to this model's own values
            apply_resize(new.groups, one_event(events, "resize", repr(edit)))
        elif kind == "deepen":  # the identity layer (and activation) after ``path``
            event = one_event(events, "insert_module", repr(edit))
            parent, _, name = path.rpartition(".")
            keys = new.indexed.get(parent, [])
            if event.container != parent or name not in keys or \
                    event.index != keys.index(name) + 1:
                raise AssertionError(f"{edit!r} recorded an insertion at "
                                     f"{event.container!r}[{event.index}], not after {path!r}")
            where = new._insert(event.container, event.index, len(event.skeletons))
            new.groups += inserted_groups(event, where, Group, check=True)
            for child, module in zip(where, event.skeletons):
                new.indexed.update(_indexed(module, child))
        elif kind in ("del_param", "del_buffer", "set_none", "del_module"):
            gone = _gone(path)
            for g in new.groups:
                g.paths = {q for q in g.paths if not gone(q)}
            new.groups = [g for g in new.groups if g.paths]
            new.indexed = {q: v for q, v in new.indexed.items() if not gone(q)}
            parent, _, name = path.rpartition(".")
            if kind == "del_module" and parent in new.indexed:  # del seq[i]: renumbered
                new._rekey(parent, [k for k in new.indexed[parent] if k != name])
        elif kind == "configure":
            source = initiator.by_path()
            changes = {k: opts[k] for k in ("operational", "clone") if k in opts}
            attrs = {k: v for k, v in opts.items() if k not in ("operational", "clone")}
            for g in new.groups:
                if g.kind != "param" or not any(path == "" or q == path or q.startswith(path + ".")
                                                for q in g.paths):
                    continue
                before = g.config
                g.config = before.replace(**changes, **attrs)
                if g.config.operational and not _computable(g.value.dtype):
                    g.config = g.config.replace(operational=False)
                if not before.shared and g.config.shared:  # the initiator's value, species-wide
                    g.value = source[next(iter(g.paths))].value
        elif kind == "configure_buffer":
            for g in new.groups:
                if path in g.paths:
                    g.policy = opts["policy"]
        elif kind == "to":
            dtype = opts.get("dtype")
            new.coarse = new.coarse or dtype in (torch.float16, torch.bfloat16)
            for g in new.groups:
                if dtype is not None and _computable(g.value.dtype):
                    g.value = g.value.to(dtype)
        else:
            raise AssertionError(f"Reference: no model of the edit {edit!r}")
        return new

    # operations -------------------------------------------------------------------------------
    def binary(self, op: str, other: "Reference | Any", reverse: bool = False) -> "Reference":
        """``self op other`` (``other op self`` with ``reverse``) on operational params only."""
        new = self.copy()
        theirs = other.by_path() if isinstance(other, Reference) else None
        for g in new.groups:
            if not g.operational:
                continue
            b = theirs[next(iter(g.paths))].value if theirs is not None else other
            with torch.no_grad():
                out = OPS[op](b, g.value) if reverse else OPS[op](g.value, b)
            g.value = out.to(g.value.dtype)  # operations keep the leaf's dtype
        return new

    def unary(self, op: str) -> "Reference":
        new = self.copy()
        for g in new.groups:
            if g.operational:
                with torch.no_grad():
                    g.value = UNARY[op](g.value).to(g.value.dtype)
        return new

    # checking ---------------------------------------------------------------------------------
    def check(self, p: nf.Particle, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
        """Assert that ``nf.touch(p)`` holds exactly this model's paths, ties, parameter ids
        (kept through renames and renumbering, new ones never reused), configs, policies and
        values (to ``rtol``/``atol``, widened to torch's defaults for 16-bit dtypes)."""
        q = nf.touch(p)
        expected = self.by_path()
        got = set(q.schema.by_path)
        if got != set(expected):
            raise AssertionError(f"paths differ: missing {sorted(set(expected) - got)}, "
                                 f"unexpected {sorted(got - set(expected))}")
        for path, g in expected.items():
            spec = q.schema.by_path[path]
            if spec.kind != g.kind:
                raise AssertionError(f"{path!r} is a {spec.kind}, expected a {g.kind}")
            if set(spec.paths) != g.paths:
                raise AssertionError(f"{path!r} is tied to {spec.paths}, expected "
                                     f"{sorted(g.paths)}")
            if g.kind == "param" and (spec.pid != g.pid if g.pid is not None
                                      else spec.pid in self.old_ids):
                raise AssertionError(f"{path!r} has id {spec.pid}, expected "
                                     f"{g.pid if g.pid is not None else 'a new one'}")
            if g.kind == "param" and spec.config != g.config:
                raise AssertionError(f"config of {path!r} is {spec.config}, expected {g.config}")
            if g.kind == "buffer" and spec.policy != g.policy:
                raise AssertionError(f"policy of {path!r} is {spec.policy}, expected {g.policy}")
            _check_value(path, q[path].detach(), g.value, q.batch_shape if spec.leaf else (),
                         rtol, atol, self.coarse)


def _check_value(path: str, value: torch.Tensor, want: torch.Tensor, batch: Any, rtol: float,
                 atol: float, coarse: bool = False) -> None:
    if batch:
        want = want.expand(*batch, *want.shape)
    if value.shape != want.shape or value.dtype != want.dtype:
        raise AssertionError(f"{path!r} is [{tuple(value.shape)} {value.dtype}], expected "
                             f"[{tuple(want.shape)} {want.dtype}]")
    if coarse or value.dtype in (torch.float16, torch.bfloat16):
        rtol, atol = max(rtol, 1.6e-2), max(atol, 1e-5)
    computable = _computable(value.dtype)
    a = value.to(torch.complex128 if value.is_complex() else torch.float64) if computable else value
    b = want.to(a.dtype) if computable else want
    if not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        raise AssertionError(f"{path!r} holds {value}, expected {want}")


def _indexed(module: nn.Module, prefix: str) -> dict[str, list[str]]:
    """``{path: child keys}`` of the Sequential/ModuleList modules in ``module`` (rooted at
    ``prefix``)."""
    return {(f"{prefix}.{sub}" if prefix else sub) if sub else prefix: list(m._modules)
            for sub, m in module.named_modules(remove_duplicate=False)
            if isinstance(m, (nn.Sequential, nn.ModuleList))}


def _moved(path: str, container: str, moves: dict[str, str]) -> str:
    """``path`` with its child key under ``container`` replaced as ``moves`` says."""
    head = f"{container}." if container else ""
    if not path.startswith(head) or path == container:
        return path
    first, dot, rest = path[len(head):].partition(".")
    return f"{head}{moves[first]}{dot}{rest}" if first in moves else path


def _computable(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def _default_config(t: torch.Tensor) -> nf.ParamConfig:
    return nf.ParamConfig() if _computable(t.dtype) else nf.ParamConfig(operational=False)


def _module_groups(path: str, module: nn.Module) -> list[Group]:
    seen: dict[int, Group] = {}
    for what, items in (("param", module.named_parameters(remove_duplicate=False)),
                        ("buffer", module.named_buffers(remove_duplicate=False))):
        for sub, t in items:
            if id(t) not in seen:
                seen[id(t)] = Group(set(), what, t.detach().clone(),
                                    _default_config(t) if what == "param" else None)
            seen[id(t)].paths.add(f"{path}.{sub}")
    return list(seen.values())
