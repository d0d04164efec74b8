"""Particle arithmetic: one generic operator table over the foreach kernels.

Only *operational* parameters are computed; every other leaf (non-operational parameters,
buffers) is carried over from the left particle operand unchanged. Shared (``clone=False``)
parameters live in the schema and are never touched. Each elementwise operation is one
``torch._foreach_*`` call over all operational leaves, with no Python loop per tensor, and the
path stays traceable by ``torch.compile(fullgraph=True)``.

Every result keeps each leaf's schema dtype: coefficients are cast to the leaf (as torch's
in-place and ``_foreach_*_`` ops do), and a coefficient whose result a leaf cannot hold (a
complex number for a real parameter) is a :class:`SchemaError`. The functions here work on any
particle (``_schema``, ``_leaves``, ``_training``, ``_batch``) and build results with its own
class, so ``_particle.py`` can define its operators with them without an import cycle.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._errors import ArgumentTypeError, SchemaError, SpeciesMismatchError
from ._kernels import (fe_abs, fe_add, fe_div, fe_lerp, fe_mul, fe_neg, fe_pow, fe_reciprocal,
                       fe_sub, transforms_active)
from ._migrate import migrate

__all__ = ["at_head", "align", "align_all", "binary", "unary", "torch_function", "broadcast_batch",
           "expand_carried", "lift1", "lift2", "lift2_mixed", "coefficient", "fill",
           "check_generator", "fe_lerp"]


def make(p: Any, schema: Any, leaves: tuple, batch: Any = None) -> Any:
    """A particle of ``p``'s class and mode; ``batch`` is kept only when there are no leaves."""
    return type(p)(schema, leaves, p._training, None if leaves else batch)


def at_head(p: Any) -> Any:
    """``p`` at its species' newest version: operations first touch their operands."""
    s = p._schema
    if s._next is None:
        return p
    head = s.species.head
    batch = tuple(p.batch_shape)
    return make(p, head, migrate(s, p._leaves, batch, head), batch)


def align(a: Any, b: Any, what: str) -> tuple[Any, Any]:
    """Bring two particles of one species to the same (newest) version."""
    return align_all(what, a, b)  # type: ignore[return-value]


def align_all(what: str, *ps: Any) -> tuple[Any, ...]:
    """Bring particles of one species to one version: the newest any of them reaches.

    Each is touched to the head; if another thread appended an event in between, the ones left
    behind are touched on to the newest schema seen, so the results always share one schema.
    """
    species = ps[0]._schema.species
    for q in ps[1:]:
        if q._schema.species is not species:
            raise SpeciesMismatchError(
                f"{what}: particles of different species ({species.name!r} and "
                f"{q._schema.species.name!r}) cannot be combined; derive both from one particle "
                "(p.clone(), p.randn(), nf.population(p, n)) or put a separately built module "
                "into the species with nf.from_module(module, like=p)")
    ps = tuple(at_head(q) for q in ps)
    newest = ps[0]._schema  # (a loop, not max(key=): torch.compile traces it)
    for q in ps[1:]:
        if q._schema.version > newest.version:
            newest = q._schema
    out = []
    for q in ps:
        if q._schema is not newest:
            batch = tuple(q.batch_shape)
            q = make(q, newest, migrate(q._schema, q._leaves, batch, newest), batch)
        out.append(q)
    return tuple(out)


# lifting a kernel over the operational leaves ---------------------------------------------------

def lift1(p: Any, fn: Callable[[list], Sequence[torch.Tensor]]) -> Any:
    """Apply ``fn`` to the operational leaves of ``p``; carry the others over."""
    s = p._schema
    if s.all_operational:
        return type(p)(s, tuple(fn(list(p._leaves))), p._training)
    idx = s.op_index
    out = list(p._leaves)
    if idx:
        for i, r in zip(idx, fn([out[i] for i in idx])):
            out[i] = r
    return make(p, s, tuple(out), p._batch)


def lift2(a: Any, b: Any, fn: Callable[[list, list], Sequence[torch.Tensor]]) -> Any:
    """``fn`` over the operational leaves of two particles of one schema and one batch shape."""
    s = a._schema
    if s.all_operational:
        return type(a)(s, tuple(fn(list(a._leaves), list(b._leaves))), a._training)
    idx = s.op_index
    out = list(a._leaves)
    lb = b._leaves
    if idx:
        for i, r in zip(idx, fn([out[i] for i in idx], [lb[i] for i in idx])):
            out[i] = r
    return make(a, s, tuple(out), a._batch)


def broadcast_batch(what: str, *shapes: Sequence[int]) -> tuple[int, ...]:
    """The batch shape operands of these batch shapes combine to (numpy broadcasting rules)."""
    n = max(len(x) for x in shapes)
    out = [1] * n
    for shape in shapes:
        for i, d in enumerate(shape, n - len(shape)):
            if d != out[i] and out[i] != 1 and d != 1:
                raise SchemaError(
                    f"{what}: batch shapes {' and '.join(str(tuple(x)) for x in shapes)} do not "
                    "broadcast; combine a single particle with a population, or populations of "
                    "one size")
            if out[i] == 1:
                out[i] = d
    return tuple(out)


def expand_carried(p: Any, batch: tuple[int, ...], skip: Sequence[int] = ()) -> list:
    """The leaves of ``p`` for a result of batch shape ``batch``.

    Leaves not computed by the operation (non-operational parameters, buffers: the ones not in
    ``skip``) are broadcast to ``batch`` and *copied* (``expand(...).clone()``), so every member
    of the result owns its values, as members of ``nf.population`` do: in-place updates of one
    member (``apply_with_state``, optimizers) never reach another, and the result is contiguous.
    """
    out = list(p._leaves)
    if tuple(p.batch_shape) == batch:
        return out
    skip = set(skip)
    for i, (spec, t) in enumerate(zip(p._schema.leaf_specs, out)):
        if i not in skip:
            out[i] = t.expand(*batch, *spec.shape).clone()
    return out


def lift2_mixed(a: Any, b: Any, fn: Callable[[list, list], Sequence[torch.Tensor]],
                what: str) -> Any:
    """``lift2`` for operands of different batch shapes (a single particle and a population).

    The operational leaves broadcast inside ``torch._foreach_*``; the leaves carried over from
    ``a`` are broadcast by :func:`expand_carried`, so every leaf has the result's batch shape.
    """
    s = a._schema
    la, lb = a._leaves, b._leaves
    if s.all_operational and la:
        rank = len(s.leaf_specs[0].shape)
        if la[0].dim() == rank or lb[0].dim() == rank:  # one side is a single particle: every
            return type(a)(s, tuple(fn(list(la), list(lb))), a._training)  # leaf broadcasts
    batch = broadcast_batch(what, a.batch_shape, b.batch_shape)
    idx = s.op_index
    out = expand_carried(a, batch, idx)
    if idx:
        for i, r in zip(idx, fn([la[i] for i in idx], [lb[i] for i in idx])):
            out[i] = r
    return make(a, s, tuple(out), batch)


# coefficients -------------------------------------------------------------------------------------

def _computed_complex(p: Any) -> bool:
    """Whether every leaf arithmetic computes is complex (so a complex coefficient fits)."""
    specs = p._schema.leaf_specs
    return all(specs[i].dtype.is_complex for i in p._schema.op_index)


def _complex_refused(p: Any, what: str) -> SchemaError:
    real = [s.key for i, s in enumerate(p._schema.leaf_specs)
            if i in p._schema.op_index and not s.dtype.is_complex]
    return SchemaError(f"{what}: a complex coefficient cannot be stored in the real parameters "
                       f"{real[:4]}{' ...' if len(real) > 4 else ''}; every result keeps its "
                       "parameter's dtype. Convert the species first (nf.to(p, "
                       "dtype=torch.complex64)) or use a real coefficient")


def coefficient(p: Any, other: Any, what: str, *, members: bool = True
                ) -> tuple[str, Any] | None:
    """Classify the non-particle operand of an operation: ``(kind, value)`` or None.

    ``kind`` is ``"number"`` (a Python number: int, float, or any real number converted with
    ``float``; complex numbers only for complex parameters), ``"tensor0"`` (a 0-dim tensor, one
    number for every parameter) or ``"batch"`` (one coefficient per population member; checked
    against ``p``'s batch shape unless ``members=False``). None means "not a coefficient" (the
    operator then returns NotImplemented).

    A bool (Python, numpy or a bool tensor) counts as the integer 0 or 1, for every operator
    (torch refuses ``tensor - True``, but a coefficient is cast to the leaf's dtype, where a
    bool is a number). NumPy scalars count as the Python numbers they hold, and numpy arrays
    as tensors (on the parameters' device).
    """
    if isinstance(other, np.generic):
        other = other.item()
    if isinstance(other, np.ndarray):
        other = _from_numpy(p, other, what)
    if isinstance(other, bool):
        return "number", int(other)
    if isinstance(other, torch.Tensor):
        if other.dtype == torch.bool:
            other = other.to(torch.int64)
        if other.is_complex() and not _computed_complex(p):
            raise _complex_refused(p, what)
        other = _on_device(p, other, what)
        if other.dim() == 0:
            return "tensor0", other
        if members:
            _check_members(p, other, what)
        return "batch", other
    if isinstance(other, (int, float)):
        return "number", other
    if isinstance(other, numbers.Real):  # Fraction, numpy floats, ...
        return "number", float(other)
    if isinstance(other, numbers.Complex):
        if not _computed_complex(p):
            raise _complex_refused(p, what)
        return "number", complex(other)
    if isinstance(other, numbers.Number):
        raise ArgumentTypeError(f"{what}: {type(other).__name__} {other!r} is not a real or "
                                "complex number torch can compute with; convert it with "
                                "float(...)")
    return None


def _from_numpy(p: Any, arr: np.ndarray, what: str) -> torch.Tensor:
    idx = p._schema.op_index
    device = p._schema.leaf_specs[idx[0]].device if idx else None
    try:
        return torch.as_tensor(arr, device=device)
    except (TypeError, RuntimeError) as err:
        raise ArgumentTypeError(f"{what}: a numpy array of dtype {arr.dtype} is not a number "
                                f"torch can compute with ({err}); pass a numeric array or "
                                "tensor") from None


def _check_members(p: Any, coeff: torch.Tensor, what: str) -> None:
    """A tensor operand with dims must hold one coefficient per member (a batch_shape prefix)."""
    shape = tuple(p.batch_shape)
    if coeff.dim() > len(shape) or tuple(coeff.shape) != shape[: coeff.dim()]:
        raise SchemaError(
            f"{what}: a tensor operand must be 0-dim (one number for every parameter) or hold "
            f"one coefficient per population member, shape {shape} or a prefix of it; got "
            f"shape {tuple(coeff.shape)}. Use nf.map_params for per-parameter tensors")


def per_member(coeff: torch.Tensor, leaves: Sequence[torch.Tensor]) -> list:
    """Coefficients of a batch-shape prefix viewed against each leaf, in the leaf's dtype."""
    return [coeff.to(t.dtype).reshape(coeff.shape + (1,) * (t.dim() - coeff.dim()))
            for t in leaves]


def _on_device(p: Any, coeff: torch.Tensor, what: str) -> torch.Tensor:
    """``coeff`` on the device of ``p``'s computed leaves, or a SchemaError.

    A 0-dim CPU tensor is moved (torch treats CPU scalars as numbers on any device); any other
    tensor must already be where the parameters are.
    """
    specs = p._schema.leaf_specs
    idx = p._schema.op_index
    if not idx:
        return coeff
    device = specs[idx[0]].device
    if coeff.device == device and all(specs[i].device == device for i in idx):
        return coeff
    if coeff.dim() == 0 and coeff.device.type == "cpu" and all(specs[i].device == device
                                                               for i in idx):
        return coeff.to(device)
    devices = sorted({str(specs[i].device) for i in idx})
    raise SchemaError(f"{what}: the tensor is on {coeff.device}, the parameters on "
                      f"{', '.join(devices)}; move it there first (tensor.to(device))")


# operators --------------------------------------------------------------------------------------

def binary(name: str) -> tuple[Callable, Callable]:
    """``(__name__, __rname__)`` of the operator ``name`` for a particle class."""
    list_op, scalar_op, reverse_scalar = _TABLE[name]
    label = _LABELS[name]

    def forward(self: Any, other: Any) -> Any:
        t = type(other)
        cls = type(self)
        if t is not cls:
            self = at_head(self)
        if t is float or t is int:  # the hot path: a Python number
            s = self._schema
            if s.all_operational:
                return cls(s, tuple(scalar_op(list(self._leaves), other)), self._training)
            return lift1(self, lambda xs: scalar_op(xs, other))
        if t is cls:
            a, b = self, other
            if a._schema is not b._schema or a._schema._next is not None:
                a, b = align(a, b, f"p {label} q")
            la, lb = a._leaves, b._leaves
            if la and la[0].shape == lb[0].shape:  # the hot path: one schema, one batch shape
                s = a._schema
                if s.all_operational:
                    return cls(s, tuple(list_op(list(la), list(lb))), a._training)
                return lift2(a, b, list_op)
            if la or a._batch != b._batch:
                return lift2_mixed(a, b, list_op, f"p {label} q")
            return make(a, a._schema, (), a._batch)  # no tensors: nothing to compute
        found = coefficient(self, other, f"p {label} x")
        if found is None:
            return NotImplemented
        kind, value = found
        if kind == "batch":
            return lift1(self, lambda xs: list_op(xs, per_member(value, xs)))
        return lift1(self, lambda xs: scalar_op(xs, value))

    def reverse(self: Any, other: Any) -> Any:
        t = type(other)
        self = at_head(self)
        if t is float or t is int:  # the hot path
            s = self._schema
            if s.all_operational:
                return type(self)(s, tuple(reverse_scalar(other, list(self._leaves))),
                                  self._training)
            return lift1(self, lambda xs: reverse_scalar(other, xs))
        found = coefficient(self, other, f"x {label} p")
        if found is None:
            return NotImplemented
        kind, value = found
        if kind == "batch":
            return lift1(self, lambda xs: list_op(per_member(value, xs), xs))
        return lift1(self, lambda xs: reverse_scalar(value, xs))

    forward.__name__ = f"__{name}__"
    reverse.__name__ = f"__r{name}__"
    forward.__doc__ = f"``p {label} q`` over the operational parameters (q: particle or number)."
    reverse.__doc__ = f"``x {label} p`` over the operational parameters (x: a number)."
    return forward, reverse


def _tensor_operators() -> tuple[tuple[Callable, str, bool], ...]:
    """``(function, operator, reflected)`` for every form torch routes a tensor operator through.

    ``reflected``: the function computes ``args[1] op args[0]`` (``Tensor.__rsub__``).
    """
    base = torch._C.TensorBase
    out = []
    for op, method in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("truediv", "div"),
                       ("pow", "pow")):
        for fn in (getattr(torch.Tensor, f"__{op}__"), getattr(base, f"__{op}__", None),
                   getattr(base, method), getattr(torch, method)):
            if fn is not None:
                out.append((fn, op, False))
        for fn in (getattr(torch.Tensor, f"__r{op}__", None), getattr(base, f"__r{op}__", None)):
            if fn is not None:
                out.append((fn, op, True))
    return tuple(out)


_TENSOR_OPERATORS = _tensor_operators()


def torch_function(cls: type, func: Callable, types: Any, args: tuple = (),
                   kwargs: dict | None = None) -> Any:
    """``Particle.__torch_function__``: a tensor operator met a particle; run the particle's.

    ``tensor * p`` reaches here in eager mode, and under ``torch.compile`` dynamo routes every
    operator with a tensor operand (``p * w`` with per-member coefficients ``w`` included)
    through it, so those trace into one graph. The lookup is identity comparisons over a tuple
    of constants, which dynamo folds. Every other torch function refuses particles.
    """
    if not kwargs and len(args) == 2:
        for fn, op, reflected in _TENSOR_OPERATORS:
            if func is fn:
                x, y = (args[1], args[0]) if reflected else args
                if isinstance(x, cls):
                    return getattr(x, f"__{op}__")(y)
                return getattr(y, f"__r{op}__")(x)
    return NotImplemented


def _rsub(s, xs):
    return fe_add(fe_neg(xs), s)


def _rdiv(s, xs):
    return fe_mul(fe_reciprocal(xs), s)


def _rpow(s, xs):
    if isinstance(s, torch.Tensor):
        return fe_pow([s] * len(xs), xs)
    return fe_pow(s, xs)


_TABLE = {
    "add": (fe_add, fe_add, lambda s, xs: fe_add(xs, s)),
    "sub": (fe_sub, fe_sub, _rsub),
    "mul": (fe_mul, fe_mul, lambda s, xs: fe_mul(xs, s)),
    "truediv": (fe_div, fe_div, _rdiv),
    "pow": (fe_pow, fe_pow, _rpow),
}
_LABELS = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "pow": "**"}


def _abs_kernel(xs: list) -> list:
    """``abs`` keeping each leaf's dtype: the magnitude of a complex leaf stays complex."""
    out = fe_abs(xs)
    return [r if r.dtype == x.dtype else r.to(x.dtype) for r, x in zip(out, xs)]


_UNARY = {"neg": (fe_neg, "-p"), "pos": (list, "+p"), "abs": (_abs_kernel, "abs(p)")}


def unary(name: str) -> Callable:
    """``__neg__``, ``__pos__`` or ``__abs__`` for a particle class."""
    kernel, label = _UNARY[name]

    def op(self: Any) -> Any:
        return lift1(at_head(self), kernel)

    op.__name__ = f"__{name}__"
    op.__doc__ = f"``{label}`` over the operational parameters."
    return op


# values made from nothing -------------------------------------------------------------------------

def check_generator(generator: Any, what: str) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"{what}: generator must be a torch.Generator or None, got "
                                f"{type(generator).__name__}; e.g. "
                                "torch.Generator().manual_seed(0)")


def fill(p: Any, make_value: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``p`` with every operational leaf replaced by ``make_value(leaf)`` (same shape, dtype).

    Works inside torch.func transforms: there the value is not made a leaf that requires grad
    (the transform tracks it), and random draws follow vmap's ``randomness`` setting.
    """
    p = at_head(p)
    s = p._schema
    out = list(p._leaves)
    track = not transforms_active()
    for i in s.op_index:
        t = out[i]
        new = make_value(t)
        if track and t.requires_grad and new.is_leaf:
            new = new.requires_grad_(True)
        out[i] = new
    return make(p, s, tuple(out), p._batch)
