"""The foreach kernels particle arithmetic runs on: one ``torch._foreach_*`` call per operation.

torch has no vmap batching rule for ``torch._foreach_*``; inside a torch.func transform
(``vmap``, ``grad``) each kernel runs tensor by tensor instead, so particle arithmetic works in
any transformed function. Outside transforms (and under ``torch.compile``, which folds the
check) it is the one foreach call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["per_tensor", "vmappable", "fe_add", "fe_sub", "fe_mul", "fe_div", "fe_pow", "fe_neg", "fe_abs", "fe_reciprocal",
           "fe_lerp", "transforms_active"]

transforms_active = torch._C._are_functorch_transforms_active


def per_tensor(one: Callable, args: tuple) -> list:
    """``one`` applied tensor by tensor: list arguments are indexed, the others passed whole."""
    n = next(len(a) for a in args if isinstance(a, (list, tuple)))
    return [one(*(a[i] if isinstance(a, (list, tuple)) else a for a in args)) for i in range(n)]


def vmappable(foreach_fn: Callable, one: Callable) -> Callable:
    """``foreach_fn``, or a per-tensor ``one`` loop inside torch.func transforms."""

    def call(*args: Any) -> Any:
        if transforms_active():
            return per_tensor(one, args)
        return foreach_fn(*args)

    call.__name__ = foreach_fn.__name__
    return call


fe_add = vmappable(torch._foreach_add, torch.add)
fe_sub = vmappable(torch._foreach_sub, torch.sub)
_mul = vmappable(torch._foreach_mul, torch.mul)
_EXACT = (torch.float32, torch.float64)  # where a 0-dim coefficient multiplies as the scalar does


def fe_mul(xs: Any, c: Any) -> Any:
    """``_foreach_mul``; a Python number times float32/float64 tensors of one dtype and device
    goes as a 0-dim tensor of that dtype: the same products bit for bit (the scalar is cast to
    the tensors' dtype either way), and faster on CPU than the Scalar overload in torch 2.13
    (12 us against 16 us for the six tensors of a small MLP)."""
    if (type(c) is float or type(c) is int) and -1e38 < c < 1e38 and xs \
            and not transforms_active():  # (NaN, inf and huge values: the Scalar overload)
        dtype, device = xs[0].dtype, xs[0].device
        if dtype in _EXACT and all(x.dtype == dtype and x.device == device for x in xs):
            return torch._foreach_mul(xs, torch.scalar_tensor(c, dtype=dtype, device=device))
    return _mul(xs, c)


fe_div = vmappable(torch._foreach_div, torch.div)
fe_pow = vmappable(torch._foreach_pow, torch.pow)
fe_neg = vmappable(torch._foreach_neg, torch.neg)
fe_abs = vmappable(torch._foreach_abs, torch.abs)
fe_reciprocal = vmappable(torch._foreach_reciprocal, torch.reciprocal)
fe_lerp = vmappable(torch._foreach_lerp, torch.lerp)
