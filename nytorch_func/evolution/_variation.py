"""Variation operators over populations: crossover, Gaussian mutation, the PSO velocity update.

Unlike the rest of ``nytorch_func.evolution`` (PSO, SNES, soups: public API only), these are
per-leaf kernels like ``nf.where`` and ``nf.mean``: they read each leaf's spec (operational?
buffer policy?) and share the core's helpers for aligning operands and for reset values, so
they import those private helpers instead of copying them.

Every operator works on whole populations at once (one tensor operation per leaf, or one
``torch._foreach_*`` call over all leaves; no Python loop over members), draws its randomness
from an optional ``torch.Generator`` in a documented order (the operational parameters in leaf
order), never varies non-operational parameters, and leaves its inputs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from .._errors import SchemaError, expect
from .._arith import align, align_all
from .._particle import Particle
from .._reduce import reset_value
from .._schema import TensorSpec

__all__ = ["uniform_crossover", "tensor_crossover", "gaussian_mutation", "pso_velocity"]


def _particles(what: str, **named: Any) -> None:
    for name, x in named.items():
        expect(x, Particle, what, f"{name} to be a Particle")


def _prob(p: Any, what: str, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise SchemaError(f"{what}: {name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _batch(what: str, **named: Particle) -> tuple[int, ...]:
    """The common batch shape: every operand is a population of it, or a single particle."""
    shapes = {name: tuple(x.batch_shape) for name, x in named.items()}
    batch = max(shapes.values(), key=len)
    if not batch:
        raise SchemaError(f"{what}: at least one operand must be a population (nf.stack, "
                          "nf.population); got single particles only")
    for name, shape in shapes.items():
        if shape not in ((), batch):
            raise SchemaError(f"{what}: {name} has batch shape {shape}, expected {batch} or a "
                              f"single particle; batch shapes: {shapes}")
    return batch


def _full(t: torch.Tensor, spec: TensorSpec, batch: tuple[int, ...]) -> torch.Tensor:
    """``t`` as a leaf of a population with ``batch`` (a copy when it must be broadcast)."""
    if t.dim() == len(spec.shape) and batch:
        return t.expand(*batch, *spec.shape).clone()
    return t


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _other(spec: TensorSpec, ta: torch.Tensor, tb: torch.Tensor, batch: tuple[int, ...],
           what: str) -> torch.Tensor:
    """A leaf crossover does not vary: non-operational params and buffers, by their policy."""
    if spec.kind == "buffer" and spec.policy == "reset":
        return reset_value(spec, batch, what)
    if spec.kind == "buffer" and spec.policy == "mean" and _is_float(ta):
        return _full((ta + tb) * 0.5, spec, batch)
    if spec.kind == "buffer" and spec.policy == "mean" and ta.dtype != torch.bool:
        return _full(torch.maximum(ta, tb), spec, batch)  # an integer counter: the larger
    return _full(ta, spec, batch)


def _crossover(a: Particle, b: Particle, p: Any, generator: torch.Generator | None,
               what: str, per_tensor: bool) -> Particle:
    _particles(what, a=a, b=b)
    p = _prob(p, what)
    a, b = align(a, b, what)
    batch = _batch(what, a=a, b=b)
    s = a._schema
    op = set(s.op_index)
    out = []
    for i, (spec, ta, tb) in enumerate(zip(s.leaf_specs, a._leaves, b._leaves)):
        if i not in op:
            out.append(_other(spec, ta, tb, batch, what))
            continue
        shape = batch if per_tensor else (*batch, *spec.shape)
        u = torch.rand(shape, generator=generator, device=ta.device)
        if per_tensor:
            u = u.reshape(*batch, *(1,) * len(spec.shape))
        out.append(torch.where(u < p, tb, ta))
    return Particle._make(s, tuple(out), a._training, batch)


def uniform_crossover(a: Particle, b: Particle, *, p: float = 0.5,
                      generator: torch.Generator | None = None) -> Particle:
    """Elementwise crossover: each operational entry comes from ``b`` with probability ``p``.

    ``a`` and ``b`` are populations of one species (either may be a single particle, used for
    every member). One ``torch.rand`` of the leaf's full shape is drawn per operational leaf, in
    leaf order, and the child takes ``b`` where it is below ``p``; so the same generator state
    with ``a`` and ``b`` swapped gives the complementary child. Non-operational parameters come
    from ``a``; buffers follow their policy (``"mean"``, the default: the average of ``a`` and
    ``b``, the larger of two integer counters; ``"keep"``: ``a``; ``"reset"``: the reset value).

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> a = nf.population(torch.nn.Linear(3, 2), 4, init="zeros")
    >>> b = nf.full_like(a, 1.0)
    >>> child = ev.uniform_crossover(a, b, generator=torch.Generator().manual_seed(0))
    >>> sorted(child["weight"].unique().tolist())
    [0.0, 1.0]
    >>> twin = ev.uniform_crossover(b, a, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(child["weight"] + twin["weight"], torch.ones(4, 2, 3))
    True
    """
    return _crossover(a, b, p, generator, "uniform_crossover", per_tensor=False)


def tensor_crossover(a: Particle, b: Particle, *, p: float = 0.5,
                     generator: torch.Generator | None = None) -> Particle:
    """Per-tensor crossover: each member takes each operational tensor whole from ``b`` (prob. ``p``) or ``a``.

    One ``torch.rand(batch_shape)`` is drawn per operational leaf, in leaf order. Everything
    else as :func:`uniform_crossover`.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> a = nf.population(torch.nn.Linear(3, 2), 4, init="zeros")
    >>> child = ev.tensor_crossover(a, nf.full_like(a, 1.0), generator=torch.Generator().manual_seed(1))
    >>> [sorted(w.unique().tolist()) for w in child["weight"]]  # whole tensors from one parent
    [[0.0], [1.0], [1.0], [0.0]]
    """
    return _crossover(a, b, p, generator, "tensor_crossover", per_tensor=True)


def gaussian_mutation(pop: Particle, sigma: float | None = None, *, rate: float = 1.0,
                      attr: str = "mutation_scale",
                      generator: torch.Generator | None = None) -> Particle:
    """``pop`` plus Gaussian noise on its operational floating-point parameters.

    Each parameter's scale is its ParamConfig attribute ``attr`` (``mutation_scale`` by default,
    set with ``nf.configure(p, path, mutation_scale=0.1)``) where set, else ``sigma``; a scale
    of 0 leaves the parameter unchanged (no numbers drawn). With ``rate < 1`` each entry is
    mutated with probability ``rate``. Draws, per mutated leaf in leaf order: ``torch.randn``
    of the leaf's shape, then (``rate < 1`` only) ``torch.rand`` of the same shape. Works on a
    single particle too.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> pop = nf.population(torch.nn.Linear(3, 2), 5)
    >>> pop = nf.configure(pop, "bias", mutation_scale=0.0)  # an event: bias never mutates
    >>> kid = ev.gaussian_mutation(pop, 0.1, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(kid["bias"], pop["bias"]), torch.equal(kid["weight"], pop["weight"])
    (True, False)
    """
    _particles("gaussian_mutation", pop=pop)
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))):
        raise SchemaError(f"gaussian_mutation: sigma must be a number or None, got {sigma!r}")
    rate = _prob(rate, "gaussian_mutation", "rate")
    s = pop._schema
    leaves = list(pop._leaves)
    idx, scales = [], []
    for i in s.op_index:
        spec, t = s.leaf_specs[i], leaves[i]
        scale = spec.config.get(attr, sigma)  # type: ignore[union-attr]
        if scale is None:
            raise SchemaError(f"gaussian_mutation: no scale for {spec.key!r}: pass sigma, or set "
                              f"it per parameter with nf.configure(p, {spec.key!r}, {attr}=...)")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise SchemaError(f"gaussian_mutation: the scale of {spec.key!r} ({attr}) must be a "
                              f"non-negative number, got {scale!r}")
        if scale and _is_float(t):
            idx.append(i)
            scales.append(float(scale))
    if not idx:
        return pop
    xs = [leaves[i] for i in idx]
    noise = []
    for t in xs:
        z = torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device)
        if rate < 1.0:
            z = z * (torch.rand(t.shape, generator=generator, device=t.device) < rate)
        noise.append(z)
    torch._foreach_mul_(noise, scales)
    for i, r in zip(idx, torch._foreach_add(xs, noise)):
        leaves[i] = r
    return Particle._make(s, tuple(leaves), pop._training, pop._batch)


def pso_velocity(velocity: Particle, position: Particle, best: Particle, global_best: Particle,
                 *, inertia: float = 0.7, c1: float = 1.5, c2: float = 1.5,
                 max_speed: float | None = None,
                 generator: torch.Generator | None = None) -> Particle:
    """The particle-swarm velocity update, on every member and operational parameter at once.

    ``v' = inertia * v + c1 * r1 * (best - x) + c2 * r2 * (global_best - x)`` with ``r1, r2``
    uniform on [0, 1) per entry, clamped to ``[-max_speed, max_speed]`` if given. ``velocity``,
    ``position`` and ``best`` are populations; ``global_best`` may be one particle. Draws: per
    operational leaf in leaf order, ``torch.rand`` for ``r1`` then for ``r2`` (so a leaf added
    by a later event shifts no earlier draw, and the update commutes with ``nf.touch``).
    Non-operational parameters and buffers come from ``velocity``.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> x = nf.population(torch.nn.Linear(2, 1), 3).detach()
    >>> v = ev.pso_velocity(nf.zeros_like(x), x, x, x[0], c2=0.0)
    >>> float(v["weight"].abs().max())  # at its own best and no pull to the leader: no motion
    0.0
    """
    what = "pso_velocity"
    _particles(what, velocity=velocity, position=position, best=best, global_best=global_best)
    for name, c in (("inertia", inertia), ("c1", c1), ("c2", c2)):
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise SchemaError(f"{what}: {name} must be a number, got {c!r}")
    if max_speed is not None and (not isinstance(max_speed, (int, float)) or max_speed <= 0):
        raise SchemaError(f"{what}: max_speed must be a positive number or None, got {max_speed!r}")
    velocity, position, best, global_best = align_all(what, velocity, position, best, global_best)
    batch = _batch(what, velocity=velocity, position=position, best=best, global_best=global_best)
    if tuple(velocity.batch_shape) != batch:
        raise SchemaError(f"{what}: velocity must be a population of batch shape {batch}, got "
                          f"{tuple(velocity.batch_shape)}; start from nf.zeros_like(position)")
    s = velocity._schema
    idx = [i for i in s.op_index if _is_float(velocity._leaves[i])]
    out = list(velocity._leaves)
    if not idx:
        return velocity
    v = [velocity._leaves[i] for i in idx]
    x = [position._leaves[i] for i in idx]
    pb = [best._leaves[i] for i in idx]
    gb = [global_best._leaves[i] for i in idx]
    shapes = [torch.broadcast_shapes(t.shape, u.shape) for t, u in zip(v, x)]
    r1, r2 = [], []
    for sh, t in zip(shapes, x):  # per leaf r1 then r2: draws of added leaves come last
        r1.append(torch.rand(sh, generator=generator, dtype=t.dtype, device=t.device))
        r2.append(torch.rand(sh, generator=generator, dtype=t.dtype, device=t.device))
    d1 = torch._foreach_sub(pb, x)
    torch._foreach_mul_(d1, r1)
    d2 = torch._foreach_sub(gb, x)
    torch._foreach_mul_(d2, r2)
    new = torch._foreach_mul(v, float(inertia))
    torch._foreach_add_(new, d1, alpha=float(c1))
    torch._foreach_add_(new, d2, alpha=float(c2))
    if max_speed is not None:
        torch._foreach_clamp_min_(new, -float(max_speed))
        torch._foreach_clamp_max_(new, float(max_speed))
    for i, r in zip(idx, new):
        out[i] = r
    return Particle._make(s, tuple(out), velocity._training, velocity._batch)
