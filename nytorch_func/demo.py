"""The README demo: a population trained by gradients, mixed like a swarm and widened mid-run.

``python -m nytorch_func.demo`` trains a population of small MLPs on scikit-learn's bundled digits
data (no download). Every step is one vectorised Adam step for all members
(``vmap(nf.grad(loss))`` + ``nytorch_func.optim.Adam``); every few steps a random half of the
swarm moves toward the best member (``nf.lerp(pop, best, c)`` with per-member weights).
Halfway, one event grows every member: ``nf.widen`` adds units to the hidden layer (each member
grown from its own weights, net2net, so each computes the same function as before) and the Adam
state follows with ``nf.touch_tree(state, fill="zeros")`` (old coordinates keep their moments, new
ones start at zero). The demo prints each member's test accuracy just before and just after
growing (equal: the function is preserved), a progress bar and final accuracies, and saves a plot
of accuracy per member over time with the growth step marked. Needs the ``demo`` extra
(scikit-learn, tqdm, matplotlib).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch import nn

import nytorch_func as nf
from nytorch_func.optim import Adam, AdamState


class DigitsNet(nn.Module):
    """64 -> hidden -> 10; ``body.0`` (the hidden layer) is widened mid-run, ``head`` reads it."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Result:
    accuracy: list[float]  # final test accuracy per member
    history: list[tuple[int, list[float]]]  # (step, accuracies)
    grown_at: int
    seconds: float
    before: list[float]  # test accuracy per member just before growing
    after: list[float]  # ... and just after (equal: every member keeps its function)
    max_change: float  # largest change of any member's logits on the test set through growth
    widths: tuple[int, int]  # hidden units before and after
    population: nf.Particle  # the trained population, at the grown version
    state: AdamState  # its optimizer state, carried through the growth


def load_digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def loss_fn(p: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(nf.apply(p, x), y)


def accuracy(pop: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    with torch.no_grad():
        logits = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    return (logits.argmax(-1) == y).float().mean(-1).tolist()


def logits(pop: nf.Particle, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)


def run(members: int = 16, steps: int = 300, mix_every: int = 25, alpha: float = 0.3,
        lr: float = 1e-2, seed: int = 0, progress: bool = True, hidden: int = 16,
        grow_by: int = 32) -> Result:
    """Train, mix and widen a population; return accuracies per member over time."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits(seed)
    pop = nf.population(DigitsNet(hidden), members, init="clone")
    pop = pop + 0.05 * nf.randn_like(pop, generator=gen)  # diverse members of one species
    pop = pop.detach()
    opt = Adam(lr=lr)
    state = opt.init(pop)
    grad_fn = torch.func.vmap(nf.value_and_grad(loss_fn), in_dims=(0, None, None))
    history, grown_at, start = [], steps // 2, time.perf_counter()
    before = after = []
    max_change = 0.0
    bar = range(steps)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc="training", unit="step")
    for step in bar:
        if step == grown_at:  # one event widens every member, each from its own weights
            old = logits(pop, x_te)
            before = accuracy(pop, x_te, y_te)
            pop = nf.widen(pop, "body.0", "head", grow_by, generator=gen)
            state = nf.touch_tree(state, fill="zeros")  # Adam's moments follow the growth
            max_change = float((logits(pop, x_te) - old).abs().max())
            after = accuracy(pop, x_te, y_te)
        losses, grads = grad_fn(pop, x_tr, y_tr)
        pop, state = opt.step(pop, grads, state)
        pop = pop.detach()
        if (step + 1) % mix_every == 0:  # swarm move: a random half steps toward the best
            best = pop[int(losses.argmin())]
            moving = (torch.rand(members, generator=gen) < 0.5).float() * alpha
            pop = nf.lerp(pop, best, moving).detach()  # one foreach, per-member weights
        if step % 10 == 0 or step == steps - 1:
            history.append((step, accuracy(pop, x_te, y_te)))
            if progress:
                bar.set_postfix(best=f"{max(history[-1][1]):.3f}", version=pop.version)
    return Result(history[-1][1], history, grown_at, time.perf_counter() - start, before, after,
                  max_change, (hidden, hidden + grow_by), pop, state)


def plot(result: Result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in result.history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(len(result.accuracy)):
        ax.plot(steps, [acc[i] for _, acc in result.history], lw=1, alpha=0.7)
    ax.axvline(result.grown_at, color="k", ls="--", lw=1,
               label=f"hidden layer widened {result.widths[0]}\u2192{result.widths[1]} (nf.widen)")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits: gradient + swarm population, one member per line")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Result:
    ap = argparse.ArgumentParser(prog="python -m nytorch_func.demo",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=16, help="hidden units at the start")
    ap.add_argument("--grow-by", type=int, default=32, help="hidden units added halfway")
    ap.add_argument("--plot", default="demo-accuracy.png", help="where to save the plot")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    result = run(members=args.members, steps=args.steps, seed=args.seed, progress=not args.quiet,
                 hidden=args.hidden, grow_by=args.grow_by)
    accs = sorted(result.accuracy, reverse=True)
    print(f"trained {args.members} members for {args.steps} steps in {result.seconds:.1f}s; "
          f"hidden layer widened {result.widths[0]}\u2192{result.widths[1]} at step "
          f"{result.grown_at}")
    print("test accuracy per member just before growing: "
          + " ".join(f"{a:.3f}" for a in result.before))
    print("test accuracy per member just after growing:  "
          + " ".join(f"{a:.3f}" for a in result.after))
    print(f"every member kept its function: max change of any logit {result.max_change:.1e}")
    print("final test accuracy per member (best first): " + " ".join(f"{a:.3f}" for a in accs))
    plot(result, args.plot)
    print(f"plot saved to {args.plot}")
    return result


if __name__ == "__main__":
    main()
