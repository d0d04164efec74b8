"""``model_stock``: interpolate between the base and the models' average by their geometry."""

from __future__ import annotations

from typing import Any

import torch

from nytorch_func import Particle

from ._assemble import assemble, refuse_complex
from ._inputs import ArgumentTypeError, compute_dtype, read_call

__all__ = ["model_stock"]


def _stock_tensor(base: torch.Tensor, models: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    m = models.shape[0]
    rows = base.shape[0] if filter_wise and base.dim() >= 2 else 1
    w0 = base.reshape(rows, -1)
    offsets = models.reshape(m, rows, -1) - w0  # (m, rows, cols)
    norms = torch.linalg.vector_norm(offsets, dim=-1)  # (m, rows)
    i, j = torch.triu_indices(m, m, offset=1, device=base.device)
    dots = (offsets[i] * offsets[j]).sum(-1)  # (pairs, rows)
    cos = (dots / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1).mean(0)  # (rows,)
    cos = cos.unsqueeze(-1)
    denominator = 1 + (m - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (m * cos) / safe)
    average = models.reshape(m, rows, -1).mean(0)
    return (t * average + (1 - t) * w0).reshape(base.shape)


def model_stock(base: Particle, models: Any, *, filter_wise: bool = False) -> Particle:
    """Model Stock (Jang et al. 2024) with mergekit 0.1.5's semantics, per tensor.

    With ``m >= 2`` models, ``cos`` is the average cosine between the task vectors
    ``models[i] - base`` over all pairs (each clamped to [-1, 1], the product of norms to at
    least 1e-6), ``t = m cos / (1 + (m - 1) cos)`` (0 where the denominator is below 1e-6 in
    magnitude) and the result is ``t * mean(models) + (1 - t) * base``. ``filter_wise`` does
    this per output filter (first dimension) of each tensor of two or more dimensions instead
    of per tensor. Computed in float32 (float64 for float64 leaves). ``"mean"`` buffers get
    the models' average.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> base = nf.from_module(torch.nn.Linear(6, 6)).detach()
    >>> models = nf.population(base, 3, generator=torch.Generator().manual_seed(0))
    >>> merged = merge.model_stock(base, models)
    >>> merged.batch_shape
    torch.Size([])
    >>> merge.model_stock(base, [models[0]])
    Traceback (most recent call last):
    ...
    nytorch_func._errors.SchemaError: model_stock: needs at least two models, got 1
    """
    what = "model_stock"
    call = read_call(what, base, models, with_base=True, min_models=2)
    if not isinstance(filter_wise, bool):
        raise ArgumentTypeError(f"{what}: filter_wise must be True or False, got "
                                f"{filter_wise!r}")
    refuse_complex(call, "angles between task vectors need real values")

    def kernel(spec: Any, b: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(spec.dtype)
        return _stock_tensor(b.to(dtype), ms.to(dtype), filter_wise).to(spec.dtype)

    def buffer_mean(spec: Any, b: Any, ms: torch.Tensor) -> torch.Tensor:
        return ms.to(compute_dtype(spec.dtype)).mean(0)

    return assemble(call, kernel, buffer_mean)
