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
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                     nn.Linear(32, 4))

        def forward(self, x):
            return self.net(x)

    return MLP()


def timeit(fn, n=2000, repeat=5):
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main():
    import nytorch
    import nytorch_func as nf

    results = {}
    for label, base in (("nytorch 1.1.0", nytorch.NytoModule), ("nytorch_func", nf.NytoModule)):
        a = make(base)
        b = a.randn()
        n_params = sum(p.numel() for p in a.parameters())
        results[label] = {
            "a + b": timeit(lambda: a + b),
            "0.5*a + 0.5*b": timeit(lambda: 0.5 * a + 0.5 * b, n=1000),
        }
    print(f"MLP with {n_params} parameters, 1 thread, best of 5 (microseconds per op)")
    for op in results["nytorch_func"]:
        old, new = results["nytorch 1.1.0"][op], results["nytorch_func"][op]
        print(f"{op:>16}: nytorch {old * 1e6:8.1f}  nytorch_func {new * 1e6:8.1f}  "
              f"speed-up {old / new:5.1f}x")


if __name__ == "__main__":
    main()
