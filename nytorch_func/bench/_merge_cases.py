"""Benchmark rows for ``nytorch_func.merge`` (issue "Model merging on particles").

- ``merge-ties``: one TIES merge of 8 models of about 1 M parameters (MLP 512-1024-512-10),
  against the same TIES written per tensor on stacked tensors with ``torch.kthvalue`` (the
  fastest plain-torch version: a selection, no sort). Target <= 1.5x.
- ``merge-search``: candidate merges per second in a merge search. Ours: one
  ``vmap(merge.ties)`` call makes a population of 64 candidates (per-candidate weights and
  densities) in memory. Baseline, per candidate, what mergekit-evolve does around each merge:
  read the input checkpoints, merge with mergekit 0.1.5's TIES algorithm (per tensor and model,
  an ``argsort`` of the magnitudes, as its ``sparsify.magnitude``), write the result with
  safetensors and reload it into a module. Target >= 20x. Evaluation is left out of both (it
  costs the same per candidate either way). mergekit itself is not a dependency: its own
  figures come from ``examples/mergekit_compare.py`` in a separate environment.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

import nytorch_func as nf

from ._harness import Case, Side, Target

__all__ = ["merge_rows", "kthvalue_ties", "mergekit_style_ties", "SEARCH_SIZES",
           "TIES_SIZES"]

TIES_SIZES = (512, 1024, 512, 10)  # 1.06 M parameters
SEARCH_SIZES = (64, 64, 10)  # the digits MLP of examples/evolve_merge.py
SEARCH_MODELS, SEARCH_CANDIDATES = 4, 64


def kthvalue_ties(base: dict[str, torch.Tensor], stacked: dict[str, torch.Tensor],
                  weights: torch.Tensor, density: float) -> dict[str, torch.Tensor]:
    """TIES per tensor on stacked task vectors: ``torch.kthvalue`` threshold per model, elected
    sign, agreeing entries averaged by their weights (mergekit's semantics; ties at the
    threshold all kept).

    >>> import torch
    >>> base = {"w": torch.zeros(4)}
    >>> stacked = {"w": torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, -0.5, 2.0, 1.5]])}
    >>> kthvalue_ties(base, stacked, torch.ones(2), density=0.5)["w"]
    tensor([ 0.0000, -2.0000,  2.0000,  2.2500])
    """
    out = {}
    w = weights.reshape(-1, 1)
    for key, b in base.items():
        delta = (stacked[key] - b).reshape(len(weights), -1)
        n = delta.shape[1]
        k = max(1, int(density * n))
        mag = delta.abs()
        threshold = torch.kthvalue(mag, n - k + 1, dim=1, keepdim=True).values
        weighted = delta * (mag >= threshold) * w
        majority = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
        agree = weighted.sign() == majority
        mixed = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
        out[key] = b + (mixed / divisor).reshape(b.shape)
    return out


def mergekit_style_ties(base: dict[str, torch.Tensor], models: list[dict[str, torch.Tensor]],
                        weights: list[float], densities: list[float]) -> dict[str, torch.Tensor]:
    """mergekit 0.1.5's TIES algorithm on state dicts: per tensor, each model's task vector
    trimmed with an ``argsort`` of its magnitudes (``sparsify.magnitude``), then weighted,
    elected and averaged as its ``GeneralizedTaskArithmeticMerge``.

    >>> import torch
    >>> base = {"w": torch.zeros(4)}
    >>> models = [{"w": torch.tensor([1.0, -2.0, 0.5, 3.0])},
    ...           {"w": torch.tensor([-1.0, -0.5, 2.0, 1.5])}]
    >>> mergekit_style_ties(base, models, [1.0, 1.0], [0.5, 0.5])["w"]
    tensor([ 0.0000, -2.0000,  2.0000,  2.2500])
    """
    out = {}
    for key, b in base.items():
        deltas = b.new_empty((len(models), *b.shape))
        for i, model in enumerate(models):
            delta = model[key] - b
            k = max(1, int(densities[i] * delta.numel()))
            mask = torch.zeros(delta.numel(), dtype=delta.dtype)
            mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
            deltas[i] = delta * mask.reshape(delta.shape)
        w = torch.tensor(weights, dtype=deltas.dtype).reshape(-1, *([1] * b.dim()))
        deltas = deltas * w
        majority = (deltas.sum(0) >= 0).to(deltas.dtype) * 2 - 1
        mask = deltas.sign() == majority
        mixed = (deltas * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
        out[key] = (b + mixed / divisor).contiguous()
    return out


def _mlp(sizes: tuple[int, ...]) -> torch.nn.Module:
    from ._cases import mlp

    return mlp(sizes)


def _family(sizes: tuple[int, ...], n: int, seed: int) -> tuple[nf.Particle, nf.Particle]:
    """A base and ``n`` fine-tuned-like models (the base plus small task vectors)."""
    g = torch.Generator().manual_seed(seed)
    base = nf.from_module(_mlp(sizes)).detach()
    tasks = nf.population(base, n, generator=g).detach()
    return base, tasks * 0.05 + base


def _as_dict(p: nf.Particle) -> dict[str, torch.Tensor]:
    return dict(zip(p.schema.leaf_keys, p.leaves))


def ties_row() -> Case:
    base, models = _family(TIES_SIZES, 8, seed=0)
    weights = torch.rand(8, generator=torch.Generator().manual_seed(1)) + 0.5
    from nytorch_func import merge

    def ours() -> Callable[[], Any]:
        return lambda: merge.ties(base, models, weights, density=0.5)

    def raw() -> Callable[[], Any]:
        b, s = _as_dict(base), _as_dict(models)
        return lambda: kthvalue_ties(b, s, weights, 0.5)

    return Case("merge-ties", "merge", "TIES of 8 x 1.06M-param models, density 0.5",
                Side("merge.ties", ours), Side("per-tensor kthvalue TIES, stacked", raw),
                Target("max_ratio", 1.5))


def search_row() -> Case:
    m, c = SEARCH_MODELS, SEARCH_CANDIDATES
    base, models = _family(SEARCH_SIZES, m, seed=0)
    g = torch.Generator().manual_seed(2)
    weights = torch.rand(c, m, generator=g) + 0.25
    densities = torch.rand(c, m, generator=g) * 0.8 + 0.1
    from nytorch_func import merge

    def ours() -> Callable[[], Any]:
        search = torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))
        return lambda: search(weights, densities)

    folder = tempfile.mkdtemp(prefix="nf-bench-merge-")
    atexit.register(shutil.rmtree, folder, True)

    def loop() -> Callable[[], Any]:
        from safetensors.torch import load_file, save_file

        inputs = [os.path.join(folder, f"model{i}.safetensors") for i in range(m + 1)]
        for path, p in zip(inputs, [base, *nf.unstack(models)]):
            save_file({k: t.contiguous() for k, t in _as_dict(p).items()}, path)
        out = os.path.join(folder, "candidate.safetensors")
        module = _mlp(SEARCH_SIZES)
        box = [0]

        def one() -> Any:
            i = box[0] = (box[0] + 1) % c
            loaded = [load_file(path) for path in inputs]  # mergekit reads its inputs lazily
            merged = mergekit_style_ties(loaded[0], loaded[1:], weights[i].tolist(),
                                         densities[i].tolist())
            save_file(merged, out)
            return module.load_state_dict(load_file(out))

        return one

    return Case("merge-search", "merge", "merge search: TIES candidates/s, MLP 64-64-10, 4 models",
                Side("vmap(merge.ties), 64 candidates in memory", ours, per_call=c),
                Side("per candidate: read, mergekit-style TIES, write, reload", loop),
                Target("min_speedup", 20))


def merge_rows() -> tuple[list[Case], dict[str, str]]:
    """The two merge rows (``python -m nytorch_func.bench --only merge``)."""
    with torch.no_grad():
        return [ties_row(), search_row()], {}
