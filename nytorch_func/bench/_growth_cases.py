"""The growth row: widening a population with its Adam state against the same by hand.

Ours: ``nf.widen(pop, "l0", "l1", 64)`` (net2net) on a 64-stack of an MLP 64-256-10, then
``nf.touch_tree(state, fill="zeros")`` on its Adam state: one event, every member grown from its
own weights, the moments carried. The baseline is what a user writes on raw stacked tensors:
draw the replicated units, ``index_select`` the layer's rows, divide the consumer's columns by
the replication counts, ``cat`` zeros onto the moments. Both sides check nothing and both start
from the same numbers; ours also makes the new schema version (the event) and keeps the ids.

Every sample widens fresh populations (a widened one is at the new width, and widening a
population again would time a different operation), so both sides are prepared untimed per
sample and time ``GROW_REPEAT`` widenings of separate stacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import nytorch_func as nf
from nytorch_func.optim import Adam

from ._harness import Case, Side, Target

__all__ = ["growth_rows", "hand_widen", "GROW_SIZES", "GROW_BY", "GROW_MEMBERS"]

Built = tuple[list[Case], dict[str, str]]

GROW_SIZES = (64, 256, 10)
GROW_BY = 64
GROW_MEMBERS = 64
GROW_REPEAT = 8  # widenings per sample (separate stacks), to lift a sample above timer noise


def hand_widen(params: dict[str, torch.Tensor], m: dict[str, torch.Tensor],
               v: dict[str, torch.Tensor], by: int, generator: torch.Generator
               ) -> tuple[dict, dict, dict]:
    """Net2net widening of ``l0`` (read by ``l1``) on stacked tensors, Adam moments carried.

    ``params``/``m``/``v``: ``{"l0.weight": (n, h, i), "l0.bias": (n, h), "l1.weight": (n, o, h),
    "l1.bias": (n, o)}``. New units replicate random old ones; ``l1``'s columns are divided by
    the replication counts; the moments of new coordinates are zeros.

    >>> import torch
    >>> from nytorch_func.bench._growth_cases import hand_widen
    >>> p = {"l0.weight": torch.randn(2, 3, 4), "l0.bias": torch.randn(2, 3),
    ...      "l1.weight": torch.randn(2, 5, 3), "l1.bias": torch.randn(2, 5)}
    >>> z = {k: torch.zeros_like(t) for k, t in p.items()}
    >>> q, m, v = hand_widen(p, z, z, 2, torch.Generator().manual_seed(0))
    >>> q["l0.weight"].shape, m["l1.weight"].shape
    (torch.Size([2, 5, 4]), torch.Size([2, 5, 5]))
    >>> x = torch.randn(2, 7, 4)
    >>> f = lambda p: torch.relu(x @ p["l0.weight"].mT + p["l0.bias"][:, None]) @ p["l1.weight"].mT
    >>> bool(torch.allclose(f(p), f(q), atol=1e-5))
    True
    """
    w0, b0, w1 = params["l0.weight"], params["l0.bias"], params["l1.weight"]
    h = w0.shape[1]
    src = torch.randint(0, h, (by,), generator=generator)
    index = torch.cat([torch.arange(h), src])
    counts = torch.bincount(index, minlength=h).to(w1.dtype)
    out = dict(params)
    out["l0.weight"] = w0.index_select(1, index)
    out["l0.bias"] = b0.index_select(1, index)
    out["l1.weight"] = w1.index_select(2, index) / counts.index_select(0, index)
    moments = []
    for state in (m, v):
        s = dict(state)
        n, _, i = state["l0.weight"].shape
        s["l0.weight"] = torch.cat([state["l0.weight"], state["l0.weight"].new_zeros(n, by, i)], 1)
        s["l0.bias"] = torch.cat([state["l0.bias"], state["l0.bias"].new_zeros(n, by)], 1)
        w = state["l1.weight"]
        s["l1.weight"] = torch.cat([w, w.new_zeros(n, w.shape[1], by)], 2)
        moments.append(s)
    return out, moments[0], moments[1]


class GrowMLP(nn.Module):
    """``l0 -> relu -> l1``, the MLP of the row (the bench's ``mlp`` names its layers alike)."""

    def __init__(self, sizes: tuple[int, int, int] = GROW_SIZES) -> None:
        super().__init__()
        self.l0 = nn.Linear(sizes[0], sizes[1])
        self.l1 = nn.Linear(sizes[1], sizes[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1(torch.relu(self.l0(x)))


def _trained(seed: int) -> tuple[nf.Particle, Any]:
    """A detached 64-stack and an Adam state after one step (distinct, non-zero m and v)."""
    g = torch.Generator().manual_seed(seed)
    pop = nf.population(GrowMLP(), GROW_MEMBERS, generator=g).detach()
    opt = Adam(lr=1e-3)
    state = opt.init(pop)
    pop, state = opt.step(pop, nf.randn_like(pop, generator=g), state)
    return pop.detach(), state


def growth_rows() -> Built:
    def ours() -> Callable[[], Any]:
        prepared = [_trained(i) for i in range(GROW_REPEAT)]
        g = torch.Generator().manual_seed(0)

        def run() -> Any:
            out = []
            for pop, state in prepared:
                wide = nf.widen(pop, "l0", "l1", GROW_BY, generator=g)
                out.append((wide, nf.touch_tree(state, fill="zeros")))
            return out

        return run

    def hand() -> Callable[[], Any]:
        prepared = []
        for i in range(GROW_REPEAT):
            pop, state = _trained(i)
            prepared.append(tuple({k: t for k, t in zip(x.schema.leaf_keys, x.leaves)}
                                  for x in (pop, state.m, state.v)))
        g = torch.Generator().manual_seed(0)

        def run() -> Any:
            return [hand_widen(p, m, v, GROW_BY, g) for p, m, v in prepared]

        return run

    name = (f"widen a {GROW_MEMBERS}-stack MLP {'-'.join(map(str, GROW_SIZES))} by {GROW_BY} "
            "units (net2net) + carry its Adam state")
    return [Case("grow", "grow", name,
                 Side("nf.widen + nf.touch_tree(state, fill='zeros')", ours,
                      per_call=GROW_REPEAT, repeatable=False),
                 Side("index_select / divide / cat by hand", hand, per_call=GROW_REPEAT,
                      repeatable=False),
                 Target("max_ratio", 1.5))], {}
