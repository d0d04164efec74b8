"""Task-vector merges: ``task_arithmetic``, ``ties``, ``dare``, ``breadcrumbs``.

Each is :class:`~._gta.TaskMerge` with one sparsifier and mergekit 0.1.5's defaults. Floating
``"mean"`` buffers get the models' plain average (a task vector says nothing about running
statistics; ``policy="reset"`` and re-estimating them is usually better).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from nytorch_func import Particle, SchemaError

from . import _sparsify
from ._assemble import assemble, refuse_complex
from ._gta import TaskMerge
from ._inputs import ArgumentTypeError, Call, coefficient, compute_dtype, read_call, scalar

__all__ = ["task_arithmetic", "ties", "dare", "breadcrumbs"]


def _models_mean(spec: Any, base: torch.Tensor | None, models: torch.Tensor) -> torch.Tensor:
    return models.to(compute_dtype(spec.dtype)).mean(0)


def _run(call: Call, weights: Any, *, consensus: bool, normalize: Any, scale: Any,
         select: Any = None, sparsify: Any = None) -> Particle:
    if not isinstance(normalize, bool):
        raise ArgumentTypeError(f"{call.what}: normalize must be True or False, got "
                                f"{normalize!r}")
    if consensus:
        refuse_complex(call, "electing a sign per entry needs real values")
    w = coefficient(call.what, "weights", weights, call.m, default=1.0)
    kernel = TaskMerge(w, consensus, normalize, scalar(call.what, "scale", scale),
                       select=select, sparsify=sparsify)
    return assemble(call, None, _models_mean, grouped=kernel)


def _density(what: str, density: Any, m: int) -> Any:
    if density is None:
        raise ArgumentTypeError(f"{what}: density is required (keyword): the fraction of each "
                                "task vector to keep, in (0, 1], one value or one per model")
    return coefficient(what, "density", density, m, low=0.0, high=1.0, low_open=True,
                       as_values=True)


def _consensus(what: str, consensus: Any) -> bool:
    if not isinstance(consensus, bool):
        raise ArgumentTypeError(f"{what}: consensus must be True or False, got {consensus!r}")
    return consensus


def task_arithmetic(base: Particle, models: Any, weights: Any = None, *, scale: Any = 1.0,
                    normalize: bool = False) -> Particle:
    """``base + scale * sum_i weights[i] * (models[i] - base)`` over the operational parameters.

    ``models`` is a population (``nf.stack``, ``nf.population``) or a list of particles of
    ``base``'s species; ``weights`` is None (1 each), one number, or one per model (a sequence
    or a 1-D tensor; gradients flow through a tensor). With ``normalize`` the sum is divided
    by the sum of the weights (mergekit's ``normalize``; an absolute sum below 1e-8 counts as
    1). Non-operational parameters come from ``base``; buffers follow their policy
    (``"mean"``: the models' average). Runs under ``torch.func.vmap`` over weights and
    ``scale`` and under ``torch.compile``.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> base = nf.from_module(torch.nn.Linear(3, 2))
    >>> a, b = base + 1.0, base - 0.5
    >>> ta = merge.task_arithmetic(base, [a, b], [1.0, 2.0])
    >>> torch.allclose(ta["weight"], base["weight"] + 1.0 * 1.0 + 2.0 * -0.5)
    True
    >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])   # three candidates at once
    >>> pop = torch.func.vmap(lambda w: merge.task_arithmetic(base, [a, b], w))(W)
    >>> pop.batch_shape, torch.allclose(pop[1]["bias"], b["bias"])
    (torch.Size([3]), True)
    """
    call = read_call("task_arithmetic", base, models, with_base=True, min_models=1)
    return _run(call, weights, consensus=False, normalize=normalize, scale=scale)


def ties(base: Particle, models: Any, weights: Any = None, *, density: Any,
         scale: Any = 1.0, normalize: bool = True) -> Particle:
    """TIES merging (Yadav et al. 2023) with mergekit 0.1.5's semantics, per tensor.

    Each task vector ``models[i] - base`` keeps its ``max(1, int(density[i] * numel))``
    largest magnitudes (exactly that many: among equal magnitudes the lower index is kept), is
    multiplied by ``weights[i]``, and a sign is elected per entry from the sum of these
    weighted vectors (``>= 0`` is ``+``). The entries that agree with it are summed, divided by
    the sum of the agreeing models' weights when ``normalize`` (0 becomes 1), multiplied by
    ``scale`` and added to the base.

    ``weights`` and ``density`` are one number or one per model (``density`` in (0, 1]); both
    may be tensors batched by ``torch.func.vmap``, so a population of candidate merges is one
    call. With numbers, each tensor costs one ``torch.kthvalue`` per density (no sort); with a
    traced density each tensor is sorted once, whatever the number of candidates.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> base = nf.from_module(torch.nn.Linear(4, 4)).detach()
    >>> models = nf.population(base, 3, generator=torch.Generator().manual_seed(0))
    >>> merged = merge.ties(base, models, [1.0, 0.5, 0.5], density=0.3)
    >>> delta = (merged["weight"] - base["weight"]).flatten()
    >>> int((delta != 0).sum()) <= 3 * 4    # at most 3 models x int(0.3 * 16) entries each
    True
    >>> W, D = torch.rand(5, 3), torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])
    >>> pop = torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))(W, D)
    >>> torch.allclose(pop[2]["weight"], merge.ties(base, models, W[2], density=0.6)["weight"])
    True
    """
    call = read_call("ties", base, models, with_base=True, min_models=1)
    d = _density("ties", density, call.m)
    return _run(call, weights, select=functools.partial(_sparsify.magnitude, density=d),
                consensus=True, normalize=normalize, scale=scale)


def dare(base: Particle, models: Any, weights: Any = None, *, density: Any,
         consensus: bool = False, rescale: "bool | str" = True, scale: Any = 1.0,
         normalize: bool = False, generator: torch.Generator | None = None) -> Particle:
    """DARE (Yu et al. 2023): drop each task-vector entry with probability ``1 - density``.

    ``rescale=True`` scales each kept task vector so its L1 norm equals the full one's
    (mergekit 0.1.5's rule; norms below 1e-7 are left alone), ``rescale="inverse"`` divides by
    ``density`` (the DARE paper), ``False`` keeps the dropped vector as is. ``consensus=True``
    is mergekit's ``dare_ties`` (TIES's sign election after dropping), ``False`` its
    ``dare_linear``. The drop mask comes from ``torch.rand`` in float32, one draw per model and
    tensor in order (the stream mergekit's ``torch.bernoulli`` uses), from ``generator`` if
    given. Inside ``torch.func.vmap`` pass ``randomness="same"`` (every candidate sees the same
    uniform numbers: candidates differ only by their weights and densities) or
    ``"different"``.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> base = nf.from_module(torch.nn.Linear(8, 8)).detach()
    >>> models = nf.population(base, 2, generator=torch.Generator().manual_seed(0))
    >>> g = torch.Generator().manual_seed(1)
    >>> merged = merge.dare(base, models, density=0.5, generator=g)
    >>> same = merge.dare(base, models, density=0.5, generator=torch.Generator().manual_seed(1))
    >>> torch.equal(merged["weight"], same["weight"])
    True
    >>> pop = torch.func.vmap(lambda d: merge.dare(base, models, density=d),
    ...                       randomness="same")(torch.tensor([0.3, 0.9]))
    >>> pop.batch_shape
    torch.Size([2])
    """
    what = "dare"
    call = read_call(what, base, models, with_base=True, min_models=1)
    if isinstance(rescale, str) and rescale not in ("l1", "inverse"):
        raise SchemaError(f"{what}: rescale must be True or 'l1' (mergekit's L1 rule), "
                          f"'inverse' (1 / density) or False, got {rescale!r}")
    if not isinstance(rescale, (bool, str)):
        raise ArgumentTypeError(f"{what}: rescale must be True or 'l1' (mergekit's L1 rule), "
                                f"'inverse' (1 / density) or False, got {rescale!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"{what}: generator must be a torch.Generator, got "
                                f"{type(generator).__name__}")
    d = _density(what, density, call.m)
    sparsify = functools.partial(_sparsify.random, density=d, rescale=rescale,
                                 generator=generator)
    return _run(call, weights, sparsify=sparsify, consensus=_consensus(what, consensus),
                normalize=normalize, scale=scale)


def breadcrumbs(base: Particle, models: Any, weights: Any = None, *, density: Any, gamma: Any,
                consensus: bool = False, scale: Any = 1.0, normalize: bool = False) -> Particle:
    """Model Breadcrumbs (Davari & Belilovsky 2023) with mergekit 0.1.5's semantics.

    Each task vector drops its ``int(gamma * numel)`` largest magnitudes (outliers) and keeps
    the next ``int(density * numel)``; where both do not fit, the smallest
    ``int(density * numel)`` are kept (mergekit's rule; ``density=1`` keeps everything).
    Then as :func:`task_arithmetic`, or :func:`ties`'s sign election with ``consensus=True``
    (mergekit's ``breadcrumbs_ties``). ``density`` in (0, 1] and ``gamma`` in [0, 1] are one
    value or one per model, and may be batched by ``vmap``.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> base = nf.from_module(torch.nn.Linear(10, 1, bias=False)).detach()
    >>> big = base + base.randn(generator=torch.Generator().manual_seed(0))
    >>> merged = merge.breadcrumbs(base, [big], density=0.5, gamma=0.2)
    >>> int(((merged["weight"] - base["weight"]).abs() > 1e-7).sum())   # 5 kept of 10
    5
    """
    what = "breadcrumbs"
    call = read_call(what, base, models, with_base=True, min_models=1)
    d = _density(what, density, call.m)
    if gamma is None:
        raise ArgumentTypeError(f"{what}: gamma is required (keyword): the fraction of largest "
                                "magnitudes to drop, in [0, 1]")
    g = coefficient(what, "gamma", gamma, call.m, low=0.0, high=1.0, as_values=True)
    select = functools.partial(_sparsify.outliers, density=d, gamma=g)
    return _run(call, weights, select=select, consensus=_consensus(what, consensus),
                normalize=normalize, scale=scale)
