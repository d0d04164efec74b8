"""Exact top-k masks by magnitude, one row per model, with ``k`` known or traced.

``top_mask(mag, k)`` marks the ``k[i]`` largest entries of each row ``mag[i]`` (exactly that
many; among equal magnitudes the lower index wins, as a stable descending sort would order
them). It never sorts when ``k`` is a list of Python ints: the ``k``-th largest value comes from
``torch.kthvalue`` (a selection, linear time), and ties at that value are resolved by a running
count. When ``k`` is a tensor (densities inside ``vmap``/``compile``) the row is sorted once and
the threshold gathered at ``k - 1``; the sort does not depend on ``k``, so under ``vmap`` over
densities it runs once for all candidates.
"""

from __future__ import annotations

import torch

from ._inputs import concrete

__all__ = ["Sorted", "top_mask", "count"]


class Sorted:
    """A row-wise descending sort of ``mag`` (values only), made on first use."""

    __slots__ = ("mag", "_values")

    def __init__(self, mag: torch.Tensor) -> None:
        self.mag = mag
        self._values: torch.Tensor | None = None

    @property
    def values(self) -> torch.Tensor:
        if self._values is None:
            self._values = torch.sort(self.mag, dim=-1, descending=True).values
        return self._values


def count(fraction: "list[float] | torch.Tensor", n: int, *, at_least_one: bool) -> "list[int] | torch.Tensor":
    """``int(fraction * n)`` per model (``max(1, ...)`` with ``at_least_one``), as mergekit
    computes it: truncation of the float64 product, so a traced float32 density gives the same
    count as the Python float it holds."""
    if isinstance(fraction, list):
        return [max(1, int(f * n)) if at_least_one else int(f * n) for f in fraction]
    k = torch.floor(fraction.to(torch.float64) * n).to(torch.long)
    return k.clamp(1 if at_least_one else 0, n)


def _threshold(rows: Sorted, k: "list[int] | torch.Tensor") -> torch.Tensor:
    """The ``k``-th largest value of each row, shape ``(m, 1)`` (``k >= 1``)."""
    mag = rows.mag
    n = mag.shape[-1]
    if isinstance(k, list):
        if len(set(k)) == 1:
            return torch.kthvalue(mag, n - k[0] + 1, dim=-1, keepdim=True).values
        return torch.stack([torch.kthvalue(mag[i], n - ki + 1, keepdim=True).values
                            for i, ki in enumerate(k)])
    return rows.values.gather(-1, (k - 1).clamp(0, n - 1).unsqueeze(-1))


def top_mask(rows: Sorted, k: "list[int] | torch.Tensor") -> "torch.Tensor | None":
    """Bool mask ``(m, n)`` of the ``k[i]`` largest entries of each row; None means all of them
    (every ``k`` is ``n``: nothing to drop). ``k = 0`` gives an empty row: the threshold is then
    the row's maximum, nothing is above it and no tie is needed."""
    mag = rows.mag
    n = mag.shape[-1]
    if isinstance(k, list):
        if all(ki >= n for ki in k):
            return None
        kt = torch.tensor(k, device=mag.device).unsqueeze(-1)
        k = [min(max(ki, 1), n) for ki in k]
    else:
        kt = k.unsqueeze(-1)
    thr = _threshold(rows, k)
    if all(concrete(t) for t in (mag, thr, kt)):  # eager: without ties at the threshold, one comparison is all
        at_least = mag >= thr
        if bool((at_least.sum(-1, keepdim=True, dtype=torch.int32) == kt).all()):
            return at_least
    above = mag > thr
    at = mag == thr
    need = kt - above.sum(-1, keepdim=True, dtype=torch.int32)
    # ties at the threshold: keep the first `need` of them in index order
    return above | (at & (at.to(torch.int32).cumsum(-1, dtype=torch.int32) <= need))
