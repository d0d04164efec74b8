"""Particle operations on NytoModules: core particle arithmetic, results built as module trees.

Every operation reads its operands' trees (``current``: the species head, touched in place as
nytorch does), runs one core operation without autograd, and builds the result tree through the
source tree's plan. Core operations touch stale operands to the species head themselves; if
another thread appended an event between the read and the operation, the result is at a newer
version than the tree that was read, so the operation starts over from a fresh read: a result
tree never mixes two versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._config import ParamConfig as CoreConfig
from .._errors import NytorchFuncError, SchemaError, VersionError
from .._arith import align
from .._particle import Particle
from ._bind import bind
from ._handle import TAGS, NytoModuleBase, ParticleHandle
from ._plan import AS_IS, CLONE, OP, materialize
from ._product import ParamProduct, shape_result
from ._sync import current
from ._write import from_particle

__all__ = ["binary", "unary", "inplace", "detach", "assign_values", "RETRIES"]

RETRIES = 1000  # reads before giving up while other threads keep appending events
_grad_enabled = torch.is_grad_enabled
_set_grad = torch._C._set_grad_enabled


def _build(h: ParticleHandle, mods: list | None, q: Particle, mode: int) -> nn.Module:
    plan = h.plan
    if plan is not None and plan.schema is q._schema and (mods is not None or plan.deferred):
        return plan.build(mods, q, mode)
    if mode != AS_IS:  # a tree the plan cannot describe: build it from the skeleton
        q = shape_result(q, copy_computed=mode == CLONE)
    return from_particle(q)


def _settled() -> VersionError:
    return VersionError(f"particle operation: other threads appended events to the species "
                        f"{RETRIES} times while this operation ran; retry it")


def binary(self: nn.Module, other: Any, op: Callable, reverse: bool) -> Any:
    """``op(self, other)`` (or ``op(other, self)``) for a NytoModule ``self``."""
    is_module = isinstance(other, NytoModuleBase)
    if not is_module and isinstance(other, (Particle, ParamProduct)):
        return NotImplemented
    for _ in range(RETRIES):
        root, h, path, p, mods = current(self)
        if is_module:
            opath, o = current(other)[2:4]
            if opath != path:
                raise SchemaError(f"particle operation between modules at different paths "
                                  f"({path!r} and {opath!r}) of their particles")
            if o._schema is not p._schema and o._schema.species is p._schema.species:
                continue  # the other one is newer: an event came in between, read again
        else:
            o = other
        prev = _grad_enabled()
        _set_grad(False)
        try:
            q = op(o, p) if reverse else op(p, o)
        finally:
            _set_grad(prev)
        if q is NotImplemented:
            return NotImplemented
        if q._schema is not p._schema:
            continue
        new = _build(h, mods, q, OP)
        return new.get_submodule(path) if path else new
    raise _settled()


def unary(self: nn.Module, fn: Callable[[Particle], Particle], mode: int = OP) -> nn.Module:
    """A new particle of the species from ``fn(particle)`` (clone, randn, rand, neg)."""
    for _ in range(RETRIES):
        root, h, path, p, mods = current(self)
        prev = _grad_enabled()
        _set_grad(False)
        try:
            q = fn(p)
        finally:
            _set_grad(prev)
        if q._schema is not p._schema:
            continue
        new = _build(h, mods, q, mode)
        return new.get_submodule(path) if path else new
    raise _settled()


def assign_values(self: nn.Module, q: Particle, what: str) -> None:
    """Copy ``q``'s parameter values into this tree's parameters in place (``.data``)."""
    root, h, path, p, _ = current(self)
    if not isinstance(q, Particle):
        raise NytorchFuncError(f"{what}: expected a ParamProduct, got {type(q).__name__}")
    if q._schema is not p._schema:
        p, q = align(p, q, what)
    with torch.no_grad():
        for spec, target, value in zip(p._schema.leaf_specs, p._leaves, q._leaves):
            if spec.kind == "param" and target is not value:
                target.data = value.detach()


def inplace(self: nn.Module, other: Any, op: Callable) -> Any:
    """``self op= other``: the values change in place, the tensors stay (nytorch's ``product_``)."""
    if isinstance(other, NytoModuleBase):
        other = current(other)[3]
    elif isinstance(other, (Particle, ParamProduct)):
        return NotImplemented
    with torch.no_grad():
        q = op(current(self)[3], other)
    if q is NotImplemented:
        return NotImplemented
    assign_values(self, q, "in-place operator")
    return self


def detach(self: nn.Module) -> nn.Module:
    """A tree with this particle's very tensors, as the root of a *new* species (same ids and
    configs)."""
    root, h, path, p, mods = current(self)
    new_root = _build(h, mods, p, AS_IS)
    materialize(new_root)
    for m in new_root.modules():
        TAGS.discard(m)
    s = p._schema
    params = sorted(s.params, key=lambda spec: spec.pid)
    bind(new_root, order=[spec.key for spec in params],
         configs={path: spec.config for spec in params if spec.config != CoreConfig()
                  for path in spec.paths})
    return new_root.get_submodule(path) if path else new_root
