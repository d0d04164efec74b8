"""Greedy model soup (Wortsman et al. 2022) over a population, from the public API only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

import nytorch_func as nf

from ._state import expect_population

__all__ = ["Soup", "greedy_soup"]


class Soup(NamedTuple):
    """The result of :func:`greedy_soup`: the averaged particle, the members in it, its score."""

    particle: nf.Particle
    indices: torch.Tensor
    score: float


def greedy_soup(pop: nf.Particle, score_fn: Callable[[nf.Particle], Any], *,
                scores: Any = None) -> Soup:
    """Average members in order of their own score, keeping each one that does not lower the soup's.

    ``pop`` is a population with one batch dimension and at least one member (anything else
    is a typed error naming ``greedy_soup``). ``score_fn(particle) -> number`` is a held-out
    score, higher is better. ``scores`` (one per member) saves scoring every member alone.
    Runs without autograd. Soups are ``nf.mean`` of the chosen members, so
    non-operational parameters and buffer policies are honoured (e.g. BatchNorm statistics
    averaged with policy ``"mean"`` or reset with ``"reset"``).

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import evolution as ev
    >>> target = torch.tensor([[1.0, 1.0]])
    >>> noise = torch.tensor([[[0.2, -0.2]], [[-0.2, 0.2]], [[3.0, 3.0]]])
    >>> pop = nf.population(torch.nn.Linear(2, 1), 3, init=lambda base, spec: base * 0 + (target + noise if spec.key == "weight" else 0))
    >>> score = lambda p: -float(((p["weight"] - target) ** 2).sum())
    >>> soup = ev.greedy_soup(pop, score)
    >>> soup.indices.tolist(), abs(soup.score) < 1e-9
    ([0, 1], True)
    """
    n = expect_population(pop, "greedy_soup")
    if not callable(score_fn):
        raise nf.ArgumentTypeError(f"greedy_soup: score_fn must be a callable (particle -> "
                                   f"number), got {type(score_fn).__name__}")
    if scores is not None:
        try:
            shape = tuple(torch.as_tensor(scores).shape)
        except (TypeError, ValueError, RuntimeError) as err:
            raise nf.ArgumentTypeError(f"greedy_soup: scores must be numbers, one per member "
                                       f"(a list or tensor), got {type(scores).__name__}: "
                                       f"{err}") from None
        if shape != (n,):
            raise nf.SchemaError(f"greedy_soup: scores must hold one number per member, shape "
                                 f"({n},), got {shape}")
    with torch.no_grad():
        return _greedy(pop, n, score_fn, scores)


def _greedy(pop: nf.Particle, n: int, score_fn: Callable[[nf.Particle], Any],
            scores: Any) -> Soup:
    if scores is None:
        scores = [float(score_fn(member)) for member in pop]
    _, order = nf.topk(pop, scores, k=n)
    order = order.tolist()
    chosen = [order[0]]
    soup = nf.mean(nf.take(pop, chosen))
    best = float(score_fn(soup))
    for i in order[1:]:
        candidate = nf.mean(nf.take(pop, chosen + [i]))
        score = float(score_fn(candidate))
        if score >= best:
            chosen.append(i)
            soup, best = candidate, score
    return Soup(soup, torch.tensor(chosen), best)
