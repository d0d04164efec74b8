"""Real models and "fine-tuned" copies for the merge tests (no mocks)."""

from __future__ import annotations

import torch
from torch import nn

import nytorch_func as nf


class Scaled(nn.Module):
    """A Linear with a 0-dim learnable gain and a non-operational offset parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.gain = nn.Parameter(torch.tensor(0.7))
        self.offset = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.lin(x) * self.gain + self.offset


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))


def conv():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def bn():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3), nn.BatchNorm1d(3))


def scaled():
    return Scaled()


BUILDERS = {"mlp": mlp, "conv": conv, "bn": bn, "scaled": scaled}
INPUTS = {"mlp": lambda: torch.randn(4, 6), "conv": lambda: torch.randn(2, 2, 6, 6),
          "bn": lambda: torch.randn(3, 2, 6, 6), "scaled": lambda: torch.randn(4, 5)}


def family(name: str, n: int, *, seed: int = 0, dtype: torch.dtype | None = None,
           spread: float = 0.1):
    """``(base, [model...])``: a base and ``n`` perturbed copies of it (float buffers perturbed
    too, integer buffers equal), one species. ``scaled`` gets its ``offset`` non-operational."""
    g = torch.Generator().manual_seed(seed)
    module = BUILDERS[name]()
    if dtype is not None:
        module = module.to(dtype)
    base = nf.from_module(module).detach()
    if name == "scaled":
        base = nf.configure(base, "offset", operational=False)
    models = []
    for _ in range(n):
        leaves = []
        for spec, t in zip(base.schema.leaf_specs, base.leaves):
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype)
                leaves.append(t + spread * noise)
            else:
                leaves.append(t.clone())
        models.append(nf.Particle(base.schema, tuple(leaves), None))
    return base, models
