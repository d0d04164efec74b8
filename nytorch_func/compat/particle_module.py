"""``nytorch.particle_module`` names: :class:`ParticleModule`, :class:`PMProduct`, :class:`GetNytoModule`.

In nytorch, ``ParticleModule`` exists to break the reference cycles of NytoModule; ours has
none, so here it is a plain wrapper that only *locks* structural edits of the wrapped root
(``clear_kernel_ref``) until they are unlocked (``restore_kernel_ref`` / ``GetNytoModule``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .._errors import NytorchFuncError, SchemaError
from .._facade import NytoModule, ParamProduct, handle_of as _handle_of, install_operators

__all__ = ["ParticleModule", "PMProduct", "GetNytoModule"]


class PMProduct:
    """A :class:`ParamProduct` whose :meth:`module` gives a :class:`ParticleModule`.

    >>> import torch
    >>> import nytorch_func.compat as nyto
    >>> class Net(nyto.NytoModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.tensor([1.]))
    >>> pm = nyto.ParticleModule(Net())
    >>> out = (2 * pm.product() + 1).module()
    >>> type(out).__name__, out.root_module.w.item()
    ('ParticleModule', 3.0)
    """

    __slots__ = ("product",)

    def __init__(self, product: ParamProduct) -> None:
        if not isinstance(product, ParamProduct):
            raise NytorchFuncError(f"PMProduct: expected a ParamProduct, got {type(product).__name__}")
        self.product = product

    @classmethod
    def from_ParamProduct(cls, product: ParamProduct) -> "PMProduct":
        return cls(product)

    def particle(self) -> "ParticleModule":
        return ParticleModule(self.product.module())

    def module(self) -> "ParticleModule":
        return self.particle()

    def _wrap(self, product: Any) -> Any:
        return product if product is NotImplemented else type(self).from_ParamProduct(product)

    def unary_operator(self, fn: Callable) -> "PMProduct":
        return self._wrap(self.product.unary_operator(fn))

    def binary_operator(self, other: "PMProduct", fn: Callable) -> "PMProduct":
        if not isinstance(other, PMProduct):
            raise NytorchFuncError(f"binary_operator: other must be a PMProduct, got "
                                   f"{type(other).__name__}")
        return self._wrap(self.product.binary_operator(other.product, fn))

    def clone(self) -> "PMProduct":
        return self._wrap(self.product.clone())

    def randn(self) -> "PMProduct":
        return self._wrap(self.product.randn())

    def rand(self) -> "PMProduct":
        return self._wrap(self.product.rand())

    def __neg__(self) -> "PMProduct":
        return self._wrap(-self.product)

    def __pos__(self) -> "PMProduct":
        return self.clone()


install_operators(
    PMProduct,
    lambda self, other, op: self._wrap(
        op(self.product, other.product if isinstance(other, PMProduct) else other)),
    lambda self, other, op: self._wrap(op(other, self.product)))


class ParticleModule(nn.Module):
    """Wraps a root NytoModule; particle operations give new ParticleModules.

    >>> import torch
    >>> import nytorch_func.compat as nyto
    >>> class Net(nyto.NytoModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(2, 1)
    ...     def forward(self, x):
    ...         return self.lin(x)
    >>> pm = nyto.ParticleModule(Net())
    >>> (pm + 1)(torch.ones(3, 2)).shape
    torch.Size([3, 1])
    >>> with nyto.GetNytoModule(pm) as root:
    ...     root.extra = torch.nn.Linear(1, 1)
    >>> hasattr(pm.root_module, "extra")
    True
    """

    def __init__(self, root_module: NytoModule) -> None:
        if not isinstance(root_module, NytoModule):
            raise SchemaError(f"ParticleModule: expected a NytoModule, got {type(root_module).__name__}")
        h, path = _handle_of(root_module)
        if path:
            raise SchemaError(f"ParticleModule: wrap the root module of a particle, not the "
                              f"submodule at {path!r}")
        super().__init__()
        self.root_module = root_module
        self.clear_kernel_ref()

    @property
    def particle_kernel(self):
        return _handle_of(self.root_module)[0]

    def clear_kernel_ref(self) -> None:
        """Lock structural edits of the wrapped module (nytorch: drop the kernel references)."""
        _handle_of(self.root_module)[0].locked = True

    def restore_kernel_ref(self) -> None:
        """Unlock structural edits of the wrapped module."""
        _handle_of(self.root_module)[0].locked = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.root_module(*args, **kwargs)

    def product(self) -> PMProduct:
        return PMProduct(self.root_module.product())

    def product_(self, product: PMProduct) -> "ParticleModule":
        self.root_module.product_(product.product)
        return self

    def _op(self, fn: Callable[[NytoModule], Any]) -> Any:
        out = fn(self.root_module)
        return out if out is NotImplemented else ParticleModule(out)

    def clone(self) -> "ParticleModule":
        return self._op(lambda m: m.clone())

    def randn(self) -> "ParticleModule":
        return self._op(lambda m: m.randn())

    def rand(self) -> "ParticleModule":
        return self._op(lambda m: m.rand())

    def detach(self) -> "ParticleModule":
        return self._op(lambda m: m.detach())

    def clone_from(self, source: "ParticleModule") -> "ParticleModule":
        if not isinstance(source, ParticleModule):
            raise SchemaError(f"clone_from: expected a ParticleModule, got {type(source).__name__}")
        out = self.clone()
        out.load_state_dict(source.state_dict())
        return out

    def touch(self) -> "ParticleModule":
        with GetNytoModule(self) as root:
            root.touch()
        return self

    def __neg__(self) -> "ParticleModule":
        return self._op(lambda m: -m)

    def __pos__(self) -> "ParticleModule":
        return self.clone()


def _pm_unwrap(other: Any) -> Any:
    return other.root_module if isinstance(other, ParticleModule) else other


def _pm_inplace(self: "ParticleModule", other: Any, op: Callable) -> "ParticleModule":
    other = _pm_unwrap(other)
    self.root_module.product_(op(self.root_module.product(),
                                 other.product() if isinstance(other, NytoModule) else other))
    return self


install_operators(ParticleModule,
                  lambda self, other, op: self._op(lambda m: op(m, _pm_unwrap(other))),
                  lambda self, other, op: self._op(lambda m: op(other, m)),
                  _pm_inplace)


class GetNytoModule:
    """``with GetNytoModule(pm) as root:`` unlocks structural edits of ``pm.root_module``."""

    __slots__ = ("_module",)

    def __init__(self, particle_module: ParticleModule) -> None:
        if not isinstance(particle_module, ParticleModule):
            raise SchemaError(f"GetNytoModule: expected a ParticleModule, got "
                              f"{type(particle_module).__name__}")
        self._module = particle_module

    def __enter__(self) -> NytoModule:
        self._module.restore_kernel_ref()
        return self._module.root_module

    def __exit__(self, *exc: Any) -> None:
        self._module.clear_kernel_ref()
