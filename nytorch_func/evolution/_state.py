"""Helpers the algorithms use: frozen state records, and following an event (find the entries
it added and refill them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optree
import torch

import nytorch_func as nf

__all__ = ["frozen_state", "expect_population", "expect_state", "new_param_paths", "refill"]


def expect_population(pop: object, what: str) -> int:
    """The member count of ``pop``, a population with one batch dimension and a member at
    least; a typed error naming ``what`` otherwise (ArgumentTypeError for a non-particle,
    SchemaError for a single particle, more batch dimensions or no members)."""
    if not isinstance(pop, nf.Particle):
        raise nf.ArgumentTypeError(f"{what}: expected a population (a Particle from "
                                   f"nf.population or nf.stack), got {type(pop).__name__}")
    shape = tuple(pop.batch_shape)
    if not shape:
        raise nf.SchemaError(f"{what}: expected a population, got a single particle; make one "
                             "with nf.population(p, n) or nf.stack([p, ...])")
    if len(shape) != 1:
        raise nf.SchemaError(f"{what}: expected a population with one batch dimension, got batch "
                             f"shape {shape}; pass one row (pop[i]) or nf.stack the members you want")
    if shape[0] == 0:
        raise nf.SchemaError(f"{what}: the population has no members; give it one at least")
    return shape[0]


def expect_state(state: object, kind: type, what: str, init: str) -> None:
    """ArgumentTypeError naming ``what`` unless ``state`` is a ``kind`` (made by ``init``)."""
    if not isinstance(state, kind):
        raise nf.ArgumentTypeError(f"{what}: state must be the {kind.__name__} {init} made, got "
                                   f"{type(state).__name__}")


def frozen_state(cls: type) -> type:
    """Make ``cls`` a frozen dataclass whose assignments and deletions raise
    :class:`nytorch_func.FrozenError` (a plain ``dataclass(frozen=True)`` raises the bare
    ``dataclasses.FrozenInstanceError``, which is not an ``nf.NytorchFuncError``)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
    cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
    return cls


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise nf.FrozenError(f"{type(self).__name__} is immutable (cannot set {name!r}): states are "
                         "values; the step functions return new ones, or make one with "
                         "dataclasses.replace(state, ...)")


def _frozen_delattr(self: object, name: str) -> None:
    _frozen_setattr(self, name, None)


def new_param_paths(old: "nf.Particle", new: "nf.Particle") -> frozenset[str]:
    """Paths of the parameters ``new`` has and ``old`` had not (by stable parameter id)."""
    before = set(nf.param_ids(old).values())
    return frozenset(path for path, pid in nf.param_ids(new).items() if pid not in before)


def refill(p: "nf.Particle", paths: frozenset[str],
           fn: Callable[[torch.Tensor], torch.Tensor]) -> "nf.Particle":
    """``p`` with the leaves at ``paths`` replaced by ``fn(leaf)`` (a pytree map by key path)."""
    if not paths:
        return p
    return optree.tree_map_with_path(lambda path, t: fn(t) if path[0] in paths else t, p)
