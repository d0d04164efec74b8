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
    from ._particle import Particle

__all__ = ["install", "map_params", "randn_like", "rand_like", "zeros_like", "full_like"]

Leaves = Sequence[torch.Tensor]
_transforms_active = torch._C._are_functorch_transforms_active


def _vmappable(foreach_fn: Callable, one: Callable) -> Callable:
    """``foreach_fn``, or a per-tensor ``one`` loop inside torch.func transforms.

    torch has no vmap batching rule for ``torch._foreach_*``; inside ``vmap``/``grad`` the
    operation runs tensor by tensor instead, so particle arithmetic works in any transformed
    function. Outside transforms (and under ``torch.compile``) it is the one foreach call.
    """

    def call(*args: Any) -> Any:
        if _transforms_active():
            n = next(len(a) for a in args if isinstance(a, (list, tuple)))
            return [one(*(a[i] if isinstance(a, (list, tuple)) else a for a in args))
                    for i in range(n)]
        return foreach_fn(*args)

    call.__name__ = foreach_fn.__name__
    return call


fe_add = _vmappable(torch._foreach_add, torch.add)
fe_sub = _vmappable(torch._foreach_sub, torch.sub)
fe_mul = _vmappable(torch._foreach_mul, torch.mul)
fe_div = _vmappable(torch._foreach_div, torch.div)
fe_pow = _vmappable(torch._foreach_pow, torch.pow)
fe_neg = _vmappable(torch._foreach_neg, torch.neg)
fe_abs = _vmappable(torch._foreach_abs, torch.abs)
fe_reciprocal = _vmappable(torch._foreach_reciprocal, torch.reciprocal)
fe_lerp = _vmappable(torch._foreach_lerp, torch.lerp)


_Particle: type = object  # set by install(); avoids an import on the hot path


def _fresh(p: "Particle") -> "Particle":
    """``p`` at its species' newest version: operations first touch their operands."""
    if p._schema._next is None:
        return p
    from ._touch import touch

    return touch(p)


def _make(schema, leaves, training, batch=None):
    return _Particle(schema, leaves, training, batch if not leaves else None)


def _lift1(p: "Particle", fn: Callable[[list], Sequence[torch.Tensor]]) -> "Particle":
    """Apply ``fn`` to the operational leaves of ``p``; carry the others over."""
    s = p._schema
    if s.all_operational:
        return _Particle(s, tuple(fn(list(p._leaves))), p._training)
    idx = s.op_index
    out = list(p._leaves)
    if idx:
        for i, r in zip(idx, fn([out[i] for i in idx])):
            out[i] = r
    return _make(s, tuple(out), p._training, p._batch)


def _lift2(a: "Particle", b: "Particle", fn: Callable[[list, list], Sequence[torch.Tensor]]) -> "Particle":
    """``fn`` over the operational leaves of two particles of one schema and one batch shape."""
    s = a._schema
    if s.all_operational:
        return _Particle(s, tuple(fn(list(a._leaves), list(b._leaves))), a._training)
    idx = s.op_index
    out = list(a._leaves)
    lb = b._leaves
    if idx:
        for i, r in zip(idx, fn([out[i] for i in idx], [lb[i] for i in idx])):
            out[i] = r
    return _make(s, tuple(out), a._training, a._batch)


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


def expand_carried(p: "Particle", batch: tuple[int, ...], skip: Sequence[int] = ()) -> list:
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


def _lift2_mixed(a: "Particle", b: "Particle", fn: Callable[[list, list], Sequence[torch.Tensor]],
                 what: str) -> "Particle":
    """``_lift2`` for operands of different batch shapes (a single particle and a population).

    The operational leaves broadcast inside ``torch._foreach_*``; the leaves carried over from
    ``a`` are broadcast by :func:`expand_carried`, so every leaf has the result's batch shape.
    """
    s = a._schema
    la, lb = a._leaves, b._leaves
    if s.all_operational and la:
        rank = len(s.leaf_specs[0].shape)
        if la[0].dim() == rank or lb[0].dim() == rank:  # one side is a single particle: every
            return _Particle(s, tuple(fn(list(la), list(lb))), a._training)  # leaf broadcasts
    batch = broadcast_batch(what, a.batch_shape, b.batch_shape)
    idx = s.op_index
    out = expand_carried(a, batch, idx)
    lb = b._leaves
    if idx:
        for i, r in zip(idx, fn([a._leaves[i] for i in idx], [lb[i] for i in idx])):
            out[i] = r
    return _make(s, tuple(out), a._training, batch)


def align(a: "Particle", b: "Particle", what: str) -> tuple["Particle", "Particle"]:
    """Bring two particles of one species to the same (newest) version."""
    return align_all(what, a, b)  # type: ignore[return-value]


def align_all(what: str, *ps: "Particle") -> tuple["Particle", ...]:
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
                "(p.clone(), p.randn(), nf.population(p, n)) or rebuild one with nf.from_module")
    from ._touch import touch

    ps = tuple(touch(q) for q in ps)
    newest = max((q._schema for q in ps), key=lambda s: s.version)
    return tuple(q if q._schema is newest else touch(q, to=newest) for q in ps)


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


def _on_device(p: "Particle", coeff: torch.Tensor, name: str) -> torch.Tensor:
    """``coeff`` on the device of ``p``'s computed leaves, or a SchemaError.

    A 0-dim CPU tensor is moved (torch treats CPU scalars as numbers on any device); any other
    tensor must already be where the parameters are.
    """
    leaves = p._leaves
    devices = {leaves[i].device for i in p._schema.op_index}
    if not devices or devices == {coeff.device}:
        return coeff
    if coeff.dim() == 0 and coeff.device.type == "cpu" and len(devices) == 1:
        return coeff.to(next(iter(devices)))
    raise SchemaError(
        f"p {name} tensor: the tensor is on {coeff.device}, the parameters on "
        f"{', '.join(sorted(map(str, devices)))}; move it there first (tensor.to(device))")


def _binary(name: str, list_op: Callable, scalar_op: Callable, reverse_scalar: Callable | None):
    def forward(self: "Particle", other: Any) -> "Particle":
        t = type(other)
        if t is not _Particle:
            self = _fresh(self)
        if t is float or t is int:  # the hot path: a Python number
            s = self._schema
            if s.all_operational:
                return _Particle(s, tuple(scalar_op(list(self._leaves), other)), self._training)
            return _lift1(self, lambda xs: scalar_op(xs, other))
        if t is _Particle:
            a, b = self, other
            if a._schema is not b._schema or a._schema._next is not None:
                a, b = align(a, b, f"p {name} q")
            la, lb = a._leaves, b._leaves
            if la and la[0].shape == lb[0].shape:  # the hot path: one schema, one batch shape
                s = a._schema
                if s.all_operational:
                    return _Particle(s, tuple(list_op(list(la), list(lb))), a._training)
                return _lift2(a, b, list_op)
            if la or a._batch != b._batch:
                return _lift2_mixed(a, b, list_op, f"p {name} q")
            return _make(a._schema, (), a._training, a._batch)  # no tensors: nothing to compute
        kind = _scalar_kind(other)
        if kind is None:
            return NotImplemented
        if kind != "number":
            other = _on_device(self, other, name)
        if kind == "batch":
            _check_members(self, other, name)
            return _lift1(self, lambda xs: list_op(xs, _per_member(other, xs)))
        return _lift1(self, lambda xs: scalar_op(xs, other))

    def reverse(self: "Particle", other: Any) -> "Particle":
        t = type(other)
        self = _fresh(self)
        if (t is float or t is int) and reverse_scalar is not None:  # the hot path
            s = self._schema
            if s.all_operational:
                return _Particle(s, tuple(reverse_scalar(other, list(self._leaves))),
                                 self._training)
            return _lift1(self, lambda xs: reverse_scalar(other, xs))
        kind = _scalar_kind(other)
        if kind is None or reverse_scalar is None:
            return NotImplemented
        if kind != "number":
            other = _on_device(self, other, f"r{name}")
        if kind == "batch":
            _check_members(self, other, f"r{name}")
            return _lift1(self, lambda xs: list_op(_per_member(other, xs), xs))
        return _lift1(self, lambda xs: reverse_scalar(other, xs))

    forward.__name__ = f"__{name}__"
    reverse.__name__ = f"__r{name}__"
    return forward, reverse


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


def _neg(self: "Particle") -> "Particle":
    return _lift1(_fresh(self), fe_neg)


def _pos(self: "Particle") -> "Particle":
    return _lift1(_fresh(self), list)


def _abs(self: "Particle") -> "Particle":
    return _lift1(_fresh(self), fe_abs)


# copies and random particles ------------------------------------------------------------------

def _clone(self: "Particle") -> "Particle":
    """A particle of the same species whose leaves are fresh copies (autograd history kept)."""
    self = _fresh(self)
    return _make(self._schema, tuple(t.clone() for t in self._leaves), self._training, self._batch)


def _detach(self: "Particle") -> "Particle":
    """The same values with autograd history cut (``Tensor.detach`` on every leaf)."""
    self = _fresh(self)
    return _make(self._schema, tuple(t.detach() for t in self._leaves), self._training, self._batch)


def _check_particle(p: Any, what: str) -> None:
    if not isinstance(p, _Particle):
        raise NytorchFuncError(f"{what}: expected a Particle (from nf.from_module), got "
                               f"{type(p).__name__}")


def _check_generator(generator: Any, what: str) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SchemaError(f"{what}: generator must be a torch.Generator or None, got "
                          f"{type(generator).__name__}; e.g. torch.Generator().manual_seed(0)")


def _fill(p: "Particle", make: Callable[[torch.Tensor], torch.Tensor]) -> "Particle":
    p = _fresh(p)
    s = p._schema
    out = list(p._leaves)
    for i in s.op_index:
        t = out[i]
        out[i] = make(t).requires_grad_(t.requires_grad)
    return _make(s, tuple(out), p._training, p._batch)


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
    _check_particle(p, "randn_like")
    _check_generator(generator, "randn_like")
    return _fill(p, lambda t: torch.randn(t.shape, generator=generator, dtype=t.dtype,
                                          device=t.device))


def rand_like(p: "Particle", *, generator: torch.Generator | None = None) -> "Particle":
    """Operational parameters drawn from U[0, 1); everything else carried over.

    >>> import torch, nytorch_func as nf
    >>> q = nf.rand_like(nf.from_module(torch.nn.Linear(2, 2)))
    >>> bool(((q["weight"] >= 0) & (q["weight"] < 1)).all())
    True
    """
    _check_particle(p, "rand_like")
    _check_generator(generator, "rand_like")
    return _fill(p, lambda t: torch.rand(t.shape, generator=generator, dtype=t.dtype,
                                         device=t.device))


def zeros_like(p: "Particle") -> "Particle":
    """Operational parameters set to zero; everything else carried over.

    >>> import torch, nytorch_func as nf
    >>> nf.zeros_like(nf.from_module(torch.nn.Linear(2, 1)))["bias"]
    tensor([0.], requires_grad=True)
    """
    _check_particle(p, "zeros_like")
    return _fill(p, lambda t: torch.zeros_like(t))


def full_like(p: "Particle", value: float) -> "Particle":
    """Operational parameters set to ``value`` (a Python number); everything else carried over.

    >>> import torch, nytorch_func as nf
    >>> nf.full_like(nf.from_module(torch.nn.Linear(2, 1)), 0.5)["bias"]
    tensor([0.5000], requires_grad=True)
    """
    _check_particle(p, "full_like")
    if not isinstance(value, numbers.Number):
        raise SchemaError(f"full_like: value must be a Python number, got {type(value).__name__}"
                          f" ({value!r})")
    return _fill(p, lambda t: torch.full_like(t, value))


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
    from ._touch import touch

    if not callable(fn):
        raise NytorchFuncError(f"map_params: fn must be callable as fn(tensor, *others, config), "
                               f"got {type(fn).__name__}; note the order map_params(fn, p, ...)")
    _check_particle(p, "map_params")
    for o in others:
        _check_particle(o, "map_params")
    p = touch(p)  # operations bring their operands to the newest version first
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
            raise NytorchFuncError(f"map_params: fn returned {type(result).__name__} for "
                                   f"{spec.key!r}; it must return a tensor")
        shape = (*batch, *spec.shape)
        if tuple(result.shape) != shape or result.dtype != t.dtype:
            raise SchemaError(f"map_params: fn returned shape {tuple(result.shape)}, dtype "
                              f"{result.dtype} for {spec.key!r}; it must keep shape {shape} and "
                              f"dtype {t.dtype}")
        out[i] = result
    return _make(s, tuple(out), p._training, batch)


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
