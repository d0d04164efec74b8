"""PSO, SNES and a greedy soup on scikit-learn's digits with an MLP 64-32-10, and a layer added
mid-run that the algorithms' state follows. Run with `python examples/evolution_digits.py`."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import nytorch_func as nf
from nytorch_func import evolution as ev

torch.set_num_threads(1)
torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
x_train, y_train, x_val, y_val = x[:1200], y[:1200], x[1200:], y[1200:]


def fitness(pop, xs=x_train, ys=y_train):
    """Negative cross-entropy of every member (higher is better)."""
    logits = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, xs)
    return -nn.functional.cross_entropy(logits.transpose(1, 2), ys.expand(len(pop), -1),
                                        reduction="none").mean(1)


def accuracy(p, xs=x_val, ys=y_val):
    return float((nf.apply(p, xs).argmax(1) == ys).float().mean())


def identity_layer():
    layer = nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(10))
        layer.bias.zero_()
    return layer


net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
g = torch.Generator().manual_seed(0)

# SNES: the search distribution (mean, sigma) is two particles of the species
state = ev.snes_init(nf.from_module(net), popsize=64, sigma=0.1)
for gen in range(100):
    if gen == 50:  # an event mid-run: a function-preserving layer on top
        nf.add_module(state.mean, "3", identity_layer())
    state = ev.snes_step(state, fitness, generator=g)
print(f"SNES  version {state.mean.version}: val accuracy {accuracy(state.mean):.3f}, "
      f"sigma of the added layer {float(state.sigma['3.weight'].mean()):.3f}")

# PSO over a 64-member swarm of a new species
pop = nf.population(net, 64, init=lambda base, spec: 0.3 * torch.randn(base.shape, generator=g))
swarm = ev.pso_init(pop)
for step in range(100):
    if step == 50:
        nf.add_module(swarm.global_best, "3", identity_layer())
    swarm = ev.pso_step(swarm, fitness, inertia=0.6, c1=1.2, c2=1.2, max_speed=0.5, generator=g)
print(f"PSO   version {swarm.position.version}: val accuracy {accuracy(swarm.global_best):.3f}")

# greedy soup: fine-tune 8 members from one start with different data orders, then merge
start = nf.from_module(net).detach()
members = []
for seed in range(8):
    p, perm = start, torch.randperm(1200, generator=torch.Generator().manual_seed(seed))
    for i in range(0, 1200, 40):
        batch = perm[i:i + 40]
        loss = lambda q: nn.functional.cross_entropy(nf.apply(q, x_train[batch]), y_train[batch])
        p = p - 0.5 * torch.func.grad(loss)(p)
    members.append(p)
soup = ev.greedy_soup(nf.stack(members), accuracy)
print(f"soup  of members {soup.indices.tolist()}: val accuracy {soup.score:.3f} "
      f"(best single {max(accuracy(m) for m in members):.3f})")
