"""Public value functions over particles: random and constant fills, and ``map_params``.

The operators themselves (``p + q``, ``0.5 * p``, ``-p``, ...) are defined on
:class:`~nytorch_func.Particle` (see ``_particle.py`` and the kernels in ``_arith.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ._arith import align_all, at_head, broadcast_batch, check_generator, expand_carried, fill, make
from ._errors import ArgumentTypeError, SchemaError
from ._particle import Particle, expect_particle

__all__ = ["map_params", "randn_like", "rand_like", "zeros_like", "full_like"]


def randn_like(p: Particle, *, generator: torch.Generator | None = None) -> Particle:
    """Operational parameters drawn from N(0, 1); everything else carried over (``p.randn()``).

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 2))
    >>> a = nf.randn_like(p, generator=torch.Generator().manual_seed(0))
    >>> b = nf.randn_like(p, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(a["weight"], b["weight"])
    True
    """
    expect_particle(p, "randn_like")
    check_generator(generator, "randn_like")
    return p.randn(generator=generator)


def rand_like(p: Particle, *, generator: torch.Generator | None = None) -> Particle:
    """Operational parameters drawn from U[0, 1); everything else carried over (``p.rand()``).

    >>> import torch, nytorch_func as nf
    >>> q = nf.rand_like(nf.from_module(torch.nn.Linear(2, 2)))
    >>> bool(((q["weight"] >= 0) & (q["weight"] < 1)).all())
    True
    """
    expect_particle(p, "rand_like")
    check_generator(generator, "rand_like")
    return p.rand(generator=generator)


def zeros_like(p: Particle) -> Particle:
    """Operational parameters set to zero; everything else carried over (``p.zeros()``).

    >>> import torch, nytorch_func as nf
    >>> nf.zeros_like(nf.from_module(torch.nn.Linear(2, 1)))["bias"]
    tensor([0.], requires_grad=True)
    """
    expect_particle(p, "zeros_like")
    return p.zeros()


def full_like(p: Particle, value: float) -> Particle:
    """Operational parameters set to ``value`` (a Python number); everything else carried over.

    A complex ``value`` needs complex parameters (every leaf keeps its schema dtype).

    >>> import torch, nytorch_func as nf
    >>> nf.full_like(nf.from_module(torch.nn.Linear(2, 1)), 0.5)["bias"]
    tensor([0.5000], requires_grad=True)
    >>> nf.full_like(nf.from_module(torch.nn.Linear(2, 1)), 1j)
    Traceback (most recent call last):
    ...
    nytorch_func._errors.SchemaError: full_like: the complex value 1j cannot be stored in the real parameters ['weight', 'bias']; convert the species first (nf.to(p, dtype=torch.complex64))
    """
    expect_particle(p, "full_like")
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise ArgumentTypeError(f"full_like: value must be a Python number, got "
                                f"{type(value).__name__} ({value!r})")
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        s = p._schema
        real = [s.leaf_specs[i].key for i in s.op_index if not s.leaf_specs[i].dtype.is_complex]
        if real:
            raise SchemaError(f"full_like: the complex value {value!r} cannot be stored in the "
                              f"real parameters {real[:4]}{' ...' if len(real) > 4 else ''}; "
                              "convert the species first (nf.to(p, dtype=torch.complex64))")
    elif isinstance(value, numbers.Real):
        value = float(value)
    else:
        raise ArgumentTypeError(f"full_like: value must be a real or complex number, got "
                                f"{type(value).__name__}")
    return fill(p, lambda t: torch.full_like(t, value))


# mapping with configs -------------------------------------------------------------------------

def map_params(fn: Callable[..., torch.Tensor], p: "Particle", *others: "Particle",
               operational_only: bool = True) -> "Particle":
    """Map ``fn(tensor, *other_tensors, config)`` over the parameters of ``p`` and ``others``.

    The functional form of nytorch's ``unary_operator``/``binary_operator``: ``fn`` receives
    each per-particle parameter tensor of ``p`` (and the matching tensors of ``others``, brought
    to the same version) plus its :class:`ParamConfig`, and returns the new tensor. With
    ``operational_only=True`` (the default) only the parameters arithmetic computes are mapped
    (operational, floating or complex); the others are carried over without calling ``fn``.
    ``operational_only=False`` maps every per-particle parameter. Buffers are carried over.

    ``fn`` must keep the parameter's dtype and return the shape ``batch_shape + spec.shape``,
    where ``batch_shape`` broadcasts the operands' batch shapes (a single particle mapped with
    a population gives a population; leaves carried over from ``p`` are then broadcast and
    copied, as in arithmetic). Anything else is a SchemaError naming the path, so the result
    always matches its schema.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(1, 1))
    >>> p = nf.configure(p, "bias", operational=False)
    >>> q = nf.map_params(lambda t, cfg: 2 * t + 5, p)
    >>> torch.allclose(q["weight"], 2 * p["weight"] + 5), q["bias"] is p["bias"]
    (True, True)
    >>> nf.map_params(lambda t, cfg: t.sum(), p)
    Traceback (most recent call last):
    ...
    nytorch_func._errors.SchemaError: map_params: fn returned shape (), dtype torch.float32 for 'weight'; it must keep shape (1, 1) and dtype torch.float32
    """
    if not callable(fn):
        raise ArgumentTypeError(f"map_params: fn must be callable as fn(tensor, *others, config), "
                                f"got {type(fn).__name__}; note the order map_params(fn, p, ...)")
    expect_particle(p, "map_params")
    for o in others:
        expect_particle(o, "map_params")
    p = at_head(p)  # operations bring their operands to the newest version first
    if others:
        p, *rest = align_all("map_params", p, *others)
        others = tuple(rest)
    s = p._schema
    batch = tuple(p.batch_shape)
    if others:
        batch = broadcast_batch("map_params", batch, *(o.batch_shape for o in others))
    computed = s.op_index if operational_only else [
        i for i, spec in enumerate(s.leaf_specs) if spec.kind == "param"]
    leaves = p._leaves
    out = expand_carried(p, batch, computed)
    for i in computed:
        spec = s.leaf_specs[i]
        t = leaves[i]
        result = fn(t, *(o._leaves[i] for o in others), spec.config)
        if not isinstance(result, torch.Tensor):
            raise ArgumentTypeError(f"map_params: fn returned {type(result).__name__} for "
                                    f"{spec.key!r}; it must return a tensor")
        shape = (*batch, *spec.shape)
        if tuple(result.shape) != shape or result.dtype != t.dtype or result.device != t.device:
            raise SchemaError(f"map_params: fn returned shape {tuple(result.shape)}, dtype "
                              f"{result.dtype} for {spec.key!r}; it must keep shape {shape} and "
                              f"dtype {t.dtype}" + (f" on {t.device}" if result.device != t.device
                                                    else ""))
        out[i] = result
    return make(p, s, tuple(out), batch)


