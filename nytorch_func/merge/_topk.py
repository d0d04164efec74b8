"""Exact top-k masks by magnitude, one row per model, with ``k`` known or traced.

``top_mask(rows, k)`` marks the ``k[i]`` largest entries of each row (exactly that many; among
equal magnitudes the lower index wins, the order of a stable descending sort). Two ways:

- ``k`` a list of Python ints (eager calls): no sort. The ``k``-th largest value comes from
  ``torch.kthvalue`` (a selection, linear time); entries above it are kept, and ties at it
  are resolved by a running count, only when there are any.
- ``k`` a tensor (densities traced by ``vmap``/``compile``): each row is ranked once (a stable
  sort, then the inverse permutation), and the mask is ``rank < k``. The ranks do not depend
  on ``k``, so under ``vmap`` over densities they are computed once for all candidates, and
  each candidate costs one comparison per entry.
"""

from __future__ import annotations

import torch

from ._inputs import concrete

__all__ = ["Rows", "top_mask", "band_mask", "count"]


class Rows:
    """The magnitudes ``mag`` (``(m, n)``) and, made on first use, each entry's rank in its row
    (0 for the largest; ties by index)."""

    __slots__ = ("mag", "_rank")

    def __init__(self, mag: torch.Tensor) -> None:
        self.mag = mag
        self._rank: torch.Tensor | None = None

    @property
    def rank(self) -> torch.Tensor:
        if self._rank is None:
            order = torch.sort(self.mag, dim=-1, descending=True, stable=True).indices
            positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
            self._rank = torch.zeros_like(order).scatter(-1, order, positions)
        return self._rank


def count(fraction: "list[float] | torch.Tensor", n: int, *, at_least_one: bool
          ) -> "list[int] | torch.Tensor":
    """``int(fraction * n)`` per model (``max(1, ...)`` with ``at_least_one``), as mergekit
    computes it: truncation of the float64 product, so a traced float32 density gives the same
    count as the Python float it holds."""
    if isinstance(fraction, list):
        return [max(1, int(f * n)) if at_least_one else int(f * n) for f in fraction]
    k = torch.floor(fraction.to(torch.float64) * n).to(torch.long)
    return k.clamp(1 if at_least_one else 0, n)


def _selected(mag: torch.Tensor, k: list[int]) -> torch.Tensor:
    """Bool mask of the ``k[i]`` largest of each row (``0 <= k[i] <= n``), by selection."""
    n = mag.shape[-1]
    kk = [min(max(ki, 1), n) for ki in k]
    if len(set(kk)) == 1:
        thr = torch.kthvalue(mag, n - kk[0] + 1, dim=-1, keepdim=True).values
    else:
        thr = torch.stack([torch.kthvalue(mag[i], n - ki + 1, keepdim=True).values
                           for i, ki in enumerate(kk)])
    kt = torch.tensor(k, device=mag.device).unsqueeze(-1)
    if all(concrete(t) for t in (mag, thr)):  # eager: without ties at the threshold (and with
        at_least = mag >= thr  # no k = 0), one comparison is all
        if bool((at_least.sum(-1, keepdim=True, dtype=torch.int32) == kt).all()):
            return at_least
    above = mag > thr
    at = mag == thr
    need = kt - above.sum(-1, keepdim=True, dtype=torch.int32)  # k = 0: need <= 0, none kept
    # ties at the threshold: keep the first `need` of them in index order
    return above | (at & (at.to(torch.int32).cumsum(-1, dtype=torch.int32) <= need))


def top_mask(rows: Rows, k: "list[int] | torch.Tensor") -> "torch.Tensor | None":
    """Bool mask ``(m, n)`` of the ``k[i]`` largest entries of each row; None means all of them
    (every ``k`` is ``n``: nothing to drop)."""
    if isinstance(k, list):
        if all(ki >= rows.mag.shape[-1] for ki in k):
            return None
        return _selected(rows.mag, k)
    return rows.rank < k.unsqueeze(-1)


def band_mask(rows: Rows, low: "list[int] | torch.Tensor", high: "list[int] | torch.Tensor"
              ) -> torch.Tensor:
    """Bool mask of the entries ranked in ``[low[i], high[i])`` of each row."""
    if isinstance(low, list) and isinstance(high, list):
        keep = top_mask(rows, high)
        if keep is None:
            keep = torch.ones_like(rows.mag, dtype=torch.bool)
        return keep if all(lo <= 0 for lo in low) else keep & ~_selected(rows.mag, low)
    return (rows.rank >= low.unsqueeze(-1)) & (rows.rank < high.unsqueeze(-1))
