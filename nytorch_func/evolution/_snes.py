"""Separable natural evolution strategy (SNES) over particles, from the public API only.

The search distribution is two particles of the species: ``mean`` and ``sigma`` (one standard
deviation per operational parameter entry). Each generation samples ``mean + sigma * noise``
for a population of noise particles, ranks them, and moves the distribution along the natural
gradient (Wierstra et al. 2014, Schaul et al. 2011).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

import nytorch_func as nf

from ._state import expect_state, frozen_state, new_param_paths, refill

__all__ = ["SNESState", "snes_init", "snes_ask", "snes_tell", "snes_step", "snes_utilities"]


@frozen_state
class SNESState:
    """The search distribution (``mean``, ``sigma``: single particles) and its settings."""

    mean: nf.Particle
    sigma: nf.Particle
    popsize: int
    lr_mean: float
    lr_sigma: float
    init_sigma: float
    generation: int = 0
    fitness: torch.Tensor | None = None  # of the last generation's samples

    def touch(self) -> "SNESState":
        """The distribution at the species' newest version, following any event since.

        ``mean`` gets the recipient value of added parameters (a clone of the event's
        snapshot: the search starts from the layer as it was added); ``sigma`` of added
        parameters is ``init_sigma``, so the search explores them as it did everything at the
        start.
        """
        mean = nf.touch(self.mean)
        if mean.schema is self.mean.schema:
            return self
        added = new_param_paths(self.mean, mean)
        sigma = refill(nf.touch(self.sigma), added,
                       lambda t: torch.full_like(t, self.init_sigma))
        return dataclasses.replace(self, mean=mean, sigma=sigma)


def snes_init(center: nf.Particle, popsize: int, *, sigma: float = 0.1, lr_mean: float = 1.0,
              lr_sigma: float | None = None) -> SNESState:
    """A search distribution centred on ``center`` with every operational ``sigma`` equal.

    ``lr_sigma`` defaults to SNES's ``(3 + ln d) / (5 sqrt d)`` for ``d`` operational entries.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> target = torch.tensor([[1.0, -2.0]])
    >>> fitness = lambda pop: -((pop["weight"] - target) ** 2).sum((1, 2))
    >>> state = ev.snes_init(p, popsize=16, sigma=0.5)
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(100):
    ...     state = ev.snes_step(state, fitness, generator=g)
    >>> torch.allclose(state.mean["weight"], target, atol=1e-2)
    True
    """
    if not isinstance(center, nf.Particle):
        raise nf.ArgumentTypeError(f"snes_init: center must be a Particle (from "
                                   f"nf.from_module), got {type(center).__name__}")
    if center.batch_shape:
        raise nf.SchemaError(f"snes_init: center must be a single particle, got a population "
                             f"of batch shape {tuple(center.batch_shape)}; pass one member "
                             "(pop[i]) or nf.mean(pop)")
    if isinstance(popsize, bool) or not isinstance(popsize, int) or popsize < 2:
        raise nf.SchemaError(f"snes_init: popsize must be an int >= 2, got {popsize!r}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or sigma <= 0:
        raise nf.SchemaError(f"snes_init: sigma must be a positive number, got {sigma!r}")
    center = nf.touch(center).detach()
    d = sum(t.numel() for path, t in center.params.items() if center.config(path).operational)
    if lr_sigma is None:
        lr_sigma = (3 + math.log(max(d, 1))) / (5 * math.sqrt(max(d, 1)))
    return SNESState(center, nf.full_like(center, float(sigma)), popsize, float(lr_mean),
                     float(lr_sigma), float(sigma))


def snes_utilities(fitness: torch.Tensor) -> torch.Tensor:
    """Rank-based fitness shaping: weights summing to 0, the best member's the largest.

    NaN fitness ranks last.

    >>> import torch
    >>> from nytorch_func import evolution as ev
    >>> u = ev.snes_utilities(torch.tensor([0.0, 3.0, 1.0, 2.0]))
    >>> int(u.argmax()), round(float(u.sum()), 6)
    (1, 0.0)
    """
    f = torch.nan_to_num(fitness.detach().to(torch.float64), nan=-torch.inf)
    n = f.shape[0]
    k = torch.arange(1, n + 1, dtype=torch.float64)
    raw = (math.log(n / 2 + 1) - torch.log(k)).clamp_min(0)
    shaped = raw / raw.sum() - 1.0 / n
    order = torch.sort(f, descending=True, stable=True).indices
    return torch.empty_like(shaped).scatter_(0, order, shaped)


def snes_ask(state: SNESState, *, generator: torch.Generator | None = None
             ) -> tuple[nf.Particle, nf.Particle]:
    """``(samples, noise)``: ``popsize`` samples ``mean + sigma * noise``, noise ~ N(0, 1)."""
    expect_state(state, SNESState, "snes_ask", "snes_init(center, popsize)")
    state = state.touch()
    noise = nf.population(state.mean, state.popsize, init="randn", generator=generator)
    # population on the left: non-operational leaves come from the noise population (copies
    # of the mean's), so every leaf of the samples carries the member dimension
    return noise * state.sigma + state.mean, noise


def snes_tell(state: SNESState, noise: nf.Particle, fitness: torch.Tensor) -> SNESState:
    """The distribution after one natural-gradient step from the samples' ``fitness``."""
    expect_state(state, SNESState, "snes_tell", "snes_init(center, popsize)")
    if not isinstance(noise, nf.Particle):
        raise nf.ArgumentTypeError(f"snes_tell: noise must be the noise population snes_ask "
                                   f"returned, got {type(noise).__name__}")
    state = state.touch()
    noise = nf.touch(noise)
    n = state.popsize
    f = torch.as_tensor(fitness).detach()
    if f.shape != (n,):
        raise nf.SchemaError(f"snes_tell: fitness must have one value per sample, shape ({n},), "
                             f"got {tuple(f.shape)}")
    dtype = next(iter(state.mean.params.values())).dtype
    u = snes_utilities(f).to(dtype) * n  # nf.mean divides by n: these give sums
    with torch.no_grad():
        weighted = u * noise
        grad_mean = nf.mean(weighted)
        # sum_i u_i (noise_i^2 - 1) == sum_i (u_i noise_i) noise_i, since the utilities sum to 0
        grad_sigma = nf.mean(weighted * noise)
        mean = state.mean + state.lr_mean * (state.sigma * grad_mean)
        sigma = state.sigma * (math.e ** ((state.lr_sigma / 2) * grad_sigma))
    return dataclasses.replace(state, mean=mean, sigma=sigma, generation=state.generation + 1,
                               fitness=f)


def snes_step(state: SNESState, fitness_fn: Callable[[nf.Particle], torch.Tensor], *,
              generator: torch.Generator | None = None) -> SNESState:
    """One generation: ask, score with ``fitness_fn(samples) -> (popsize,)`` (higher is better), tell."""
    expect_state(state, SNESState, "snes_step", "snes_init(center, popsize)")
    with torch.no_grad():
        samples, noise = snes_ask(state, generator=generator)
        return snes_tell(state, noise, fitness_fn(samples))
