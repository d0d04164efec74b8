"""Time one PSO step and one SNES generation (64 members, MLP 64-32-10), particles vs raw tensors.

Run with `python examples/evolution_bench.py`. Each pair is timed interleaved, median of rounds.
"""

import statistics
import time

import torch

from nytorch_func import evolution as ev

torch.set_num_threads(1)


def main(rounds: int = 15, inner: int = 20) -> None:
    cases = ev.bench_cases(n=64, hidden=32, batch=256)
    names = sorted({k.split("/")[0] for k in cases})
    print(f"{'case':<18}{'nytorch_func':>14}{'raw':>12}{'ratio':>8}")
    for name in names:
        ours, raw = cases[f"{name}/nytorch_func"], cases[f"{name}/raw"]
        for fn in (ours, raw):
            for _ in range(5):
                fn()
        t = {"ours": [], "raw": []}
        for _ in range(rounds):
            for label, fn in (("ours", ours), ("raw", raw)):
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                t[label].append((time.perf_counter() - start) / inner)
        a, b = statistics.median(t["ours"]), statistics.median(t["raw"])
        print(f"{name:<18}{a * 1e6:>11.0f} us{b * 1e6:>9.0f} us{a / b:>7.2f}x")


if __name__ == "__main__":
    main()
