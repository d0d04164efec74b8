"""nytorch_func.merge side by side with mergekit 0.1.5: same tensors, same results, timings.

1. Semantics: every method on the same models (an MLP, a ConvNet, a model with a 0-dim
   parameter; float32, float16, bfloat16), per-model weights and densities, compared entry by
   entry with mergekit's ``merge_state_dicts``. DARE draws are compared with the same seed.
2. One TIES merge of 8 models of 1.06 M parameters: mergekit, nytorch_func, and a plain-torch
   ``kthvalue`` TIES (the ``merge-ties`` bench row's baseline).
3. Merge search: candidate merges per second, mergekit the way mergekit-evolve uses it (read
   the input checkpoints, merge, write the result, reload it), against one ``vmap`` over 64
   candidates (the ``merge-search`` bench row with mergekit itself as the baseline).

mergekit pulls transformers and is not a dependency of nytorch_func; run this in a separate
environment:

    python3 -m venv /tmp/mk && /tmp/mk/bin/pip install torch==2.13.0
    /tmp/mk/bin/pip install mergekit==0.1.5 optree safetensors
    PYTHONPATH=. /tmp/mk/bin/python examples/mergekit_compare.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import merge
from nytorch_func.bench._merge_cases import (SEARCH_CANDIDATES, SEARCH_MODELS, SEARCH_SIZES,
                                             TIES_SIZES, _as_dict, _family, _mlp,
                                             kthvalue_ties)

torch.set_num_threads(1)

from mergekit.merge_methods.api import merge_state_dicts  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


class Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(7, 5)
        self.gain = nn.Parameter(torch.tensor(0.8))


def conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 6))


MODELS = {"mlp": lambda: nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)),
          "conv": conv, "gain": Gain}


def family(name, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = nf.from_module(MODELS[name]().to(dtype)).detach()
    models = [nf.Particle(base.schema, tuple(
        t + 0.1 * torch.randn(t.shape, generator=g).to(dtype) for t in base.leaves), None)
        for _ in range(n)]
    return base, models


def sd(p):
    return {k: t.clone() for k, t in zip(p.schema.leaf_keys, p.leaves)}


W, D, G = [0.9, 0.4, 1.3], [0.3, 0.55, 0.8], [0.05, 0.1, 0.2]
CASES = {
    "linear": ("linear", None, {"weight": W, "normalize": True},
               lambda b, ms: merge.linear(ms, W)),
    "task_arithmetic": ("task_arithmetic", 0, {"weight": W, "lambda": 0.7},
                        lambda b, ms: merge.task_arithmetic(b, ms, W, scale=0.7)),
    "ties": ("ties", 0, {"weight": W, "density": D, "lambda": 1.2},
             lambda b, ms: merge.ties(b, ms, W, density=D, scale=1.2)),
    "ties normalize=False": ("ties", 0, {"weight": W, "density": 0.4, "normalize": False},
                             lambda b, ms: merge.ties(b, ms, W, density=0.4, normalize=False)),
    "dare_linear": ("dare_linear", 0, {"weight": W, "density": D},
                    lambda b, ms: merge.dare(b, ms, W, density=D)),
    "dare_ties": ("dare_ties", 0, {"weight": W, "density": D},
                  lambda b, ms: merge.dare(b, ms, W, density=D, consensus=True)),
    "breadcrumbs": ("breadcrumbs", 0, {"weight": W, "density": D, "gamma": G},
                    lambda b, ms: merge.breadcrumbs(b, ms, W, density=D, gamma=G)),
    "breadcrumbs_ties": ("breadcrumbs_ties", 0, {"weight": W, "density": D, "gamma": G},
                         lambda b, ms: merge.breadcrumbs(b, ms, W, density=D, gamma=G,
                                                         consensus=True)),
    "slerp": ("slerp", 0, {"t": 0.3}, lambda b, ms: merge.slerp(b, ms[0], 0.3)),
    "model_stock": ("model_stock", 0, {}, lambda b, ms: merge.model_stock(b, ms)),
    "model_stock filter_wise": ("model_stock", 0, {"filter_wise": True},
                                lambda b, ms: merge.model_stock(b, ms, filter_wise=True)),
}


def semantics() -> list[str]:
    lines = ["| method | model | dtype | max abs diff | entries differing (> 1e-5 rel.) |",
             "|---|---|---|---|---|"]
    for label, (method, base_index, params, ours_fn) in CASES.items():
        for name in MODELS:
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                base, models = family(name, 3, dtype)
                if method == "slerp":
                    models = models[:1]
                inputs = [sd(base)] + [sd(m) for m in models] if base_index == 0 else \
                    [sd(m) for m in models]
                torch.manual_seed(7)
                theirs = merge_state_dicts(inputs, method, parameters=params, base=base_index)
                torch.manual_seed(7)
                ours = sd(ours_fn(base, models))
                worst, differing, total = 0.0, 0, 0
                for key, t in ours.items():
                    a, b = t.double(), theirs[key].double()
                    diff = (a - b).abs()
                    worst = max(worst, float(diff.max()))
                    tol = 1e-5 * (1 + b.abs()) if dtype == torch.float32 else \
                        2 * torch.finfo(dtype).eps * (1 + b.abs())
                    differing += int((diff > tol).sum())
                    total += diff.numel()
                lines.append(f"| {label} | {name} | {str(dtype)[6:]} | {worst:.2e} | "
                             f"{differing} / {total} |")
    return lines


def interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def one_ties() -> list[str]:
    base, models = _family(TIES_SIZES, 8, seed=0)
    weights = torch.rand(8, generator=torch.Generator().manual_seed(1)) + 0.5
    inputs = [_as_dict(base)] + [_as_dict(m) for m in nf.unstack(models)]
    params = {"weight": weights.tolist(), "density": 0.5}
    b, s = _as_dict(base), _as_dict(models)
    t = interleaved({
        "mergekit 0.1.5": lambda: merge_state_dicts(inputs, "ties", parameters=params, base=0),
        "nytorch_func merge.ties": lambda: merge.ties(base, models, weights, density=0.5),
        "kthvalue TIES (bench baseline)": lambda: kthvalue_ties(b, s, weights, 0.5),
    }, repeats=7)
    ours = t["nytorch_func merge.ties"]
    return [f"| {k} | {v * 1e3:.0f} ms | {v / ours:.2f}x |" for k, v in t.items()]


def search() -> list[str]:
    m, c = SEARCH_MODELS, SEARCH_CANDIDATES
    base, models = _family(SEARCH_SIZES, m, seed=0)
    g = torch.Generator().manual_seed(2)
    weights = torch.rand(c, m, generator=g) + 0.25
    densities = torch.rand(c, m, generator=g) * 0.8 + 0.1
    folder = tempfile.mkdtemp(prefix="mk-compare-")
    paths = [os.path.join(folder, f"model{i}.safetensors") for i in range(m + 1)]
    for path, p in zip(paths, [base, *nf.unstack(models)]):
        save_file({k: t.contiguous() for k, t in _as_dict(p).items()}, path)
    out = os.path.join(folder, "candidate.safetensors")
    module = _mlp(SEARCH_SIZES)

    def mergekit_loop(n=16):
        for i in range(n):
            inputs = [load_file(path) for path in paths]
            merged = merge_state_dicts(inputs, "ties", base=0, parameters={
                "weight": weights[i].tolist(), "density": densities[i].tolist()})
            save_file({k: v.contiguous() for k, v in merged.items()}, out)
            module.load_state_dict(load_file(out))

    fn = torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))
    t = interleaved({"mergekit": mergekit_loop, "ours": lambda: fn(weights, densities)},
                    repeats=9)
    mk, ours = 16 / t["mergekit"], c / t["ours"]
    return [f"| mergekit 0.1.5: read, merge, write, reload | {mk:.0f} |",
            f"| nytorch_func: vmap(merge.ties), 64 candidates | {ours:.0f} |",
            f"| speedup | {ours / mk:.1f}x |"]


if __name__ == "__main__":
    import mergekit

    print(f"mergekit {getattr(mergekit, '__version__', '0.1.5')}, torch {torch.__version__}, "
          f"1 thread\n")
    print("\n".join(semantics()))
    print("\n| TIES, 8 x 1.06M params, density 0.5 | median | vs nytorch_func |\n|---|---|---|")
    print("\n".join(one_ties()))
    print("\n| merge search (MLP 64-64-10, 4 models) | candidates/s |\n|---|---|")
    print("\n".join(search()))
