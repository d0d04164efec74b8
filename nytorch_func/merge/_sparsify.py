"""Sparsifying task vectors, one row per model (mergekit 0.1.5's ``sparsify.py`` semantics).

- :func:`magnitude` (TIES): keep each row's ``max(1, int(density * n))`` largest magnitudes.
- :func:`outliers` (breadcrumbs): drop the ``int(gamma * n)`` largest magnitudes, keep the next
  ``int(density * n)``; when both do not fit, keep the smallest ``int(density * n)``.
  Both return a boolean mask (the kernel multiplies it in where it is cheapest).
- :func:`random` (DARE): keep each entry with probability ``density``, then rescale the row so
  its L1 norm equals the unsparsified row's (mergekit), by ``1 / density`` (the DARE paper), or
  not at all. The uniform numbers are drawn in float32, one ``torch.rand`` per model and tensor
  in model order, and an entry is kept when its number is below ``density``: the same stream
  and the same test as mergekit's ``torch.bernoulli``, so a seeded run keeps the same entries.

``density`` and ``gamma`` are per-model lists of floats, or tensors when traced.
"""

from __future__ import annotations

import torch

from ._topk import Rows, band_mask, count, top_mask

__all__ = ["magnitude", "outliers", "random"]

_EPS = 1e-7  # mergekit's rescaled_masked_tensor: norms below this are not rescaled


def _as_tensor(x: "list[float] | torch.Tensor", like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, list):
        return torch.tensor(x, dtype=torch.float64, device=like.device)
    return x


def magnitude(flat: torch.Tensor, density: "list[float] | torch.Tensor"
              ) -> "torch.Tensor | None":
    """The mask of each row's largest ``max(1, int(density * n))`` magnitudes of ``flat``
    (``(m, n)``); None when every row keeps everything."""
    if isinstance(density, list) and all(d >= 1 for d in density):
        return None
    return top_mask(Rows(flat.abs()), count(density, flat.shape[-1], at_least_one=True))


def outliers(flat: torch.Tensor, density: "list[float] | torch.Tensor",
             gamma: "list[float] | torch.Tensor") -> "torch.Tensor | None":
    """Breadcrumbs: the mask of each row without its ``int(gamma * n)`` largest and its
    smallest magnitudes, ``int(density * n)`` entries kept; None when all are kept."""
    n = flat.shape[-1]
    if isinstance(density, list) and isinstance(gamma, list):
        if all(d >= 1 for d in density):
            return None
        target = count(density, n, at_least_one=False)
        top = count(gamma, n, at_least_one=False)
        low = [min(g, n - t) for g, t in zip(top, target)]
        high = [lo + t for lo, t in zip(low, target)]
    else:
        target = count(_as_tensor(density, flat), n, at_least_one=False)
        top = count(_as_tensor(gamma, flat), n, at_least_one=False)
        low = torch.minimum(top, n - target)
        high = low + target
    return band_mask(Rows(flat.abs()), low, high)


def random(flat: torch.Tensor, density: "list[float] | torch.Tensor", rescale: "bool | str",
           generator: torch.Generator | None) -> torch.Tensor:
    """DARE: each entry kept with probability ``density``; ``rescale`` is True (L1 norm of the
    row restored, mergekit), ``"inverse"`` (divided by ``density``) or False."""
    m, n = flat.shape
    if isinstance(density, list):
        if all(d >= 1 for d in density):
            return flat
        if all(d < 1 for d in density):
            noise = torch.rand((m, n), generator=generator, dtype=torch.float32,
                               device=flat.device)
        else:  # rows at density 1 draw nothing, as mergekit's early return
            noise = torch.stack([
                torch.rand(n, generator=generator, dtype=torch.float32, device=flat.device)
                if d < 1 else torch.zeros(n, dtype=torch.float32, device=flat.device)
                for d in density])
        keep = noise < torch.tensor(density, dtype=torch.float32,
                                    device=flat.device).unsqueeze(-1)
    else:
        noise = torch.rand((m, n), generator=generator, dtype=torch.float32, device=flat.device)
        keep = noise < density.to(torch.float32).unsqueeze(-1)
    masked = flat * keep
    if rescale is False:
        return masked
    if rescale == "inverse":
        d = _as_tensor(density, flat).to(masked.real.dtype if masked.is_complex() else
                                          masked.dtype)
        return masked / d.unsqueeze(-1)
    before = flat.abs().sum(-1, keepdim=True)
    after = masked.abs().sum(-1, keepdim=True)
    small = (before < _EPS) | (after < _EPS)
    factor = torch.where(small, torch.ones_like(before),
                         before / torch.where(small, torch.ones_like(after), after))
    return masked * factor
