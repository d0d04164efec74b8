"""``linear``: the weighted average of models (a model soup), as mergekit 0.1.5's ``linear``."""

from __future__ import annotations

from typing import Any

import torch

import nytorch_func as nf
from nytorch_func import Particle

from ._assemble import assemble
from ._gta import weights_as
from ._inputs import ArgumentTypeError, coefficient, compute_dtype, concrete, read_call

__all__ = ["linear"]


def linear(models: Any, weights: Any = None, *, normalize: bool = True) -> Particle:
    """``sum_i weights[i] * models[i]``, divided by ``sum(weights)`` when ``normalize``.

    ``models`` is a population or a list of particles of one species; ``weights`` is None
    (uniform), one number, or one per model (a tensor may be batched by ``torch.func.vmap``,
    and gradients flow through it). Parameters are averaged in float32 (float64 for float64
    leaves) and cast back. Non-operational parameters and ``"keep"`` buffers come from model
    0; floating ``"mean"`` buffers are averaged with the normalised weights, like the
    parameters of a normalised merge. Weights that sum to zero are refused when they can be
    read (mergekit divides by zero); inside ``vmap`` or ``compile`` they give inf or NaN.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> a = nf.from_module(torch.nn.Linear(3, 2))
    >>> b = a.randn()
    >>> soup = merge.linear([a, b], [3.0, 1.0])
    >>> torch.allclose(soup["weight"], 0.75 * a["weight"] + 0.25 * b["weight"])
    True
    >>> merge.linear([a, b], [1.0, -1.0])
    Traceback (most recent call last):
    ...
    nytorch_func._errors.SchemaError: linear: weights sum to zero, so normalize=True would ...
    """
    call = read_call("linear", None, models, with_base=False, min_models=1)
    if not isinstance(normalize, bool):
        raise ArgumentTypeError(f"linear: normalize must be True or False, got {normalize!r}")
    w = coefficient("linear", "weights", weights, call.m, default=1.0)
    if normalize and (isinstance(w, list) or concrete(w)):
        total = sum(w) if isinstance(w, list) else float(w.detach().sum())
        if total == 0:
            raise nf.SchemaError("linear: weights sum to zero, so normalize=True would divide "
                                 "by zero; pass normalize=False for a plain weighted sum")
    cache: dict = {}

    def combine(spec: Any, models_leaf: torch.Tensor, norm: bool) -> torch.Tensor:
        dtype = compute_dtype(spec.dtype)
        wt = weights_as(w, dtype, models_leaf.device, cache)
        out = torch.tensordot(wt.to(dtype), models_leaf.to(dtype), dims=1)
        return out / wt.sum() if norm else out

    def kernel(spec: Any, base: Any, models_leaf: torch.Tensor) -> torch.Tensor:
        return combine(spec, models_leaf, normalize).to(spec.dtype)

    def buffer_mean(spec: Any, base: Any, models_leaf: torch.Tensor) -> torch.Tensor:
        return combine(spec, models_leaf, True)

    return assemble(call, kernel, buffer_mean)
