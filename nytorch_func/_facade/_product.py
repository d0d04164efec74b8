"""ParamProduct: a NytoModule's particle as a value, with nytorch's product API.

A product holds the core particle of one tree (the module's very tensors). Arithmetic on
products is core particle arithmetic without autograd, shaped as nytorch shapes it: computed
parameters become ``nn.Parameter``, a parameter the operation does not compute is a copy of the
left operand's (nytorch's ``clone=True``) or that very tensor (``clone=False``), buffers are the
very tensors. ``unary_operator``/``binary_operator`` call ``fn(param, [other,] config)`` for
every parameter in id order, as nytorch does; :meth:`ParamProduct.module` puts the product's
tensors into a new module tree as they are.
"""

from __future__ import annotations

import operator
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._errors import NytorchFuncError, SchemaError
from .._arith import align
from .._particle import Particle
from .._touch import touch
from ._config import MutableParamConfig, carried_copy
from ._handle import TAGS, NytoModuleBase
from ._plan import AS_IS, as_param
from ._write import from_particle

__all__ = ["ParamProduct", "install_operators", "shape_result"]

_P = nn.Parameter
_T = torch.Tensor


def shape_result(q: Particle, copy_computed: bool = False) -> Particle:
    """An operation's result ``q`` as nytorch shapes it (see the module docstring).

    ``copy_computed``: the computed leaves are the source's own tensors (``+p``), copy them.
    """
    s = q._schema
    ops = set(s.op_index)
    out = []
    for i, (spec, t) in enumerate(zip(s.leaf_specs, q._leaves)):
        if spec.kind != "param":
            out.append(t)
        elif i in ops:
            out.append(_fresh_param(t.detach().clone() if copy_computed else t, spec.requires_grad))
        elif carried_copy(spec.config):
            out.append(_fresh_param(t.detach().clone(), spec.requires_grad))
        else:
            out.append(t)
    return Particle._make(s, tuple(out), q._training, q._batch)


def _fresh_param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    if type(t) is _T:  # nobody else holds it: make it a Parameter in place
        t.__class__ = _P
        if requires_grad:
            t.requires_grad_(True)
        return t  # type: ignore[return-value]
    return as_param(t, requires_grad)


class ParamProduct:
    """A NytoModule's particle as a value (nytorch's ``ParamProduct``).

    Chain arithmetic on products and turn the result into a module once with
    :meth:`module`, skipping the intermediate modules. ``particle`` is the core
    :class:`~nytorch_func.Particle`; ``path`` names the module :meth:`module` returns.

    >>> import torch, nytorch_func as nf
    >>> class Net(nf.NytoModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.tensor([0., 1., 2.]))
    >>> net = Net()
    >>> (2 * net.product() + 5).module().w
    Parameter containing:
    tensor([5., 7., 9.], requires_grad=True)
    >>> net.product().params[0] is net.w
    True
    """

    __slots__ = ("particle", "path", "_root")

    def __init__(self, particle: Particle, path: str = "", root: nn.Module | None = None) -> None:
        if not isinstance(particle, Particle):
            raise NytorchFuncError(f"ParamProduct: expected a Particle, got {type(particle).__name__}")
        self.particle = particle
        self.path = path
        self._root = None if root is None else weakref.ref(root)

    def _new(self, particle: Particle) -> "ParamProduct":
        out = ParamProduct(particle, self.path)
        out._root = self._root
        return out

    @property
    def params(self) -> "OrderedDict[int, torch.Tensor]":
        """``{param id: tensor}`` in id order (nytorch's ParamDict)."""
        p = self.particle
        named = p.params
        return OrderedDict((spec.pid, named[spec.key])
                           for spec in sorted(p.schema.params, key=lambda s: s.pid))

    def __repr__(self) -> str:
        return f"ParamProduct({self.particle!r}, path={self.path!r})"

    def module(self) -> Any:
        """A new NytoModule (same species and version) holding this product's tensors as they are."""
        q = self.particle
        root = None if self._root is None else self._root()
        tag = None if root is None else TAGS.get(root)
        plan = None if tag is None else tag[0].plan
        got = None if plan is None or plan.schema is not q._schema else plan.read()
        if got is not None:
            new_root = plan.build(got[0], q, AS_IS)
        else:
            new_root = from_particle(q)
        return new_root.get_submodule(self.path) if self.path else new_root

    particle_module = module

    def unary_operator(self, fn: Callable[[torch.Tensor, Any], torch.Tensor]) -> "ParamProduct":
        """``fn(param, config) -> new param`` for every parameter in id order (no grad)."""
        if not callable(fn):
            raise NytorchFuncError(f"unary_operator: fn must be callable as fn(param, config), "
                                   f"got {type(fn).__name__}")
        with torch.no_grad():
            return self._new(_map(fn, self.particle, None))

    def binary_operator(self, other: "ParamProduct",
                        fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]) -> "ParamProduct":
        """``fn(mine, theirs, config) -> new param`` for every parameter in id order (no grad)."""
        if not isinstance(other, ParamProduct):
            raise NytorchFuncError(f"binary_operator: other must be a ParamProduct, got "
                                   f"{type(other).__name__}")
        if not callable(fn):
            raise NytorchFuncError(f"binary_operator: fn must be callable as fn(param, other, "
                                   f"config), got {type(fn).__name__}")
        p, o = self.particle, other.particle
        if o._schema is not p._schema or p._schema._next is not None:
            p, o = align(p, o, "binary_operator")
        with torch.no_grad():
            return self._new(_map(fn, p, o))

    def clone(self) -> "ParamProduct":
        return self._new(shape_result(+self.particle, copy_computed=True))

    def randn(self) -> "ParamProduct":
        return self._new(shape_result(self.particle.randn()))

    def rand(self) -> "ParamProduct":
        return self._new(shape_result(self.particle.rand()))

    def __pos__(self) -> "ParamProduct":
        return self.clone()

    def __neg__(self) -> "ParamProduct":
        with torch.no_grad():
            return self._new(shape_result(-self.particle))


def _map(fn: Callable, p: Particle, other: Particle | None) -> Particle:
    """``fn`` over every per-particle parameter of ``p`` in id order; checked against the schema."""
    p = touch(p)
    s = p._schema
    leaves = list(p._leaves)
    for spec in sorted((x for x in s.leaf_specs if x.kind == "param"), key=lambda x: x.pid):
        i = s.leaf_index[spec.key]
        args = (leaves[i],) if other is None else (p._leaves[i], other._leaves[i])
        value = fn(*args, MutableParamConfig.of(spec.config))
        if not isinstance(value, torch.Tensor):
            raise SchemaError(f"ParamProduct: fn must return a tensor (nn.Parameter) for "
                              f"{spec.key!r}, got {type(value).__name__}")
        if tuple(value.shape) != tuple(p.batch_shape) + spec.shape or value.dtype != spec.dtype:
            raise SchemaError(f"ParamProduct: fn returned shape {tuple(value.shape)}, dtype "
                              f"{value.dtype} for {spec.key!r}; it must keep shape {spec.shape} "
                              f"and dtype {spec.dtype}")
        leaves[i] = value
    return Particle._make(s, tuple(leaves), p._training, p._batch)


def install_operators(cls: type, forward: Callable, reverse: Callable,
                      inplace: Callable | None = None) -> None:
    """Give ``cls`` nytorch's operator set: ``__op__``, ``__rop__`` (and ``__iop__``) for
    ``+ - * / **``, each calling ``forward/reverse/inplace(self, other, operator_function)``."""
    for name in ("add", "sub", "mul", "truediv", "pow"):
        op = getattr(operator, name)
        kinds = [("", forward), ("r", reverse)] + ([("i", inplace)] if inplace else [])
        for prefix, impl in kinds:
            def dunder(self, other, _impl=impl, _op=op):
                return _impl(self, other, _op)

            dunder.__name__ = f"__{prefix}{name}__"
            setattr(cls, dunder.__name__, dunder)


def _product_forward(self: ParamProduct, other: Any, op: Callable) -> Any:
    if isinstance(other, ParamProduct):
        other = other.particle
    elif isinstance(other, (NytoModuleBase, Particle)):
        return NotImplemented
    with torch.no_grad():
        out = op(self.particle, other)
    return NotImplemented if out is NotImplemented else self._new(shape_result(out))


def _product_reverse(self: ParamProduct, other: Any, op: Callable) -> Any:
    if isinstance(other, (NytoModuleBase, Particle, ParamProduct)):
        return NotImplemented
    with torch.no_grad():
        out = op(other, self.particle)
    return NotImplemented if out is NotImplemented else self._new(shape_result(out))


install_operators(ParamProduct, _product_forward, _product_reverse)
