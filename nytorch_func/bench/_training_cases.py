"""Benchmark rows for functional training: population initialisation and an optimizer step.

- ``init``: ``nf.population(mlp, 350)`` (each member initialised as its own ``reset_parameters``
  would) against drawing the same number of uniform random values into one flat buffer (the
  floor: the draws themselves), and, reported next to it, against building 350 modules and
  ``torch.func.stack_module_state`` (what a torch.func user writes today).
- ``adam``: one ``optim.Adam`` step on a 64-stack of the population MLP against
  ``torch.optim.Adam(foreach=True)`` stepping the same stacked tensors in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import nytorch_func as nf

from ._harness import Case, Side, Target

__all__ = ["init_rows", "adam_rows", "INIT_SIZES", "INIT_MEMBERS"]

Built = tuple[list[Case], dict[str, str]]

INIT_SIZES = (784, 128, 128, 10)  # pytorch/functorch #909's ensemble
INIT_MEMBERS = 350
ADAM_SIZES = (64, 32, 10)  # the population MLP of P3, P4, P5, P7
ADAM_MEMBERS = 64


def _mlp(sizes: tuple[int, ...]) -> torch.nn.Module:
    """``nn.Sequential`` of Linear layers with ReLU between them."""
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [torch.nn.Linear(sizes[i], sizes[i + 1]), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def init_rows() -> Built:
    numel = INIT_MEMBERS * sum(t.numel() for t in _mlp(INIT_SIZES).parameters())

    def ours() -> Callable[[], Any]:
        g = torch.Generator().manual_seed(0)
        return lambda: nf.population(_mlp(INIT_SIZES), INIT_MEMBERS, generator=g)

    def draws() -> Callable[[], Any]:
        g = torch.Generator().manual_seed(0)
        return lambda: torch.empty(numel).uniform_(generator=g)

    def stacked() -> Callable[[], Any]:
        return lambda: torch.func.stack_module_state(
            [_mlp(INIT_SIZES) for _ in range(INIT_MEMBERS)])

    label = f"nf.population(mlp, {INIT_MEMBERS})"
    return [
        Case("init", "init", f"{INIT_MEMBERS}-member population init, MLP 784-128-128-10",
             Side(label, ours), Side(f"{numel:,} uniform draws, one flat buffer", draws),
             Target("max_ratio", 1.25)),
        Case("init-stack", "init", f"{INIT_MEMBERS}-member init vs building modules",
             Side(label, ours), Side(f"{INIT_MEMBERS} modules + stack_module_state", stacked)),
    ], {}


def adam_rows() -> Built:
    def ours() -> Callable[[], Any]:
        from ..optim import Adam

        pop = nf.from_modules([_mlp(ADAM_SIZES) for _ in range(ADAM_MEMBERS)])
        grads = pop.randn(generator=torch.Generator().manual_seed(0)).detach()
        opt = Adam(lr=1e-3)
        box = [pop, opt.init(pop)]

        def run() -> None:
            box[0], box[1] = opt.step(box[0], grads, box[1])

        return run

    def theirs() -> Callable[[], Any]:
        params, _ = torch.func.stack_module_state([_mlp(ADAM_SIZES) for _ in range(ADAM_MEMBERS)])
        leaves = [t.detach().requires_grad_(True) for t in params.values()]
        g = torch.Generator().manual_seed(0)
        for t in leaves:
            t.grad = torch.randn(t.shape, generator=g)
        opt = torch.optim.Adam(leaves, lr=1e-3, foreach=True)
        return opt.step

    return [Case("adam", "adam", f"Adam step, {ADAM_MEMBERS}-stack MLP 64-32-10",
                 Side("optim.Adam.step (pure)", ours),
                 Side("torch.optim.Adam(foreach=True).step", theirs),
                 Target("max_ratio", 1.2))], {}
