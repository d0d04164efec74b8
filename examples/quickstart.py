"""Two particles from one nn.Module, mixed as whole models; run with `python examples/quickstart.py`."""

import torch
from torch import nn

import nytorch_func as nf

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
a = nf.from_module(net)  # species "Sequential", version 0
b = a.randn()  # same species, random operational parameters
mix = 0.5 * a + 0.5 * b  # whole-model arithmetic, one torch._foreach_* call per op
x = torch.randn(2, 4)
print("a(x)   =", nf.apply(a, x))
print("mix(x) =", nf.apply(mix, x))

grown = nf.add_module(mix, "3", nn.Linear(3, 2))  # an event: version 1 of the species
print("b touched to", nf.touch(b).version, "->", nf.apply(nf.touch(b), x).shape)
print(nf.history(a.species))
