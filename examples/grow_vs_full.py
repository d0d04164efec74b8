"""Does growth pay? Start narrow and widen twice, versus training at the final width throughout.

On scikit-learn's digits (no download), an MLP ``64 -> hidden -> 10`` is trained with
``nytorch_func.optim.Adam`` on minibatches until its test accuracy reaches ``--target``:

- **full**: ``hidden = --final`` from the first step;
- **grown**: ``hidden = --final // 4`` at first, widened with ``nf.widen`` (every unit's function
  kept, the Adam state carried with ``nf.touch_tree(state, fill="zeros")``) to ``--final // 2``
  at step ``--grow-at[0]`` and to ``--final`` at step ``--grow-at[1]``;
- **narrow** (the control): ``hidden = --final // 4`` throughout, never widened. If it reaches
  the target as cheaply, what "paid" was the small width, not the growth.

Both arms see the same minibatches in the same order (one seed per run) and run the same code
path, so the difference is the width alone. Reported per arm, median over ``--seeds`` runs:
steps to the target, training multiply-adds to the target (forward ``64*h + h*10`` per sample,
backward counted as twice the forward, as is usual), and wall time of the training steps and
the growth events (accuracy checks excluded from both). A run that never reaches the target in
``--max-steps`` counts as not reaching it and is reported as such.

    python examples/grow_vs_full.py                      # the figures in docs/growth.md
    python examples/grow_vs_full.py --final 1024 --batch 512 --target 0.975
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

import nytorch_func as nf
from nytorch_func.optim import Adam


def load_digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y))


def macs_per_sample(hidden: int) -> int:
    """Multiply-adds of one forward pass of the 64-hidden-10 MLP for one sample."""
    return 64 * hidden + hidden * 10


@dataclass
class Run:
    steps: int | None  # steps to the target (None: not reached)
    macs: float  # training multiply-adds spent until then (or in all steps)
    seconds: float  # wall time of the training steps and growth events until then
    growth_seconds: float  # of which the growth events (nf.widen + touch_tree)
    final_accuracy: float
    preserved: float  # largest change of the test logits through any growth (0 for full)


def train(schedule: list[tuple[int, int]], *, seed: int, target: float, batch: int, lr: float,
          check_every: int, max_steps: int, method: str, data: tuple) -> Run:
    """Train with hidden width ``schedule[k][1]`` from step ``schedule[k][0]``."""
    x_tr, x_te, y_tr, y_te = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    width = schedule[0][1]
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    p = nf.from_module(net).detach()
    opt = Adam(lr=lr)
    state = opt.init(p)
    step_fn = nf.value_and_grad(lambda q, xb, yb: nn.functional.cross_entropy(nf.apply(q, xb), yb))
    order = torch.Generator().manual_seed(1000 + seed)  # the same minibatches for both arms
    grow = dict(schedule[1:])
    macs = spent = in_growth = worst = 0.0
    acc = 0.0
    for step in range(max_steps):
        if step in grow:
            with torch.no_grad():
                before = nf.apply(p, x_te)
            t0 = time.perf_counter()
            p = nf.widen(p, "0", "2", grow[step] - width, method=method, generator=gen)
            state = nf.touch_tree(state, fill="zeros")
            dt = time.perf_counter() - t0
            in_growth += dt
            spent += dt
            width = grow[step]
            with torch.no_grad():  # the check of the preserved function is not timed
                worst = max(worst, float((nf.apply(p, x_te) - before).abs().max()))
        start = time.perf_counter()
        idx = torch.randint(0, len(x_tr), (batch,), generator=order)
        _, g = step_fn(p, x_tr[idx], y_tr[idx])
        p, state = opt.step(p, g, state)
        p = p.detach()
        spent += time.perf_counter() - start
        macs += 3 * batch * macs_per_sample(width)
        if (step + 1) % check_every == 0:
            with torch.no_grad():
                acc = float((nf.apply(p, x_te).argmax(-1) == y_te).float().mean())
            if acc >= target:
                return Run(step + 1, macs, spent, in_growth, acc, worst)
    return Run(None, macs, spent, in_growth, acc, worst)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--final", type=int, default=256, help="final hidden width (both arms)")
    ap.add_argument("--grow-at", type=int, nargs=2, default=(25, 50),
                    help="steps at which the grown arm widens (x2, then x2 again)")
    ap.add_argument("--target", type=float, default=0.98, help="test accuracy to reach")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--method", choices=("net2net", "zeros"), default="zeros")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_digits()
    f = args.final
    arms = {"full": [(0, f)],
            "grown": [(0, f // 4), (args.grow_at[0], f // 2), (args.grow_at[1], f)],
            "narrow": [(0, f // 4)]}
    runs: dict[str, list[Run]] = {name: [] for name in arms}
    for seed in range(args.seeds):
        for name, schedule in arms.items():  # interleaved, so machine drift hits both alike
            runs[name].append(train(schedule, seed=seed, target=args.target, batch=args.batch,
                                    lr=args.lr, check_every=args.check_every,
                                    max_steps=args.max_steps, method=args.method, data=data))
    print(f"digits, MLP 64-h-10, Adam lr={args.lr}, batch {args.batch}, target test accuracy "
          f"{args.target}, {args.seeds} seeds, {args.threads} thread(s); grown: h={f // 4} -> "
          f"{f // 2} (step {args.grow_at[0]}) -> {f} (step {args.grow_at[1]}), "
          f"method={args.method}; full: h={f}; narrow: h={f // 4}")
    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if r.steps is not None]
        summary[name] = {
            "reached": len(ok), "runs": len(rs),
            "steps": median([r.steps for r in ok]),
            "macs": median([r.macs for r in ok]),
            "seconds": median([r.seconds for r in ok]),
            "growth_seconds": median([r.growth_seconds for r in ok]),
            "preserved": max((r.preserved for r in rs), default=0.0),
        }
        s = summary[name]
        print(f"{name:>6}: reached {s['reached']}/{s['runs']}; median steps {s['steps']:.0f}, "
              f"multiply-adds {s['macs'] / 1e9:.3g} G, wall {s['seconds']:.2f} s "
              f"(growth events {s['growth_seconds'] * 1e3:.1f} ms); max logit change through "
              f"growth {s['preserved']:.1e}")
    full = summary["full"]
    for name in ("grown", "narrow"):
        s = summary[name]
        if full["reached"] and s["reached"]:
            print(f"{name} / full: multiply-adds {s['macs'] / full['macs']:.2f}x "
                  f"({100 * (1 - s['macs'] / full['macs']):.0f}% saved), wall time "
                  f"{s['seconds'] / full['seconds']:.2f}x, steps {s['steps'] / full['steps']:.2f}x")
    return summary


if __name__ == "__main__":
    main()
