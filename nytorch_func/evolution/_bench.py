"""Benchmark cases: one PSO step and one SNES generation, particles vs raw stacked tensors.

Each case is a zero-argument callable that advances its own state by one step, so a timer can
call it repeatedly. The raw versions are the same algorithms hand-written on a dict of stacked
tensors with ``torch.func.functional_call`` + ``vmap``, the way one would without this library.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

import nytorch_func as nf

from ._pso import pso_init, pso_step
from ._snes import snes_init, snes_step, snes_utilities

__all__ = ["bench_cases"]


def bench_cases(*, n: int = 64, hidden: int = 32, batch: int = 256,
                seed: int = 0) -> dict[str, Callable[[], object]]:
    """``{name: callable}`` for ``pso_step`` and ``snes_generation`` (fitness included) and for
    ``pso_update`` / ``snes_update`` (a fixed fitness vector: the algorithm's own overhead),
    each as ``<case>/nytorch_func`` and ``<case>/raw``, on an MLP 64-hidden-10 and ``n`` members.

    >>> from nytorch_func import evolution as ev
    >>> cases = ev.bench_cases(n=4, batch=8)
    >>> sorted(cases)[:2]
    ['pso_step/nytorch_func', 'pso_step/raw']
    >>> cases["snes_generation/nytorch_func"]() is None
    True
    """
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    x = torch.randn(batch, 64)
    y = torch.randint(0, 10, (batch,))
    fixed = torch.randn(n)
    p = nf.from_module(net).detach()

    def fitness(pop):
        logits = vmap(nf.apply, in_dims=(0, None))(pop, x)
        return -torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.expand(n, -1),
                                                  reduction="none").mean(1)

    skeleton = net  # the raw baseline runs its own module (the schema's skeleton is read-only)

    def raw_fitness(params):
        logits = vmap(lambda ps: functional_call(skeleton, ps, (x,)))(params)
        return -torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.expand(n, -1),
                                                  reduction="none").mean(1)

    cases: dict[str, Callable[[], object]] = {}
    for label, fit, raw_fit in (("step", fitness, raw_fitness),
                                ("update", lambda pop: fixed, lambda params: fixed)):
        cases[f"pso_{label}/nytorch_func"] = _ours_pso(p, n, fit, seed)
        cases[f"pso_{label}/raw"] = _raw_pso(p, n, raw_fit, seed)
    for label, fit, raw_fit in (("generation", fitness, raw_fitness),
                                ("update", lambda pop: fixed, lambda params: fixed)):
        cases[f"snes_{label}/nytorch_func"] = _ours_snes(p, n, fit, seed)
        cases[f"snes_{label}/raw"] = _raw_snes(p, n, raw_fit, seed)
    return cases


def _ours_pso(p, n, fitness, seed):
    g = torch.Generator().manual_seed(seed)
    box = [pso_init(nf.population(p, n, generator=g).detach())]

    def step():
        box[0] = pso_step(box[0], fitness, generator=g)

    return step


def _raw_pso(p, n, fitness, seed, inertia=0.7, c1=1.5, c2=1.5):
    g = torch.Generator().manual_seed(seed)
    pos = {k: torch.randn((n, *t.shape), generator=g) for k, t in p.params.items()}
    st = {"x": pos, "v": {k: torch.zeros_like(t) for k, t in pos.items()}, "best": dict(pos),
          "best_f": torch.full((n,), -math.inf)}

    @torch.no_grad()
    def step():
        x, v, best = st["x"], st["v"], st["best"]
        f = fitness(x)
        improved = f > st["best_f"]
        best = {k: torch.where(improved.reshape(-1, *(1,) * (t.dim() - 1)), x[k], t)
                for k, t in best.items()}
        best_f = torch.where(improved, f, st["best_f"])
        i = int(torch.argmax(best_f))
        r1 = {k: torch.rand(t.shape, generator=g) for k, t in x.items()}
        r2 = {k: torch.rand(t.shape, generator=g) for k, t in x.items()}
        v = {k: inertia * v[k] + c1 * r1[k] * (best[k] - x[k]) + c2 * r2[k] * (best[k][i] - x[k])
             for k in x}
        st.update(x={k: x[k] + v[k] for k in x}, v=v, best=best, best_f=best_f)

    return step


def _ours_snes(p, n, fitness, seed):
    g = torch.Generator().manual_seed(seed)
    box = [snes_init(p, n, sigma=0.1)]

    def step():
        box[0] = snes_step(box[0], fitness, generator=g)

    return step


def _raw_snes(p, n, fitness, seed, sigma=0.1):
    g = torch.Generator().manual_seed(seed)
    mu = {k: t.clone() for k, t in p.params.items()}
    d = sum(t.numel() for t in mu.values())
    lr_sigma = (3 + math.log(d)) / (5 * math.sqrt(d))
    st = {"mu": mu, "sigma": {k: torch.full_like(t, sigma) for k, t in mu.items()}}

    @torch.no_grad()
    def step():
        mu, sig = st["mu"], st["sigma"]
        eps = {k: torch.randn((n, *t.shape), generator=g) for k, t in mu.items()}
        u = snes_utilities(fitness({k: mu[k] + sig[k] * eps[k] for k in mu})).float()
        new_mu, new_sig = {}, {}
        for k, e in eps.items():
            w = u.reshape(-1, *(1,) * (e.dim() - 1))
            new_mu[k] = mu[k] + sig[k] * (w * e).sum(0)
            new_sig[k] = sig[k] * torch.exp(lr_sigma / 2 * (w * (e * e - 1)).sum(0))
        st.update(mu=new_mu, sigma=new_sig)

    return step
