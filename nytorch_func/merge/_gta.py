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

How it is computed. Only the sparsification is per tensor (a mask or a rescale per tensor and
model). After it, every step is per entry, so the task vectors of all tensors of one dtype are
concatenated into one ``(m, n)`` matrix ``x`` and combined at once, by matrix products with the
weights ``w``. With ``s = sign(w_i x_ij)`` and the elected sign ``e_j``, "model ``i`` agrees at
``j``" is ``(s e + s^2) / 2``, so the sums TIES needs are

- ``sum_i w_i x_ij [agrees] = (T + e U) / 2`` with ``T = w @ x`` and ``U = |w| @ |x|``,
- ``sum_i w_i [agrees] = (e A + B) / 2`` with ``A = |w| @ sign(x)``, ``B = w @ (x != 0)``,

four products of an ``m``-vector with an ``(m, n)`` matrix. Under ``vmap`` over weights they are
matrix-matrix products over all candidates; ``x`` and its sign do not depend on the weights, so
they are computed once. (Summation order differs from mergekit's loop: results agree to
rounding, and an entry whose weighted sum is within rounding of 0 may elect either sign.)
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
    """The grouped kernel for one call: weights, sparsifier, consensus, normalize, scale."""

    weights: Coeff
    sparsify: Callable[[torch.Tensor], torch.Tensor] | None
    consensus: bool
    normalize: bool
    scale: "float | torch.Tensor"
    cache: dict = dataclasses.field(default_factory=dict)

    def __call__(self, specs: list[TensorSpec], bases: list[torch.Tensor],
                 models: list[torch.Tensor]) -> list[torch.Tensor]:
        dtype = compute_dtype(specs[0].dtype)
        out: list[torch.Tensor] = []
        for chunk in _chunks([t.numel() // t.shape[0] for t in models]):
            merged = self._combine(dtype, [bases[i] for i in chunk], [models[i] for i in chunk])
            out.extend(p.reshape(specs[i].shape).to(specs[i].dtype)
                       for p, i in zip(merged, chunk))
        return out

    def _combine(self, dtype: torch.dtype, bases: list[torch.Tensor],
                 models: list[torch.Tensor]) -> list[torch.Tensor]:
        m = models[0].shape[0]
        flat_bases = [b.to(dtype).reshape(-1) for b in bases]
        xs = []
        for b, t in zip(flat_bases, models):
            delta = t.to(dtype).reshape(m, -1) - b
            xs.append(delta if self.sparsify is None else self.sparsify(delta))
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=-1)
        w = weights_as(self.weights, dtype, x.device, self.cache)
        if x.is_complex():
            w = w.to(dtype)
        total = torch.matmul(w, x)  # sum_i w_i x_ij
        if self.consensus:
            wabs = w.abs()
            elected = (total >= 0).to(dtype) * 2 - 1  # (torch.where is slow on CPU)
            mixed = (total + elected * torch.matmul(wabs, x.abs())) / 2
            if self.normalize:
                sign = x.sign()
                agree = torch.matmul(wabs, sign)
                present = torch.matmul(w, sign.abs())  # sum of the weights of non-zero entries
                divisor = (elected * agree + present) / 2
                mixed = mixed / (divisor + (divisor == 0).to(dtype))  # 0 becomes 1
        else:
            mixed = total
            if self.normalize:
                divisor = w.sum()
                mixed = mixed / torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor),
                                            divisor)
        if not (isinstance(self.scale, float) and self.scale == 1.0):
            mixed = mixed * self.scale
        if len(xs) == 1:
            return [flat_bases[0] + mixed]
        return list((torch.cat(flat_bases) + mixed).split([b.numel() for b in flat_bases]))


_CHUNK = 1 << 18  # entries per model: below it, tensors are concatenated and merged at once


def _chunks(sizes: list[int]) -> list[list[int]]:
    """Consecutive leaves grouped so small ones are merged together (fewer, larger operations)
    and large ones alone (no copy into a concatenation)."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if n >= _CHUNK:
            out.append([i])
            continue
        current.append(i)
        total += n
        if total >= _CHUNK:
            out.append(current)
            current, total = [], 0
    if current:
        out.append(current)
    return out
