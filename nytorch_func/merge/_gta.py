"""Generalised task arithmetic: the one kernel behind task arithmetic, TIES, DARE, breadcrumbs.

Per tensor, as mergekit 0.1.5's ``GeneralizedTaskArithmeticMerge``: each model's task vector
(``model - base``) is sparsified, multiplied by the model's weight, then

- with ``consensus``, a sign is elected per entry from the sum of the weighted vectors
  (``>= 0`` is ``+``), only entries of that sign are summed, and ``normalize`` divides by the
  sum of the weights of the models that agree there (0 becomes 1);
- without, the weighted vectors are summed and ``normalize`` divides by the sum of all
  weights (an absolute sum below 1e-8 becomes 1);

the result is multiplied by ``scale`` and added to the base. Leaves are merged in float32
(float64 for float64 leaves) and cast back to their own dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from nytorch_func._schema import TensorSpec

from ._inputs import Coeff, compute_dtype, real_dtype

__all__ = ["TaskMerge", "weights_as"]


def weights_as(w: Coeff, dtype: torch.dtype, device: torch.device,
               cache: dict | None = None) -> torch.Tensor:
    """Per-model weights as a real tensor of ``dtype``'s precision, shape ``(m,)``."""
    dtype = real_dtype(dtype)
    key = (dtype, device)
    if cache is not None and key in cache:
        return cache[key]
    t = (torch.tensor(w, dtype=dtype, device=device) if isinstance(w, list)
         else w.to(dtype=dtype, device=device))
    if cache is not None:
        cache[key] = t
    return t


@dataclasses.dataclass(frozen=True)
class TaskMerge:
    """The per-tensor kernel for one call: weights, sparsifier, consensus, normalize, scale."""

    weights: Coeff
    sparsify: Callable[[torch.Tensor], torch.Tensor] | None
    consensus: bool
    normalize: bool
    scale: "float | torch.Tensor"
    cache: dict = dataclasses.field(default_factory=dict)

    def __call__(self, spec: TensorSpec, base: torch.Tensor, models: torch.Tensor
                 ) -> torch.Tensor:
        dtype = compute_dtype(spec.dtype)
        m = models.shape[0]
        b = base.to(dtype)
        delta = (models.to(dtype) - b).reshape(m, -1)
        if self.sparsify is not None:
            delta = self.sparsify(delta)
        w = weights_as(self.weights, dtype, delta.device, self.cache).unsqueeze(-1)
        weighted = delta * w
        if self.consensus:
            elected = weighted.sum(0) >= 0
            agree = weighted.sign() == torch.where(elected, 1.0, -1.0).to(weighted.dtype)
            mixed = (weighted * agree).sum(0)
            if self.normalize:
                divisor = (w * agree).sum(0)
                mixed = mixed / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        else:
            mixed = weighted.sum(0)
            if self.normalize:
                divisor = w.sum()
                mixed = mixed / torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor),
                                            divisor)
        if not (isinstance(self.scale, float) and self.scale == 1.0):
            mixed = mixed * self.scale
        return (b + mixed.reshape(b.shape)).to(spec.dtype)
