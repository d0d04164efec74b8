"""Facade benchmark: a particle operation between two NytoModules vs nytorch 1.1.0's.

Run: PYTHONPATH=. python benchmarks/bench_facade.py   (needs nytorch==1.1.0, the "bench" extra)
Model: a ~4K-parameter MLP as a NytoModule subclass in both libraries.
"""

import time

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


def _once(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(repeat=7, n=500):
    import nytorch
    import nytorch_func as nf

    ops = {"a + b": lambda a, b: a + b, "0.5*a + 0.5*b": lambda a, b: 0.5 * a + 0.5 * b}
    pairs = {}
    for label, base in (("nytorch 1.1.0", nytorch.NytoModule), ("nytorch_func", nf.NytoModule)):
        a = make(base)
        pairs[label] = (a, a.randn())
    n_params = sum(p.numel() for p in pairs["nytorch_func"][0].parameters())
    runs = {label: {op: [] for op in ops} for label in pairs}
    # interleave the two libraries so that load on a shared machine hits both alike; each run
    # includes the garbage collections its operations cause (nytorch's reference cycles)
    for _ in range(repeat):
        for op, fn in ops.items():
            for label, (a, b) in pairs.items():
                _once(lambda: fn(a, b), 20)
                runs[label][op].append(_once(lambda: fn(a, b), n))
    print(f"MLP with {n_params} parameters, 1 thread, {repeat} interleaved runs of {n} "
          "(microseconds per expression: median / best)")
    for op in ops:
        old, new = sorted(runs["nytorch 1.1.0"][op]), sorted(runs["nytorch_func"][op])
        mo, mn = old[len(old) // 2], new[len(new) // 2]
        print(f"{op:>16}: nytorch {mo * 1e6:7.1f} / {old[0] * 1e6:7.1f}   nytorch_func "
              f"{mn * 1e6:7.1f} / {new[0] * 1e6:7.1f}   speed-up {mo / mn:4.1f}x median, "
              f"{old[0] / new[0]:4.1f}x best")


if __name__ == "__main__":
    main()
