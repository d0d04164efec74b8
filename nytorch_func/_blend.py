"""lerp: the one-call way to mix two particles (model soups, target networks, swarm moves)."""

from __future__ import annotations

import torch

from ._arith import align, broadcast_batch, coefficient, fe_lerp, lift2, lift2_mixed
from ._errors import ArgumentTypeError, SchemaError
from ._particle import Particle, expect_particle

__all__ = ["lerp"]


def lerp(start: Particle, end: Particle, weight: "float | torch.Tensor") -> Particle:
    """``start + weight * (end - start)`` over the operational parameters, in one foreach call.

    The same value as ``(1 - w) * start + w * end`` (``0.5*a + 0.5*b`` is ``nf.lerp(a, b, 0.5)``)
    but one ``torch._foreach_lerp`` instead of three element-wise passes: the fast path for
    model soups, EMA/target networks and particle-swarm moves. ``weight`` is a number, a 0-dim
    tensor, or a tensor of the population's batch shape (one weight per member). Everything
    else follows the operators: other leaves come from ``start``, particles of one species at
    different versions are touched first, different species are refused.

    >>> import torch, nytorch_func as nf
    >>> a = nf.from_module(torch.nn.Linear(3, 2))
    >>> b = a.randn()
    >>> torch.allclose(nf.lerp(a, b, 0.5)["weight"], (0.5 * a + 0.5 * b)["weight"])
    True
    >>> pop = nf.population(a, 4)
    >>> nf.lerp(pop, a, torch.tensor([0.0, 0.5, 0.5, 1.0]))["bias"].shape
    torch.Size([4, 2])
    """
    expect_particle(start, "lerp")
    expect_particle(end, "lerp")
    found = coefficient(start, weight, "lerp", members=False)
    if found is None:
        raise ArgumentTypeError(f"lerp: weight must be a number or a tensor, got "
                                f"{type(weight).__name__}")
    kind, weight = found
    if start._schema is not end._schema or start._schema._next is not None:
        start, end = align(start, end, "lerp")  # operations touch their operands first
    la, lb = start._leaves, end._leaves
    mixed = la[0].shape != lb[0].shape if la else start._batch != end._batch
    if mixed:  # a single particle and a population: broadcast (leaves, or the batch shape)
        def lift(a, b, fn):
            return lift2_mixed(a, b, fn, "lerp")
    else:
        lift = lift2
    if kind == "batch":
        batch = broadcast_batch("lerp", start.batch_shape, end.batch_shape)
        if weight.dim() > len(batch) or tuple(weight.shape) != batch[: weight.dim()]:
            raise SchemaError(f"lerp: per-member weights must have shape {batch} (or a prefix of "
                              f"it), got {tuple(weight.shape)}")
        specs = start._schema.leaf_specs  # one weight per member, viewed against each leaf
        pad = len(batch) - weight.dim()  # a prefix of the batch shape: trailing members share
        ws = [weight.to(specs[i].dtype).reshape(weight.shape + (1,) * (pad + len(specs[i].shape)))
              for i in start._schema.op_index]
        return lift(start, end, lambda xs, ys: fe_lerp(xs, ys, ws))
    if kind == "tensor0":  # stays a tensor: differentiable, traceable, no .item() sync
        specs = start._schema.leaf_specs
        ws = [weight.to(specs[i].dtype) for i in start._schema.op_index]
        return lift(start, end, lambda xs, ys: fe_lerp(xs, ys, ws))
    return lift(start, end, lambda xs, ys: fe_lerp(xs, ys, weight))
