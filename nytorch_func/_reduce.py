"""Reductions and selection over a population: ``mean``, ``take``, ``topk``, ``where``.

A population is a particle whose leaves carry a leading member dimension (``nf.stack``,
``nf.population``). Every function here is one tensor operation per leaf, with no Python loop
over members, and honours the species' configs:

- operational parameters are combined (averaged by :func:`mean`, selected by :func:`where`);
- non-operational parameters are never varied: they keep member 0's (left operand's) value;
- buffers follow their spec's ``policy`` (set with ``nf.configure_buffer``, for one buffer or
  every buffer under a module). The default, ``"mean"``, combines floating-point buffers the
  way the parameters are combined (a soup of BatchNorm models averages their running
  statistics) and gives integer counters such as ``num_batches_tracked`` their maximum (in
  :func:`where`, selects them per member like the parameters); ``"keep"`` gives member 0's / the
  left operand's value, and ``"reset"`` gives the value recorded when the policy was set.

:func:`take` and :func:`topk` select whole members: every leaf of a chosen member comes along,
buffers included, so no policy applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._arith import align, at_head
from ._errors import SchemaError
from ._particle import Particle, expect_particle, members
from ._schema import TensorSpec

__all__ = ["mean", "take", "topk", "where"]


# helpers shared with nytorch_func.evolution -----------------------------------------------------

def as_vector(x: Any, n: int, what: str, name: str, *, dtype: torch.dtype | None = None,
              device: torch.device | None = None) -> torch.Tensor:
    """``x`` (a 1-D tensor or a sequence) as a tensor of shape ``(n,)``."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, Sequence) and not isinstance(x, str):
        try:
            t = torch.as_tensor(list(x), dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as err:
            raise SchemaError(f"{what}: {name} must be numbers, got {x!r}") from err
    else:
        raise SchemaError(f"{what}: {name} must be a 1-D tensor or a sequence, got "
                          f"{type(x).__name__}")
    if t.shape != (n,):
        raise SchemaError(f"{what}: {name} must have shape ({n},), one entry per member of the "
                          f"population, got {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    return t


def reset_value(spec: TensorSpec, batch_shape: tuple[int, ...], what: str) -> torch.Tensor:
    """A fresh copy of the reset value of a ``policy="reset"`` buffer, for ``batch_shape``."""
    value = getattr(spec, "reset", None)
    if value is None:
        raise SchemaError(f"{what}: buffer {spec.key!r} has policy 'reset' but no recorded reset "
                          "value; set it again with nf.configure_buffer(p, path, policy='reset', "
                          "value=...)")
    return value.expand((*batch_shape, *value.shape)).clone()  # a tuple: 0-dim values too


def device_of(pop: Particle) -> torch.device:
    for t in pop._leaves:
        return t.device
    return torch.device("cpu")


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def combined(spec: TensorSpec, t: torch.Tensor) -> bool:
    """True when a reduction averages this leaf (operational float param, or a 'mean' buffer)."""
    if spec.kind == "param":
        return spec.config.operational and _is_float(t)  # type: ignore[union-attr]
    return spec.policy == "mean" and _is_float(t)


def counter(spec: TensorSpec, t: torch.Tensor) -> bool:
    """True for an integer buffer of policy 'mean' (a counter): reductions take its maximum."""
    return (spec.kind == "buffer" and spec.policy == "mean" and not _is_float(t)
            and t.dtype != torch.bool)


# reductions -----------------------------------------------------------------------------------

def mean(pop: Particle, weights: Any = None) -> Particle:
    """The (weighted) average of the members of ``pop``: a uniform or weighted model soup.

    ``weights`` is ``None`` (uniform), or a 1-D tensor / sequence with one entry per member;
    it is normalised by its sum (which must not be zero), and gradients flow through it.
    Operational floating-point parameters are averaged over the first batch dimension;
    non-operational ones keep member 0's value; buffers follow their policy (module
    docstring): by default floating ones (BatchNorm running statistics) are averaged like the
    parameters and integer counters (``num_batches_tracked``) take the maximum over the members
    with a non-zero weight. ``pop`` is unchanged.

    >>> import torch, nytorch_func as nf
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> pop = nf.population(net, 3, generator=torch.Generator().manual_seed(0))
    >>> soup = nf.mean(pop)
    >>> soup.batch_shape, torch.allclose(soup["0.weight"], pop["0.weight"].mean(0))
    (torch.Size([]), True)
    >>> w = nf.mean(pop, weights=[1.0, 0.0, 3.0])
    >>> torch.allclose(w["0.bias"], (pop["0.bias"][0] + 3 * pop["0.bias"][2]) / 4)
    True
    >>> _, trained = torch.func.vmap(nf.apply_with_state)(pop, torch.randn(3, 8, 2))
    >>> soup = nf.mean(trained)
    >>> torch.allclose(soup["1.running_mean"], trained["1.running_mean"].mean(0)), int(soup["1.num_batches_tracked"])
    (True, 1)
    """
    n = members(pop, "mean")
    if n == 0:
        raise SchemaError("mean: the population has no members (batch shape "
                          f"{tuple(pop.batch_shape)}); an average needs at least one")
    pop = at_head(pop)
    w = None
    if weights is not None:
        w = as_vector(weights, n, "mean", "weights", device=device_of(pop))
        if not (w.is_floating_point() or w.is_complex()):
            w = w.to(torch.get_default_dtype())
        total = w.sum()
        if not bool(torch.isfinite(w).all()) or float(total.detach().abs()) == 0.0:
            raise SchemaError(f"mean: weights must be finite with a non-zero sum, got "
                              f"{w.detach().tolist()}")
        w = w / total
    s = pop._schema
    rest = tuple(pop.batch_shape[1:])
    out = []
    for spec, t in zip(s.leaf_specs, pop._leaves):
        if combined(spec, t):
            out.append(t.mean(0) if w is None else torch.tensordot(w.to(t.dtype), t, dims=1))
        elif counter(spec, t):
            out.append((t if w is None else t[w.detach() != 0]).amax(0))
        elif spec.kind == "buffer" and spec.policy == "reset":
            out.append(reset_value(spec, rest, "mean"))
        else:
            out.append(t[0])
    return Particle._make(s, tuple(out), pop._training, rest)


def take(pop: Particle, indices: Any) -> Particle:
    """The sub-population of the members at ``indices`` (1-D ints; repeats and negatives allowed).

    Whole members are selected: every leaf of a chosen member comes along, its buffers too.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(2, 1), 4)
    >>> sub = nf.take(pop, [3, 0, 3])
    >>> len(sub), torch.equal(sub["weight"][1], pop["weight"][0])
    (3, True)
    >>> nf.take(pop, [4])
    Traceback (most recent call last):
    ...
    nytorch_func._errors.SchemaError: take: index 4 is out of range for a population of 4 members
    """
    n = members(pop, "take")
    pop = at_head(pop)
    idx = _indices(indices, n, "take", device_of(pop))
    return Particle._make(pop._schema, tuple(t.index_select(0, idx) for t in pop._leaves),
                          pop._training, (idx.shape[0], *pop.batch_shape[1:]))


def _indices(indices: Any, n: int, what: str, device: torch.device) -> torch.Tensor:
    if isinstance(indices, int) and not isinstance(indices, bool):
        indices = [indices]
    if isinstance(indices, torch.Tensor):
        idx = indices
    elif isinstance(indices, Sequence) and not isinstance(indices, str):
        idx = torch.as_tensor(list(indices), dtype=torch.long) if len(indices) else \
            torch.empty(0, dtype=torch.long)
    else:
        raise SchemaError(f"{what}: indices must be a 1-D integer tensor or a sequence of ints, "
                          f"got {type(indices).__name__}")
    if idx.dim() != 1 or idx.dtype in (torch.bool,) or idx.is_floating_point() or idx.is_complex():
        raise SchemaError(f"{what}: indices must be 1-D integers, got a {idx.dim()}-D "
                          f"{idx.dtype} tensor; for a boolean mask use pop[mask]")
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        bad = hi if hi >= n else (lo if lo < -n else None)
        if bad is not None:
            raise SchemaError(f"{what}: index {bad} is out of range for a population of {n} "
                              "members")
    return torch.where(idx < 0, idx + n, idx).to(device=device, dtype=torch.long)


def topk(pop: Particle, fitness: Any, k: int, largest: bool = True) -> tuple[Particle, torch.Tensor]:
    """The ``k`` members with the best ``fitness`` (highest, or lowest with ``largest=False``).

    Returns ``(sub_population, indices)``, best first; ties keep population order and NaN
    fitness counts as the worst. ``fitness`` is a tensor or sequence with one value per member.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(2, 1), 4)
    >>> best, idx = nf.topk(pop, torch.tensor([0.1, 0.9, float("nan"), 0.5]), k=2)
    >>> idx.tolist(), torch.equal(best["weight"][0], pop["weight"][1])
    ([1, 3], True)
    """
    n = members(pop, "topk")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise SchemaError(f"topk: k must be an int between 1 and the population size {n}, got "
                          f"{k!r}")
    f = as_vector(fitness, n, "topk", "fitness")
    if f.is_complex():
        raise SchemaError("topk: fitness must be real")
    f = f.detach()
    if f.is_floating_point():
        f = torch.nan_to_num(f, nan=-torch.inf if largest else torch.inf)
    order = torch.sort(f, descending=bool(largest), stable=True).indices[:k]
    return take(pop, order), order


def where(mask: Any, a: Particle, b: Particle) -> Particle:
    """Per member: ``a``'s operational parameters where ``mask`` is True, else ``b``'s.

    ``mask`` has one bool per member (shape ``(n,)``); ``a`` and ``b`` are particles of one
    species, each a population of ``n`` or a single particle (used for every member).
    Non-operational parameters and ``"keep"`` buffers come from ``a``; ``"mean"`` buffers (the
    default) are selected like the parameters, counters included, so a member keeps its own
    statistics; ``"reset"`` buffers get their reset value.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(2, 1), 3)
    >>> elite = pop[0]
    >>> mixed = nf.where(torch.tensor([True, False, True]), pop, elite)
    >>> torch.equal(mixed["weight"][1], elite["weight"]), torch.equal(mixed["weight"][2], pop["weight"][2])
    (True, True)
    """
    for x in (a, b):
        expect_particle(x, "where")
    m = mask if isinstance(mask, torch.Tensor) else None
    if m is None:
        if not isinstance(mask, Sequence) or isinstance(mask, str):
            raise SchemaError(f"where: mask must be a bool tensor of shape (n,), got "
                              f"{type(mask).__name__}")
        m = torch.as_tensor(list(mask), dtype=torch.bool)
    if m.dtype != torch.bool or m.dim() != 1:
        raise SchemaError(f"where: mask must be a 1-D bool tensor (one entry per member), got a "
                          f"{m.dim()}-D {m.dtype} tensor")
    n = m.shape[0]
    a, b = align(a, b, "where")
    for name, x in (("a", a), ("b", b)):
        if tuple(x.batch_shape) not in ((), (n,)):
            raise SchemaError(f"where: {name} has batch shape {tuple(x.batch_shape)}; it must be "
                              f"({n},) like the mask, or a single particle")
    s = a._schema
    m = m.to(device_of(a))
    out = []
    for spec, ta, tb in zip(s.leaf_specs, a._leaves, b._leaves):
        single = ta.dim() == len(spec.shape)
        if spec.kind == "param" and spec.config.operational or (
                spec.kind == "buffer" and spec.policy == "mean"):
            out.append(torch.where(m.reshape((n,) + (1,) * len(spec.shape)), ta, tb))
        elif spec.kind == "buffer" and spec.policy == "reset":
            out.append(reset_value(spec, (n,), "where"))
        else:
            out.append(ta.expand(n, *spec.shape).clone() if single else ta)
    return Particle._make(s, tuple(out), a._training, (n,))
