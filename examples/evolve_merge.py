"""Merge search in memory: task vectors on scikit-learn's digits, every merge method, and SNES.

1. A small MLP (64-64-10) is pre-trained briefly on a few examples of every digit (the base).
2. Four copies of it are fine-tuned, one per digit subset ({0,1,2}, {3,4,5}, {6,7}, {8,9}), as
   one population in one vmapped training loop: each is good at its digits and forgets others.
3. Their task vectors are merged with nytorch_func.merge: linear, task arithmetic, TIES, DARE,
   breadcrumbs and Model Stock. Each method's ``scale`` is picked on the validation split from
   a grid of 16 values, evaluated as one population with one ``vmap`` call.
4. SNES (nytorch_func.evolution) searches TIES's per-model weights and densities and its scale:
   every generation is one ``vmap`` over the candidates (merge + validation loss), so no
   candidate is ever written to disk.

The table (test accuracy on all ten digits, and on each task's digits), a plot and a JSON of the
results go to ``--out`` (default ``evolve_merge-out/``, ignored by git).

Run: ``python examples/evolve_merge.py`` (about 15 s on one CPU thread; ``--quick`` for a
smoke run).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch
from sklearn.datasets import load_digits
from torch import nn
from tqdm import tqdm

import nytorch_func as nf
from nytorch_func import evolution as ev
from nytorch_func import merge, optim

TASKS = ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))
SCALES = torch.linspace(0.1, 1.6, 16)


def load(seed: int):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    return ((x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val]),
            (x[n_train + n_val:], y[n_train + n_val:]))


def masked_loss(p, x, y, mask):
    """Cross-entropy over the samples ``mask`` selects (one member's task)."""
    per_sample = nn.functional.cross_entropy(nf.apply(p, x), y, reduction="none")
    return (per_sample * mask).sum() / mask.sum()


def train(p, x, y, masks, steps, lr):
    """Adam on a population (or one particle, masks of shape (n,)): full-batch steps."""
    opt = optim.Adam(lr=lr)
    state = opt.init(p)
    if p.batch_shape:
        grad = torch.func.vmap(nf.grad(masked_loss), in_dims=(0, None, None, 0))
    else:
        grad = nf.grad(masked_loss)
    for _ in range(steps):
        p, state = opt.step(p, grad(p, x, y, masks), state)
    return p.detach()


def accuracies(pop, x, y):
    """Test accuracy of each member: all digits, then each task's digits. Shape (n, 1 + tasks)."""
    with torch.no_grad():
        hit = (torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x).argmax(-1) == y).float()
    cols = [hit.mean(-1)]
    for task in TASKS:
        sel = torch.isin(y, torch.tensor(task))
        cols.append(hit[:, sel].mean(-1))
    return torch.stack(cols, -1)


def val_loss(p, x, y):
    return nn.functional.cross_entropy(nf.apply(p, x), y)


def best_scale(merge_fn, x, y):
    """The scale (of SCALES) with the lowest validation loss: all 16 merges in one vmap call."""
    with torch.no_grad():
        losses = torch.func.vmap(lambda s: val_loss(merge_fn(s), x, y), randomness="same")(SCALES)
    return float(SCALES[int(losses.argmin())])


class Genome(nn.Module):
    """What SNES searches: TIES weights, densities (as logits) and scale, per model."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(m))
        self.d = nn.Parameter(torch.zeros(m))  # density = sigmoid(d): 0.5 to start
        self.s = nn.Parameter(torch.ones(()))


def decode(genomes):
    return genomes["w"], torch.sigmoid(genomes["d"]).clamp(0.01, 1.0), genomes["s"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small, fast run (tests)")
    ap.add_argument("--out", default="evolve_merge-out", help="folder for the plot and JSON")
    ap.add_argument("--generations", type=int, default=None)
    ap.add_argument("--popsize", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    generations = args.generations or (4 if args.quick else 60)
    pre_steps, tune_steps = (20, 20) if args.quick else (150, 300)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    start = time.perf_counter()
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = load(args.seed)

    # 1. the base: a few examples of each digit
    few = torch.cat([torch.nonzero(y_tr == c).flatten()[:3] for c in range(10)])
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    base = train(nf.from_module(net), x_tr[few], y_tr[few], torch.ones(len(few)), pre_steps,
                 0.01)

    # 2. four fine-tuned copies, one population, one training loop
    masks = torch.stack([torch.isin(y_tr, torch.tensor(t)).float() for t in TASKS])
    tuned = train(nf.stack([base] * len(TASKS)), x_tr, y_tr, masks, tune_steps, 0.01)
    m = len(TASKS)

    # 3. every method, scale picked on validation (16 candidates per method in one vmap);
    # DARE draws its drop mask from a fresh seeded generator: the same mask for every scale
    def dare(s, consensus=False):
        return merge.dare(base, tuned, density=0.5, consensus=consensus, scale=s,
                          generator=torch.Generator().manual_seed(args.seed))

    def dare_ties(s):
        return dare(s, consensus=True)

    methods = {
        "linear": lambda: merge.linear(tuned),
        "task arithmetic": lambda: merge.task_arithmetic(
            base, tuned, scale=best_scale(lambda s: merge.task_arithmetic(base, tuned, scale=s),
                                          x_val, y_val)),
        "TIES (density 0.2)": lambda: merge.ties(
            base, tuned, density=0.2,
            scale=best_scale(lambda s: merge.ties(base, tuned, density=0.2, scale=s),
                             x_val, y_val)),
        "DARE (density 0.5)": lambda: dare(best_scale(dare, x_val, y_val)),
        "DARE-TIES (density 0.5)": lambda: dare_ties(best_scale(dare_ties, x_val, y_val)),
        "breadcrumbs (0.5, 0.05)": lambda: merge.breadcrumbs(
            base, tuned, density=0.5, gamma=0.05,
            scale=best_scale(lambda s: merge.breadcrumbs(base, tuned, density=0.5, gamma=0.05,
                                                         scale=s), x_val, y_val)),
        "Model Stock": lambda: merge.model_stock(base, tuned),
    }
    merged = {name: make() for name, make in methods.items()}

    # 4. SNES over TIES weights, densities and scale: one vmapped population per generation
    def fitness(genomes):
        w, d, s = decode(genomes)
        return -torch.func.vmap(
            lambda w, d, s: val_loss(merge.ties(base, tuned, w, density=d, scale=s),
                                     x_val, y_val))(w, d, s)

    state = ev.snes_init(nf.from_module(Genome(m)), popsize=args.popsize, sigma=0.5)
    g = torch.Generator().manual_seed(args.seed)
    history = []
    search_time = 0.0
    with tqdm(range(generations), desc="SNES merge search", unit="gen") as bar:
        for _ in bar:
            t0 = time.perf_counter()
            state = ev.snes_step(state, fitness, generator=g)
            search_time += time.perf_counter() - t0
            history.append((float(state.fitness.max()), float(state.fitness.mean())))
            bar.set_postfix(best_val_loss=f"{-history[-1][0]:.3f}")
    w, d, s = decode(state.mean)
    merged["evolved TIES (SNES)"] = merge.ties(base, tuned, w, density=d, scale=s)

    # the table: test accuracy of the base, the fine-tuned models and every merge
    rows = {"base": accuracies(nf.stack([base]), x_te, y_te)[0]}
    tuned_acc = accuracies(tuned, x_te, y_te)
    for i, task in enumerate(TASKS):
        rows[f"fine-tuned on {set(task)}"] = tuned_acc[i]
    merged_acc = accuracies(nf.stack(list(merged.values())), x_te, y_te)
    rows.update(zip(merged, merged_acc))
    candidates = generations * args.popsize
    results = {
        "columns": ["all digits"] + [str(set(t)) for t in TASKS],
        "rows": {name: [round(float(v), 4) for v in acc] for name, acc in rows.items()},
        "evolved": {"weights": w.tolist(), "densities": d.tolist(), "scale": float(s)},
        "search": {"generations": generations, "popsize": args.popsize,
                   "candidates": candidates, "seconds": round(search_time, 3),
                   "candidates_per_second": round(candidates / search_time, 1)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(table(results))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(history, results, out / "evolve_merge.png")
    print(f"wrote {out / 'results.json'} and {out / 'evolve_merge.png'}")
    return results


def table(results: dict) -> str:
    cols = results["columns"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, accs in results["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    s = results["search"]
    lines.append(f"\nSNES: {s['candidates']} candidate merges in {s['seconds']} s "
                 f"({s['candidates_per_second']} candidates/s, validation loss included)")
    return "\n".join(lines)


def plot(history, results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    best = [-b for b, _ in history]
    mean = [-mu for _, mu in history]
    left.plot(best, label="best candidate")
    left.plot(mean, label="population mean")
    left.set_xlabel("generation")
    left.set_ylabel("validation cross-entropy")
    left.set_title("SNES over TIES weights, densities, scale")
    left.legend()
    names = list(results["rows"])
    accs = [results["rows"][n][0] for n in names]
    right.barh(range(len(names)), accs, color=["0.6" if "fine" in n or n == "base" else "C0"
                                               for n in names])
    right.set_yticks(range(len(names)), names, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("test accuracy, all ten digits")
    right.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
