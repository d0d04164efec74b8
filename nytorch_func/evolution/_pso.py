"""Particle swarm optimisation over a population of particles, from the public API only."""

from __future__ import annotations

from collections.abc import Callable

import torch

import nytorch_func as nf

from ._state import (expect_population, expect_state, frozen_state, new_param_paths,
                     refill)
from ._variation import pso_velocity

__all__ = ["PSOState", "pso_init", "pso_step"]


@frozen_state
class PSOState:
    """The swarm: positions, velocities, personal bests (all populations of one species).

    ``best_fitness`` holds each member's best fitness so far (higher is better; ``-inf`` before
    the first step), ``fitness`` the fitness of the positions evaluated by the last step.
    """

    position: nf.Particle
    velocity: nf.Particle
    best: nf.Particle
    best_fitness: torch.Tensor
    fitness: torch.Tensor | None = None
    generation: int = 0

    @property
    def global_best(self) -> nf.Particle:
        """The best particle found so far (one member of ``best``)."""
        return self.best[int(torch.argmax(self.best_fitness))]

    def touch(self, *, velocity_scale: float | None = None,
              generator: torch.Generator | None = None) -> "PSOState":
        """The swarm at the species' newest version, following any event since.

        Positions and personal bests get the recipient values (clones of the event's
        snapshot: an added layer starts where the initiator's did, the same in every member).
        Velocities of added parameters are ``velocity_scale * N(0, 1)``, by default at the
        swarm's current root-mean-square speed: zero would leave a layer that every member
        holds identically frozen forever, since PSO only moves along differences. Personal-best
        fitness resets to ``-inf``: scores of the old structure do not rank the new one, so the
        next step re-scores every member.
        """
        position = nf.touch(self.position)
        if position.schema is self.position.schema:
            return self
        added = new_param_paths(self.position, position)
        velocity = nf.touch(self.velocity)
        if velocity_scale is None:
            old = [t for path, t in self.velocity.params.items()
                   if self.velocity.config(path).operational and t.is_floating_point()]
            count = sum(t.numel() for t in old)
            velocity_scale = float(torch.sqrt(sum(t.pow(2).sum() for t in old) / count)) \
                if count else 0.0
        scale = float(velocity_scale)
        velocity = refill(velocity, added, lambda t: scale * torch.randn(
            t.shape, generator=generator, dtype=t.dtype, device=t.device))
        return PSOState(position, velocity, nf.touch(self.best),
                        torch.full_like(self.best_fitness, -torch.inf), self.fitness,
                        self.generation)


def pso_init(pop: nf.Particle, *, velocity_scale: float = 0.0,
             generator: torch.Generator | None = None) -> PSOState:
    """A swarm starting at the members of ``pop`` with velocities ``velocity_scale * N(0, 1)``.

    ``pop`` is a population with one batch dimension and at least one member (a single
    particle, a 2-D population or an empty one is a typed error naming ``pso_init``).

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> g = torch.Generator().manual_seed(0)
    >>> pop = nf.population(torch.nn.Linear(2, 1), 8, generator=g)
    >>> target = torch.tensor([[1.0, -2.0]])
    >>> fitness = lambda pop: -((pop["weight"] - target) ** 2).sum((1, 2))  # higher is better
    >>> state = ev.pso_init(pop)
    >>> for _ in range(60):
    ...     state = ev.pso_step(state, fitness, generator=g)
    >>> torch.allclose(state.global_best["weight"], target, atol=1e-2)
    True
    """
    n = expect_population(pop, "pso_init")
    pop = nf.touch(pop).detach()
    velocity = nf.zeros_like(pop)
    if velocity_scale:
        velocity = velocity_scale * nf.randn_like(pop, generator=generator)
    return PSOState(pop, velocity, pop, torch.full((n,), -torch.inf))


def pso_step(state: PSOState, fitness_fn: Callable[[nf.Particle], torch.Tensor], *,
             inertia: float = 0.7, c1: float = 1.5, c2: float = 1.5,
             max_speed: float | None = None,
             generator: torch.Generator | None = None) -> PSOState:
    """Score the positions, update personal and global bests, then move the swarm once.

    ``fitness_fn(population) -> tensor (n,)``, higher is better (NaN never counts as an
    improvement). Runs without autograd. The state is first brought to the newest version
    (:meth:`PSOState.touch`, drawing new velocities from ``generator``), so an event made on
    any particle of the species mid-run is followed.
    """
    expect_state(state, PSOState, "pso_step", "pso_init(pop)")
    state = state.touch(generator=generator)
    with torch.no_grad():
        n = state.best_fitness.shape[0]
        f = torch.as_tensor(fitness_fn(state.position)).detach()
        if f.shape != (n,):
            raise nf.SchemaError(f"pso_step: fitness_fn must return one value per member, shape "
                                 f"({n},), got {tuple(f.shape)}")
        f = f.to(state.best_fitness.dtype)
        improved = f > state.best_fitness
        best = nf.where(improved, state.position, state.best)
        best_fitness = torch.where(improved, f, state.best_fitness)
        leader = best[int(torch.argmax(best_fitness))]
        velocity = pso_velocity(state.velocity, state.position, best, leader, inertia=inertia,
                                c1=c1, c2=c2, max_speed=max_speed, generator=generator)
        position = state.position + velocity
    return PSOState(position, velocity, best, best_fitness, f, state.generation + 1)
