"""Facade benchmark: a particle operation between two NytoModules vs nytorch 1.1.0's.

Run: PYTHONPATH=. python benchmarks/bench_facade.py [--before REV]
(needs nytorch==1.1.0, the "bench" extra). ``--before REV`` also times the library as it was at
git revision REV (exported under another package name next to the current one), so
before/after figures come from one interleaved run. ``python -m nytorch_func.bench --only
facade`` has the same comparison as benchmark rows (collector off while timing, as every row).

Model: a 3,852-parameter MLP (Sequential of Linear/ReLU, 7 modules) as a NytoModule subclass
in each library. Every library's runs are interleaved in small batches so that load on a shared
machine hits all alike; each batch includes the garbage collections its operations cause
(nytorch's reference cycles). Report medians; "best" (the fastest batch) shows the cost on an
idle machine.
"""

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)


def make(base):
    class MLP(base):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 40), nn.ReLU(),
                                     nn.Linear(40, 4))

        def forward(self, x):
            return self.net(x)

    return MLP()


def load_facade_at(rev):
    """The NytoModule class of the library at git revision ``rev``.

    The package at ``rev`` is exported to a temporary folder under another name
    (``nytorch_func_at_<rev>``) and imported from there, so the facade of that revision runs
    on the core of that revision, next to the current one in the same process.
    """
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", rev, "nytorch_func"], cwd=root, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    name = "nytorch_func_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    (tmp / "nytorch_func").rename(tmp / name)
    sys.path.insert(0, str(tmp))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp))
    return module.NytoModule


def _batch(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(repeat=41, n=50, before=None):
    import nytorch
    import nytorch_func as nf

    bases = {"nytorch 1.1.0": nytorch.NytoModule}
    if before:
        bases[f"nytorch_func@{before}"] = load_facade_at(before)
    bases["nytorch_func"] = nf.NytoModule
    ops = {"a + b": lambda a, b: a + b, "0.5*a + 0.5*b": lambda a, b: 0.5 * a + 0.5 * b}
    pairs = {}
    for label, base in bases.items():
        a = make(base)
        pairs[label] = (a, a.randn())
    n_params = sum(p.numel() for p in pairs["nytorch_func"][0].parameters())
    runs = {label: {op: [] for op in ops} for label in pairs}
    for op, fn in ops.items():
        for label, (a, b) in pairs.items():
            _batch(lambda: fn(a, b), 50)  # warm-up
    for _ in range(repeat):
        for op, fn in ops.items():
            for label, (a, b) in pairs.items():
                runs[label][op].append(_batch(lambda: fn(a, b), n))
    print(f"MLP with {n_params} parameters, 1 thread, {repeat} interleaved batches of {n} "
          "(microseconds per expression: median / best; speed-up vs nytorch 1.1.0)")
    for op in ops:
        ref = sorted(runs["nytorch 1.1.0"][op])
        mo, bo = ref[len(ref) // 2], ref[0]
        for label in pairs:
            v = sorted(runs[label][op])
            m, b = v[len(v) // 2], v[0]
            print(f"{op:>14} {label:>24}: {m * 1e6:7.1f} / {b * 1e6:7.1f}"
                  + ("" if label == "nytorch 1.1.0" else
                     f"   {mo / m:4.1f}x median, {bo / b:4.1f}x best"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="git revision of the facade to time as well")
    parser.add_argument("--repeat", type=int, default=41)
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    main(args.repeat, args.n, args.before)
