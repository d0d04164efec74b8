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

from nytorch_func import TensorSpec

from ._inputs import Coeff, compute_dtype, concrete, real_dtype

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
    """The grouped kernel for one call: weights, sparsifier, consensus, normalize, scale.

    ``select(delta) -> mask | None`` sparsifies by a boolean mask (TIES, breadcrumbs: the
    values are not changed, so the matrices above are products of the mask with quantities of
    the unmasked task vectors, computed once); ``sparsify(delta) -> values`` by new values
    (DARE's rescale). At most one of them is given.
    """

    weights: Coeff
    consensus: bool
    normalize: bool
    scale: "float | torch.Tensor"
    select: Callable[[torch.Tensor], "torch.Tensor | None"] | None = None
    sparsify: Callable[[torch.Tensor], torch.Tensor] | None = None
    cache: dict = dataclasses.field(default_factory=dict)

    def __call__(self, specs: list[TensorSpec], bases: list[torch.Tensor],
                 models: list[torch.Tensor]) -> list[torch.Tensor]:
        dtype = compute_dtype(specs[0].dtype)
        out: list[torch.Tensor] = []
        for chunk in _chunks([t.numel() // t.shape[0] for t in models]):
            merged = self._combine(dtype, [bases[i] for i in chunk], [models[i] for i in chunk])
            out.extend(_as(p.reshape(specs[i].shape), specs[i].dtype)
                       for p, i in zip(merged, chunk))
        return out

    def _combine(self, dtype: torch.dtype, bases: list[torch.Tensor],
                 models: list[torch.Tensor]) -> list[torch.Tensor]:
        m = models[0].shape[0]
        flat_bases = [_as(b, dtype).reshape(-1) for b in bases]
        deltas = [_as(t, dtype).reshape(m, -1) - b for b, t in zip(flat_bases, models)]
        mask = None
        if self.sparsify is not None:
            deltas = [self.sparsify(d) for d in deltas]
        elif self.select is not None:
            masks = [self.select(d) for d in deltas]
            if any(k is not None for k in masks):
                mask = _cat([torch.ones_like(d, dtype=torch.bool) if k is None else k
                             for d, k in zip(deltas, masks)])
        x = _cat(deltas)
        if mask is not None and concrete(mask):  # one mask for every candidate: apply it once
            x, mask = x * mask, None
        elif mask is not None:  # per-candidate masks: converted once, multiplied in 2-4 times
            mask = mask.to(dtype)
        w = weights_as(self.weights, dtype, x.device, self.cache)
        if x.is_complex():
            w = w.to(dtype)

        def masked(t: torch.Tensor) -> torch.Tensor:
            return t if mask is None else t * mask

        total = torch.matmul(w, masked(x))  # T = sum_i w_i x_ij
        if self.consensus:
            wabs = w.abs()
            # e = +1 where T >= 0 (T = -0.0 only where every term is 0: nothing to elect)
            elected = torch.copysign(torch.ones((), dtype=dtype, device=x.device), total)
            twice = torch.addcmul(total, elected, torch.matmul(wabs, masked(x.abs())))
            if self.normalize:
                sign = x.sign()
                agree = torch.matmul(wabs, masked(sign))  # A
                if mask is not None and concrete(x) and bool(sign.all()):
                    present = torch.matmul(w, mask)  # no zero in x: B is the masks' weights
                else:
                    present = torch.matmul(w, masked(sign.abs()))  # B: weights of non-zeros
                divisor = torch.addcmul(present, elected, agree)  # twice the divisor
                mixed = twice / divisor.add(divisor.eq(0).to(dtype), alpha=2)  # 0 becomes 1
            else:
                mixed = twice * 0.5
        else:
            mixed = total
            if self.normalize:
                divisor = w.sum()
                mixed = mixed / torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor),
                                            divisor)
        if not (isinstance(self.scale, float) and self.scale == 1.0):
            mixed = mixed * self.scale
        if len(flat_bases) == 1:
            return [flat_bases[0] + mixed]
        return list((torch.cat(flat_bases) + mixed).split([b.numel() for b in flat_bases]))


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=-1)


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
