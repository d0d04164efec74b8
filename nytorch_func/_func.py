"""grad / value_and_grad over particles: torch.func transforms that differentiate parameters only.

``torch.func.grad`` differentiates every leaf of its input, and fails on a particle that holds an
integer buffer (BatchNorm's ``num_batches_tracked``): integer tensors cannot require gradients.
These wrappers differentiate the floating-point *parameters* of each particle argument and hold
its buffers fixed; the gradient comes back as a particle of the same schema whose buffer leaves
are zeros. They compose with ``torch.func.vmap`` (per-member gradients of a population).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._errors import ArgumentTypeError
from ._particle import Particle

__all__ = ["grad", "value_and_grad"]


def _param_slots(p: Particle) -> list[int]:
    return [i for i, (spec, t) in enumerate(zip(p._schema.leaf_specs, p._leaves))
            if spec.kind == "param" and (t.is_floating_point() or t.is_complex())]


def value_and_grad(fn: Callable[..., Any], argnums: int | Sequence[int] = 0, *,
                   has_aux: bool = False) -> Callable[..., tuple[Any, Any]]:
    """Like ``torch.func.value_and_grad``, differentiating only the parameters of particles.

    Non-particle arguments in ``argnums`` are differentiated as ``torch.func`` would.

    >>> import torch, nytorch_func as nf
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    >>> p = nf.from_module(net)
    >>> loss = lambda p, x: nf.apply(p, x).pow(2).sum()
    >>> value, g = nf.value_and_grad(loss)(p, torch.randn(4, 3))
    >>> g.schema is p.schema, g["1.num_batches_tracked"]
    (True, tensor(0))
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        for n in nums:
            if n >= len(args):
                raise ArgumentTypeError(f"grad: argnums {n} but only {len(args)} positional "
                                        "arguments were given")
        slots = {n: _param_slots(args[n]) for n in nums if isinstance(args[n], Particle)}
        diff = tuple([args[n]._leaves[i] for i in slots[n]] if n in slots else args[n]
                     for n in nums)

        def inner(*diff_args: Any) -> Any:
            call = list(args)
            for n, d in zip(nums, diff_args):
                if n in slots:
                    p = args[n]
                    leaves = list(p._leaves)
                    for i, t in zip(slots[n], d):
                        leaves[i] = t
                    call[n] = Particle._make(p._schema, tuple(leaves), p._training, p._batch)
                else:
                    call[n] = d
            return fn(*call, **kwargs)

        grads, out = torch.func.grad_and_value(inner, argnums=tuple(range(len(nums))),
                                               has_aux=has_aux)(*diff)
        result = []
        for n, g in zip(nums, grads):
            if n in slots:
                p = args[n]
                leaves = [torch.zeros_like(t) for t in p._leaves]
                for i, t in zip(slots[n], g):
                    leaves[i] = t
                g = Particle._make(p._schema, tuple(leaves), p._training, p._batch)
            result.append(g)
        return out, (result[0] if single else tuple(result))

    return wrapped


def grad(fn: Callable[..., Any], argnums: int | Sequence[int] = 0, *,
         has_aux: bool = False) -> Callable[..., Any]:
    """Like ``torch.func.grad``, differentiating only the parameters of particle arguments.

    With ``has_aux=True`` returns ``(grads, aux)``, as torch.func does.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), 4)
    >>> loss = lambda p, x: nf.apply(p, x).pow(2).sum()
    >>> g = torch.func.vmap(nf.grad(loss), in_dims=(0, None))(pop, torch.randn(5, 3))
    >>> g["0.weight"].shape
    torch.Size([4, 2, 3])
    """
    vg = value_and_grad(fn, argnums, has_aux=has_aux)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out, g = vg(*args, **kwargs)
        if has_aux:
            return g, out[1]
        return g

    return wrapped
