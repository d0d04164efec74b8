"""Helpers the algorithms use to follow an event: find the entries it added and refill them."""

from __future__ import annotations

from collections.abc import Callable

import optree
import torch

import nytorch_func as nf

__all__ = ["new_param_paths", "refill"]


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
