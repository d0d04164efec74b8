"""Taking the operational leaves out of particles and putting new ones back.

An optimizer step computes on the operational leaves only (floating or complex parameters whose
config is operational), in ``schema.op_index`` order; every other leaf (non-operational
parameters, buffers) is carried over as the same tensor object.
"""

from __future__ import annotations

import torch

from .._kernels import transforms_active
from .._particle import Particle

__all__ = ["computed", "leaves", "rebuild"]


def computed(p: Particle) -> tuple[tuple[int, ...], list[int]]:
    """``(leaf indices, parameter ids)`` of the leaves an optimizer steps."""
    s = p._schema
    idx = s.op_index
    return idx, [s.leaf_specs[i].pid for i in idx]


def leaves(p: Particle, idx: tuple[int, ...]) -> list[torch.Tensor]:
    """The leaves at ``idx``, as they are (a step computes under ``no_grad`` unless it is
    differentiable, so nothing needs detaching)."""
    ts = p._leaves
    return [ts[i] for i in idx]


def rebuild(p: Particle, idx: tuple[int, ...], new: list[torch.Tensor], *,
            fresh: bool = False) -> Particle:
    """``p`` with the leaves at ``idx`` replaced by ``new``.

    ``fresh``: the new leaves are parameters of a training loop: each gets the ``requires_grad``
    flag of the leaf it replaces (in eager mode; inside torch.func transforms and
    ``torch.compile`` that flag cannot be set on a result and is left as computed).
    """
    out = list(p._leaves)
    if fresh and not transforms_active() and not torch.compiler.is_compiling():
        for i, t in zip(idx, new):
            old = out[i]
            out[i] = t.requires_grad_(True) if old.requires_grad and not t.requires_grad else t
    else:
        for i, t in zip(idx, new):
            out[i] = t
    return Particle._make(p._schema, tuple(out), p._training, p._batch)
