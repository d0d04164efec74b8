"""``slerp``: spherical interpolation of two models, tensor by tensor (mergekit 0.1.5)."""

from __future__ import annotations

from typing import Any

import torch

import nytorch_func as nf
from nytorch_func import Particle

from ._assemble import assemble, refuse_complex
from ._inputs import ArgumentTypeError, compute_dtype, read_call, scalar

__all__ = ["slerp"]

_DOT_THRESHOLD = 0.9995
_EPS = 1e-8


def _slerp_tensor(t: "float | torch.Tensor", a: torch.Tensor, b: torch.Tensor,
                  dtype: torch.dtype) -> torch.Tensor:
    x = a.reshape(-1).to(dtype)
    y = b.reshape(-1).to(dtype)
    t = torch.as_tensor(t, dtype=dtype, device=x.device) if isinstance(t, float) else t.to(dtype)
    na = torch.linalg.vector_norm(x)
    nb = torch.linalg.vector_norm(y)
    na = torch.where(na > _EPS, na, torch.ones_like(na))
    nb = torch.where(nb > _EPS, nb, torch.ones_like(nb))
    dot = ((x / na) * (y / nb)).sum().clamp(-1, 1)
    linear = dot.abs() > _DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, torch.zeros_like(dot), dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    return (coef_a * x + coef_b * y).reshape(a.shape)


def slerp(a: Particle, b: Particle, t: Any) -> Particle:
    """Spherical linear interpolation from ``a`` (``t = 0``) to ``b`` (``t = 1``), per tensor.

    As mergekit 0.1.5: each operational parameter is flattened to one vector, norms below
    1e-8 count as 1, and where the two directions are nearly parallel or opposite
    (``|cos| > 0.9995``) it falls back to linear interpolation. ``t`` is a number or a 0-dim
    tensor (batched by ``torch.func.vmap`` for many candidates; differentiable). Computed in
    float32 (float64 for float64 leaves) and cast back. Non-operational parameters and
    ``"keep"`` buffers come from ``a``; floating ``"mean"`` buffers are interpolated linearly.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import merge
    >>> a = nf.from_module(torch.nn.Linear(4, 4))
    >>> b = a.randn()
    >>> mid = merge.slerp(a, b, 0.5)
    >>> torch.allclose(merge.slerp(a, b, 0.0)["weight"], a["weight"], atol=1e-6)
    True
    >>> torch.allclose(merge.slerp(a, a * 2.0, 0.5)["weight"], a["weight"] * 1.5)  # parallel
    True
    """
    what = "slerp"
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, Particle):
            raise ArgumentTypeError(f"{what}: expected {name} to be a Particle (from "
                                    f"nf.from_module), got {type(x).__name__}")
        if x.batch_shape:
            raise nf.SchemaError(f"{what}: {name} must be a single particle, got a population "
                                 f"of batch shape {tuple(x.batch_shape)}; to interpolate many "
                                 "pairs, torch.func.vmap over them")
    if a.species is not b.species:
        raise nf.SpeciesMismatchError(f"{what}: a is of species {a.species.name!r}, b of "
                                      f"{b.species.name!r}; interpolation needs particles of "
                                      "one species")
    call = read_call(what, None, [a, b], with_base=False, min_models=2)
    refuse_complex(call, "spherical interpolation needs real values")
    tt = scalar(what, "t", t)

    def kernel(spec: Any, base: Any, models: torch.Tensor) -> torch.Tensor:
        return _slerp_tensor(tt, models[0], models[1], compute_dtype(spec.dtype)).to(spec.dtype)

    def buffer_mean(spec: Any, base: Any, models: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(spec.dtype)
        weight = (torch.as_tensor(tt, dtype=dtype, device=models.device) if isinstance(tt, float)
                  else tt.to(dtype))
        return torch.lerp(models[0].to(dtype), models[1].to(dtype), weight)

    return assemble(call, kernel, buffer_mean)
