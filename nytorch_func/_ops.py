"""Particle arithmetic: one generic operator table over ``torch._foreach_*``.

Only *operational* parameters are computed; every other leaf (non-operational parameters,
buffers) is carried over from the left particle operand unchanged. Shared (``clone=False``)
parameters live in the schema and are never touched. Each elementwise operation is one
``torch._foreach_*`` call over all operational leaves, with no Python loop per tensor, and the
path stays traceable by ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._errors import NytorchFuncError, SchemaError, SpeciesMismatchError

if TYPE_CHECKING:
    from ._config import ParamConfig
    from ._particle import Particle

__all__ = ["install", "map_params", "randn_like", "rand_like", "zeros_like", "full_like"]

Leaves = Sequence[torch.Tensor]
_foreach = torch  # the torch._foreach_* namespace


_Particle: type = object  # set by install(); avoids an import on the hot path


def _make(schema, leaves, training):
    return _Particle(schema, leaves, training)


def _lift1(p: "Particle", fn: Callable[[list], Sequence[torch.Tensor]]) -> "Particle":
    """Apply ``fn`` to the operational leaves of ``p``; carry the others over."""
    s = p._schema
    if s.all_operational:
        return _make(s, tuple(fn(list(p._leaves))), p._training)
    idx = s.op_index
    out = list(p._leaves)
    if idx:
        for i, r in zip(idx, fn([out[i] for i in idx])):
            out[i] = r
    return _make(s, tuple(out), p._training)


def _lift2(a: "Particle", b: "Particle", fn: Callable[[list, list], Sequence[torch.Tensor]]) -> "Particle":
    s = a._schema
    if s.all_operational:
        return _make(s, tuple(fn(list(a._leaves), list(b._leaves))), a._training)
    idx = s.op_index
    out = list(a._leaves)
    lb = b._leaves
    if idx:
        for i, r in zip(idx, fn([out[i] for i in idx], [lb[i] for i in idx])):
            out[i] = r
    return _make(s, tuple(out), a._training)


def align(a: "Particle", b: "Particle", what: str) -> tuple["Particle", "Particle"]:
    """Bring two particles of one species to the same (newest) version."""
    if a._schema.species is not b._schema.species:
        raise SpeciesMismatchError(
            f"{what}: particles of different species ({a._schema.species.name!r} and "
            f"{b._schema.species.name!r}) cannot be combined; derive both from one particle "
            "(p.clone(), p.randn(), nf.population(p, n)) or rebuild one with nf.from_module")
    from ._touch import touch

    return touch(a), touch(b)


def _scalar_kind(x: Any) -> str | None:
    """'number', 'tensor0' (0-dim tensor), 'batch' (per-member coefficients) or None."""
    if isinstance(x, (bool, numbers.Number)) and not isinstance(x, complex):
        return "number"
    if isinstance(x, torch.Tensor):
        return "tensor0" if x.dim() == 0 else "batch"
    return None


def _check_members(p: "Particle", coeff: torch.Tensor, name: str) -> None:
    """A tensor operand with dims must hold one coefficient per member (a batch_shape prefix)."""
    shape = tuple(p.batch_shape)
    if tuple(coeff.shape) != shape[: coeff.dim()] or coeff.dim() > len(shape):
        raise SchemaError(
            f"p {name} tensor: a tensor operand must be 0-dim (one number for every parameter) "
            f"or hold one coefficient per population member, shape {shape} or a prefix of it; "
            f"got shape {tuple(coeff.shape)}. Use map_params for per-parameter tensors")


def _per_member(coeff: torch.Tensor, leaves: list) -> list:
    """Coefficients of shape ``batch_shape`` viewed to broadcast against each leaf."""
    return [coeff.reshape(coeff.shape + (1,) * (t.dim() - coeff.dim())) for t in leaves]


def _binary(name: str, list_op: Callable, scalar_op: Callable, reverse_scalar: Callable | None):
    def forward(self: "Particle", other: Any) -> "Particle":
        if type(other) is _Particle:
            a, b = self, other
            if a._schema is not b._schema:
                a, b = align(a, b, f"p {name} q")
            return _lift2(a, b, list_op)
        kind = _scalar_kind(other)
        if kind is None:
            return NotImplemented
        if kind == "batch":
            _check_members(self, other, name)
            return _lift1(self, lambda xs: list_op(xs, _per_member(other, xs)))
        return _lift1(self, lambda xs: scalar_op(xs, other))

    def reverse(self: "Particle", other: Any) -> "Particle":
        kind = _scalar_kind(other)
        if kind is None or reverse_scalar is None:
            return NotImplemented
        if kind == "batch":
            _check_members(self, other, f"r{name}")
            return _lift1(self, lambda xs: list_op(_per_member(other, xs), xs))
        return _lift1(self, lambda xs: reverse_scalar(other, xs))

    forward.__name__ = f"__{name}__"
    reverse.__name__ = f"__r{name}__"
    return forward, reverse


def _rsub(s, xs):
    return torch._foreach_add(torch._foreach_neg(xs), s)


def _rdiv(s, xs):
    return torch._foreach_mul(torch._foreach_reciprocal(xs), s)


def _rpow(s, xs):
    if isinstance(s, torch.Tensor):
        return torch._foreach_pow([s] * len(xs), xs)
    return torch._foreach_pow(s, xs)


_TABLE = {
    "add": (torch._foreach_add, torch._foreach_add, lambda s, xs: torch._foreach_add(xs, s)),
    "sub": (torch._foreach_sub, torch._foreach_sub, _rsub),
    "mul": (torch._foreach_mul, torch._foreach_mul, lambda s, xs: torch._foreach_mul(xs, s)),
    "truediv": (torch._foreach_div, torch._foreach_div, _rdiv),
    "pow": (torch._foreach_pow, torch._foreach_pow, _rpow),
}


def _neg(self: "Particle") -> "Particle":
    return _lift1(self, torch._foreach_neg)


def _pos(self: "Particle") -> "Particle":
    return _lift1(self, list)


def _abs(self: "Particle") -> "Particle":
    return _lift1(self, torch._foreach_abs)


# copies and random particles ------------------------------------------------------------------

def _clone(self: "Particle") -> "Particle":
    """A particle of the same species whose leaves are fresh copies (autograd history kept)."""
    return _make(self._schema, tuple(t.clone() for t in self._leaves), self._training)


def _detach(self: "Particle") -> "Particle":
    """The same values with autograd history cut (``Tensor.detach`` on every leaf)."""
    return _make(self._schema, tuple(t.detach() for t in self._leaves), self._training)


def _fill(p: "Particle", make: Callable[[torch.Tensor], torch.Tensor]) -> "Particle":
    s = p._schema
    out = list(p._leaves)
    for i in s.op_index:
        t = out[i]
        out[i] = make(t).requires_grad_(t.requires_grad) if t.is_floating_point() else make(t)
    return _make(s, tuple(out), p._training)


def randn_like(p: "Particle", *, generator: torch.Generator | None = None) -> "Particle":
    """Operational parameters drawn from N(0, 1); everything else carried over.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> a = nf.randn_like(p, generator=g)
    >>> b = nf.randn_like(p, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(a["weight"], b["weight"])
    True
    """
    return _fill(p, lambda t: torch.randn(t.shape, generator=generator, dtype=t.dtype,
                                          device=t.device))


def rand_like(p: "Particle", *, generator: torch.Generator | None = None) -> "Particle":
    """Operational parameters drawn from U[0, 1); everything else carried over."""
    return _fill(p, lambda t: torch.rand(t.shape, generator=generator, dtype=t.dtype,
                                         device=t.device))


def zeros_like(p: "Particle") -> "Particle":
    """Operational parameters set to zero; everything else carried over."""
    return _fill(p, lambda t: torch.zeros_like(t))


def full_like(p: "Particle", value: float) -> "Particle":
    """Operational parameters set to ``value``; everything else carried over."""
    return _fill(p, lambda t: torch.full_like(t, value))


# mapping with configs -------------------------------------------------------------------------

def map_params(fn: Callable[..., torch.Tensor], p: "Particle", *others: "Particle",
               operational_only: bool = True) -> "Particle":
    """Map ``fn(tensor, *other_tensors, config)`` over the parameters of ``p`` and ``others``.

    The functional form of nytorch's ``unary_operator``/``binary_operator``: ``fn`` receives
    each per-particle parameter tensor of ``p`` (and the matching tensors of ``others``, brought
    to the same version) plus its :class:`ParamConfig`, and returns the new tensor. With
    ``operational_only=True`` (the default) non-operational parameters are carried over without
    calling ``fn``. Buffers are carried over from ``p``.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(1, 1))
    >>> p = nf.configure(p, "bias", operational=False)
    >>> q = nf.map_params(lambda t, cfg: 2 * t + 5, p)
    >>> torch.allclose(q["weight"], 2 * p["weight"] + 5), q["bias"] is p["bias"]
    (True, True)
    """
    from ._touch import touch

    if others:
        p = touch(p)
        others = tuple(align(p, o, "map_params")[1] for o in others)
    s = p._schema
    out = list(p._leaves)
    for i, spec in enumerate(s.leaf_specs):
        if spec.kind != "param" or (operational_only and not spec.config.operational):
            continue
        result = fn(out[i], *(o._leaves[i] for o in others), spec.config)
        if not isinstance(result, torch.Tensor):
            raise NytorchFuncError(f"map_params: fn returned {type(result).__name__} for "
                                   f"{spec.key!r}; it must return a tensor")
        out[i] = result
    return _make(s, tuple(out), p._training)


def install(cls: type) -> None:
    """Put the operator table onto the Particle class."""
    global _Particle
    _Particle = cls
    for name, (list_op, scalar_op, rev) in _TABLE.items():
        fwd, rfwd = _binary(name, list_op, scalar_op, rev)
        setattr(cls, f"__{name}__", fwd)
        setattr(cls, f"__r{name}__", rfwd)
    cls.__neg__ = _neg
    cls.__pos__ = _pos
    cls.__abs__ = _abs
    cls.clone = _clone
    cls.detach = _detach
    cls.randn = lambda self, *, generator=None: randn_like(self, generator=generator)
    cls.rand = lambda self, *, generator=None: rand_like(self, generator=generator)
    cls.zeros = lambda self: zeros_like(self)
    cls.randn.__doc__ = randn_like.__doc__
    cls.rand.__doc__ = rand_like.__doc__
