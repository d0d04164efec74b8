"""A deliberately simple model of what a particle should hold, for the property suite.

``Model`` is a dict of *groups* (one per parameter or buffer object; tied aliases share a group)
with their paths, kind, config, buffer policy and expected value. It is built from a particle
once and then updated eagerly by :meth:`Model.event` for every event of the species: because
particles are immutable and events record snapshots, "what touch(p) gives later" equals "the
eager update of p's model now". It shares no code with the core.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable

import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.testing as nft

OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "**": operator.pow,
}
UNARY: dict[str, Callable[[Any], Any]] = {"neg": operator.neg, "pos": operator.pos,
                                           "abs": operator.abs}


@dataclasses.dataclass
class Group:
    paths: set[str]
    kind: str
    value: torch.Tensor
    config: nf.ParamConfig | None = None
    policy: str = "keep"

    @property
    def operational(self) -> bool:
        return self.kind == "param" and self.config.operational


@dataclasses.dataclass
class Model:
    groups: list[Group]
    indexed: set[str] = dataclasses.field(default_factory=set)  # Sequential/ModuleList paths

    @classmethod
    def of(cls, p: nf.Particle) -> "Model":
        groups = []
        for spec in p.schema.specs:
            groups.append(Group(set(spec.paths), spec.kind, p[spec.key].detach().clone(),
                                spec.config, spec.policy))
        return cls(groups, _indexed(p.schema.skeleton, ""))

    def copy(self) -> "Model":
        return Model([dataclasses.replace(g, paths=set(g.paths)) for g in self.groups],
                     set(self.indexed))

    def by_path(self) -> dict[str, Group]:
        return {path: g for g in self.groups for path in g.paths}

    # events -----------------------------------------------------------------------------------
    def event(self, edit: nft.Edit, initiator: "Model | None" = None) -> "Model":
        """The model after ``edit``; ``initiator`` is the initiator's model (None: this one)."""
        new = self.copy()
        kind, path, opts = edit.kind, edit.path, edit.options
        if kind == "add_param":
            new.groups.append(Group({path}, "param", edit.value.detach().clone(),
                                    opts.get("config") or nf.ParamConfig()))
        elif kind == "add_buffer":
            new.groups.append(Group({path}, "buffer", edit.value.detach().clone()))
        elif kind == "add_module":
            seen: dict[int, Group] = {}
            module: nn.Module = edit.value
            for what, items in (("param", module.named_parameters(remove_duplicate=False)),
                                ("buffer", module.named_buffers(remove_duplicate=False))):
                for sub, t in items:
                    if id(t) not in seen:
                        seen[id(t)] = Group(set(), what, t.detach().clone(),
                                            nf.ParamConfig() if what == "param" else None)
                        new.groups.append(seen[id(t)])
                    seen[id(t)].paths.add(f"{path}.{sub}")
            new.indexed |= _indexed(module, path)
        elif kind in ("del_param", "del_buffer", "set_none", "del_module"):
            gone = lambda q: q == path or q.startswith(path + ".")  # noqa: E731
            for g in new.groups:
                g.paths = {q for q in g.paths if not gone(q)}
            new.groups = [g for g in new.groups if g.paths]
            new.indexed = {q for q in new.indexed if not gone(q)}
            parent, _, name = path.rpartition(".")
            if kind == "del_module" and parent in self.indexed and name.isdigit():
                # del seq[i]: the later children move down one place
                shift = lambda q: _shifted(q, parent, int(name))  # noqa: E731
                for g in new.groups:
                    g.paths = {shift(q) for q in g.paths}
                new.indexed = {shift(q) for q in new.indexed}
        elif kind == "configure":
            source = (initiator or self).by_path()
            changes = {k: opts[k] for k in ("operational", "clone") if k in opts}
            attrs = {k: v for k, v in opts.items() if k not in ("operational", "clone")}
            for g in new.groups:
                if g.kind != "param" or not any(path == "" or q == path or
                                                q.startswith(path + ".") for q in g.paths):
                    continue
                before = g.config
                g.config = before.replace(**changes, **attrs)
                if not before.shared and g.config.shared:  # the initiator's value, species-wide
                    g.value = source[next(iter(g.paths))].value
        elif kind == "configure_buffer":
            for g in new.groups:
                if path in g.paths:
                    g.policy = opts["policy"]
        else:  # pragma: no cover
            raise AssertionError(f"unknown edit {edit!r}")
        return new

    # operations -------------------------------------------------------------------------------
    def binary(self, op: str, other: "Model | Any", reverse: bool = False) -> "Model":
        """``self op other`` (``other op self`` with ``reverse``) on operational params only."""
        new = self.copy()
        theirs = other.by_path() if isinstance(other, Model) else None
        for g in new.groups:
            if not g.operational:
                continue
            b = theirs[next(iter(g.paths))].value if theirs is not None else other
            with torch.no_grad():
                g.value = OPS[op](b, g.value) if reverse else OPS[op](g.value, b)
        return new

    def unary(self, op: str) -> "Model":
        new = self.copy()
        for g in new.groups:
            if g.operational:
                with torch.no_grad():
                    g.value = UNARY[op](g.value)
        return new

    # checking ---------------------------------------------------------------------------------
    def check(self, p: nf.Particle, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
        """Assert that ``nf.touch(p)`` holds exactly the model's paths, configs and values."""
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
                raise AssertionError(f"{path!r} is tied to {spec.paths}, expected {sorted(g.paths)}")
            if g.kind == "param" and spec.config != g.config:
                raise AssertionError(f"config of {path!r} is {spec.config}, expected {g.config}")
            if g.kind == "buffer" and spec.policy != g.policy:
                raise AssertionError(f"policy of {path!r} is {spec.policy}, expected {g.policy}")
            value = q[path].detach()
            want = g.value
            if spec.leaf and q.batch_shape:
                want = want.expand(*q.batch_shape, *want.shape)
            if value.shape != want.shape:
                raise AssertionError(f"{path!r} has shape {tuple(value.shape)}, expected "
                                     f"{tuple(want.shape)}")
            if not torch.allclose(value.double() if value.is_floating_point() else value,
                                  want.double() if want.is_floating_point() else want,
                                  rtol=rtol, atol=atol, equal_nan=True):
                raise AssertionError(f"{path!r} holds {value}, expected {want}")


def _indexed(module: nn.Module, prefix: str) -> set[str]:
    """Paths of the Sequential/ModuleList modules in ``module`` (rooted at ``prefix``)."""
    return {f"{prefix}.{sub}".strip(".") if sub else prefix
            for sub, m in module.named_modules(remove_duplicate=False)
            if isinstance(m, (nn.Sequential, nn.ModuleList))}


def _shifted(path: str, parent: str, index: int) -> str:
    """``path`` with its child index under ``parent`` lowered by one if it is above ``index``."""
    head = f"{parent}." if parent else ""
    if not path.startswith(head):
        return path
    first, dot, rest = path[len(head):].partition(".")
    if first.isdigit() and int(first) > index:
        return f"{head}{int(first) - 1}{dot}{rest}"
    return path


def apply_chain(p: nf.Particle, chain: list[nft.Edit]) -> tuple[nf.Particle, list[nf.Particle]]:
    """``p`` after every edit of ``chain``, and the initiator after each step (keeps versions alive)."""
    steps = []
    for edit in chain:
        p = edit.apply(p)
        steps.append(p)
    return p, steps
