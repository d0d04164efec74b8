"""The list kernels the optimizers run on: one ``torch._foreach_*`` call per operation.

Each kernel takes lists of tensors (the operational leaves of a particle) and coefficients that
are a Python number (the same for every tensor), a list of Python numbers (one per tensor:
torch's ``ScalarList`` overloads) or a list of tensors (one per tensor, broadcast against it:
per-member hyperparameters). Kernels whose name ends in ``_`` write into their first argument
where foreach runs (always a list of tensors the optimizer made itself in this step, never a
leaf of a particle the caller holds) and return it; callers use the returned list.

torch has no vmap batching rule for ``torch._foreach_*``: inside a torch.func transform
(``vmap``, ``grad``) every kernel runs tensor by tensor instead. Under ``torch.compile`` the
check folds and the foreach call is traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._kernels import (fe_add, fe_div, fe_lerp, fe_mul, fe_neg, per_tensor,
                        transforms_active, vmappable)

__all__ = ["Coef", "per_leaf", "is_tensor", "neg", "add", "axpy", "mul", "lerp", "addcmul_",
           "sqrt", "div_", "add_", "addcdiv", "maximum", "real_views", "from_real"]

# A coefficient: a Python number, or a float64 tensor of shape () or a batch-shape prefix.
Coef = Any


def is_tensor(c: Any) -> bool:
    return isinstance(c, torch.Tensor)


def per_leaf(c: Coef, xs: Sequence[torch.Tensor]) -> Any:
    """``c`` for every tensor of ``xs``: the number itself, or the tensor viewed against each
    tensor (trailing dims of size 1) in that tensor's dtype."""
    if not is_tensor(c):
        return c
    return [_view(c, x) for x in xs]


def per_leaf_each(cs: Sequence[Coef], xs: Sequence[torch.Tensor]) -> list:
    """One coefficient per tensor: a list of numbers, or (when any is a tensor) of tensors."""
    if not any(is_tensor(c) for c in cs):
        return list(cs)
    return [_view(torch.as_tensor(c, dtype=torch.float64, device=x.device), x)
            for c, x in zip(cs, xs)]


def _view(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.to(x.dtype).reshape(c.shape + (1,) * (x.dim() - c.dim()))


neg = fe_neg
add = fe_add  # x + y (ys: tensors, or a coefficient per per_leaf)
lerp = fe_lerp
sqrt = vmappable(torch._foreach_sqrt, torch.sqrt)
maximum = vmappable(torch._foreach_maximum, torch.maximum)
_div = fe_div


def axpy(xs: list, ys: list, a: Any) -> list:
    """``x + a * y``: torch's ``_foreach_add(xs, ys, alpha=a)`` for a number ``a``."""
    if is_tensor(a) or isinstance(a, list):
        return add(xs, mul(ys, a))
    if transforms_active():
        return per_tensor(lambda x, y: torch.add(x, y, alpha=a), (xs, ys))
    return list(torch._foreach_add(xs, ys, alpha=a))


_HALF = (torch.float16, torch.bfloat16)


def mul(xs: list, c: Any) -> list:
    if transforms_active():
        return per_tensor(torch.mul, (xs, c))
    if not is_tensor(c) and not isinstance(c, (list, tuple)) and any(x.dtype in _HALF for x in xs):
        # torch.optim multiplies in place; out of place, foreach rounds a Python scalar to the
        # tensors' half dtype first (bf16 0.997 * x differs from x.mul_(0.997) by an ulp)
        out = [x.clone() for x in xs]
        torch._foreach_mul_(out, c)
        return out
    return fe_mul(xs, c)


def addcmul_(xs: list, ys: list, zs: list, value: float) -> list:
    """``x + value * y * z``, written into ``xs`` (made in this step) where foreach runs."""
    if transforms_active():
        return per_tensor(lambda x, y, z: torch.addcmul(x, y, z, value=value), (xs, ys, zs))
    torch._foreach_addcmul_(xs, ys, zs, value=value)
    return xs


def div_(xs: list, c: Any) -> list:
    """``x / c``, written into ``xs`` (made in this step) where foreach runs."""
    if transforms_active():
        return per_tensor(torch.div, (xs, c))
    torch._foreach_div_(xs, c)
    return xs


def add_(xs: list, c: Any) -> list:
    """``x + c``, written into ``xs`` (made in this step) where foreach runs."""
    if transforms_active():
        return per_tensor(torch.add, (xs, c))
    torch._foreach_add_(xs, c)
    return xs


def addcdiv(xs: list, ys: list, zs: list, c: list) -> list:
    """``x + c * y / z``; ``c`` a list of numbers (torch's ScalarList) or of tensors."""
    if c and is_tensor(c[0]):
        return add(xs, mul(_div(ys, zs), c))
    if transforms_active():
        return per_tensor(lambda x, y, z, v: torch.addcdiv(x, y, z, value=v), (xs, ys, zs, c))
    return list(torch._foreach_addcdiv(xs, ys, zs, c))


def real_views(*lists: list) -> tuple[list, ...]:
    """Complex tensors as real views ``(..., 2)``, as torch.optim treats complex parameters
    (real and imaginary parts are separate coordinates); other tensors as they are. The lists
    hold the same parameters, so the first one tells whether there is anything to do."""
    if not any(t.is_complex() for t in lists[0]):
        return lists
    return tuple([torch.view_as_real(t) if t.is_complex() else t for t in xs] for xs in lists)


def from_real(xs: list, like: Sequence[torch.Tensor]) -> list:
    """Undo :func:`real_views` for the tensors whose counterpart in ``like`` is complex."""
    if xs is like or not any(t.is_complex() for t in like):
        return xs
    return [torch.view_as_complex(x) if t.is_complex() else x for x, t in zip(xs, like)]
