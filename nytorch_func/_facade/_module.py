"""NytoModule: an ``nn.Module`` that is a particle. Every method delegates to its room:
reading and touching (``_sync``), structural edits (``_assign``), operations (``_operate``),
products (``_product``), configs (``_config``)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import _edit
from .._errors import NytorchFuncError, SchemaError, VersionError
from .._events import Event
from .._particle import Particle
from .._schema import Schema, computable
from ._assign import (AttributeExistsError, CannotAssignError, kind_at, put, remove, set_none,
                      warn_if_circular, warn_if_shared)
from ._bind import handle_of, root_of
from ._config import MutableParamConfig, to_core
from ._handle import LOCKED, TAGS, NytoModuleBase, ParticleHandle, note_registration
from ._operate import assign_values, binary, detach, inplace, unary
from ._plan import CLONE, DEFERRED, deferrable, materialize
from ._product import ParamProduct
from ._sync import current
from ._write import from_particle, write_back

__all__ = ["NytoModule"]


class NytoModule(NytoModuleBase):
    """An ``nn.Module`` that is a particle: arithmetic between models and species-wide edits.

    Subclass it as you would ``nn.Module``. Particles derived from one module (``clone``,
    ``randn``, arithmetic) form a species; adding or deleting a parameter, buffer or submodule
    on one of them is an event for the whole species, which the others apply when touched
    (explicitly with :meth:`touch`, or implicitly by their next particle operation).

    >>> import torch, nytorch_func as nf
    >>> class Linear(nf.NytoModule):
    ...     def __init__(self, w, b):
    ...         super().__init__()
    ...         self.weight = torch.nn.Parameter(torch.tensor([w]))
    ...         self.bias = torch.nn.Parameter(torch.tensor([b]))
    >>> net1 = Linear(2., 1.)
    >>> (net1 + 10).weight
    Parameter containing:
    tensor([12.], requires_grad=True)
    >>> net2 = net1.randn()
    >>> del net1.weight
    >>> hasattr(net2, "weight"), hasattr(net2.touch(), "weight")
    (True, False)
    """

    # -- identity -------------------------------------------------------------------------------
    @property
    def _particle_kernel(self) -> ParticleHandle | None:
        """The per-particle handle shared by this particle's root and its NytoModules."""
        h, _ = handle_of(self)
        return None if h.locked else h

    @property
    def _version_kernel(self) -> Schema:
        """The core Schema of this particle's version (``.is_newest`` tells if it is the head)."""
        return current(self, touch=False)[1].schema

    @property
    def is_root(self) -> bool:
        """Whether this module is its particle's root module."""
        return handle_of(self)[1] == ""

    # -- bridges --------------------------------------------------------------------------------
    def to_particle(self) -> Particle:
        """The core particle this module's tree holds (its root's; same species and version).

        The particle views the module's own tensors (no copy).

        >>> import torch, nytorch_func as nf
        >>> class Net(nf.NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 1)
        >>> net = Net()
        >>> p = net.to_particle()
        >>> p.schema is net._version_kernel, p["lin.weight"] is net.lin.weight
        (True, True)
        >>> back = nf.NytoModule.from_particle(p * 2)
        >>> type(back).__name__, torch.equal(back.lin.weight, 2 * net.lin.weight)
        ('Net', True)
        """
        return current(self, touch=False)[3]

    def __nytorch_particle__(self) -> Particle:
        return self.to_particle()

    def __nytorch_module__(self) -> nn.Module:
        tag = TAGS.get(self)
        if tag is not None and tag[0].root is not None:
            current(self, touch=True)
        return self

    @staticmethod
    def from_particle(p: Particle, *, copy: bool = False) -> "NytoModule":
        """A NytoModule holding ``p`` (same species and version).

        The species must come from a NytoModule (its skeleton's root class). With
        ``copy=False`` the module shares storage with ``p``.
        """
        if not isinstance(p, Particle):
            raise NytorchFuncError(f"from_particle: expected a Particle, got {type(p).__name__}")
        if not isinstance(p._schema._skeleton, NytoModuleBase):
            raise SchemaError(f"from_particle: the species root is a "
                              f"{type(p._schema._skeleton).__name__}, not a NytoModule; use "
                              "nf.to_module(p) for a plain module")
        if p.batch_shape:
            raise SchemaError(f"from_particle: the particle is a population with batch shape "
                              f"{tuple(p.batch_shape)}; take one member first (pop[i])")
        return from_particle(p, copy=copy)  # type: ignore[return-value]

    # -- versions -------------------------------------------------------------------------------
    def touch(self):
        """Bring this particle to the newest version of its species (in place); returns self."""
        _, h, _ = root_of(self)
        if h.locked:
            raise VersionError(LOCKED)
        current(self, touch=True)
        return self

    # -- particle operations --------------------------------------------------------------------
    def product(self) -> ParamProduct:
        """This particle as a :class:`ParamProduct` (touched to the newest version first)."""
        root, _, path, p, _ = current(self)
        return ParamProduct(p, path, root)

    def product_(self, product: ParamProduct):
        """Copy ``product``'s values into this module's parameters in place; returns self."""
        q = product.particle if isinstance(product, ParamProduct) else product
        assign_values(self, q, "product_")
        return self

    def clone(self):
        """A new particle of the same species with copied values (buffers are shared)."""
        return unary(self, operator.pos, CLONE)

    def randn(self):
        """A new particle of the species with operational parameters drawn from N(0, 1)."""
        return unary(self, lambda p: p.randn())

    def rand(self):
        """A new particle of the species with operational parameters drawn from U[0, 1)."""
        return unary(self, lambda p: p.rand())

    def clone_from(self, source: nn.Module):
        """A particle of this species holding ``source``'s values (any species)."""
        out = self.clone()
        out.load_state_dict(source.state_dict())
        return out

    def detach(self):
        """A module with this particle's very tensors, as the root of a *new* species."""
        return detach(self)

    def __pos__(self):
        return self.clone()

    def __neg__(self):
        return unary(self, operator.neg)

    # -- configs --------------------------------------------------------------------------------
    def apply_param_config(self, fn: Callable[[int, MutableParamConfig], None],
                           name: str | None = None) -> None:
        """Call ``fn(param_id, config)`` for each parameter (under ``name``); changes are one event.

        ``fn`` may set ``operational``, ``clone`` or any attribute on the config it gets.

        >>> import torch, nytorch_func as nf
        >>> class Net(nf.NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 1)
        >>> net = Net()
        >>> def mark(pid, config):
        ...     config.is_weight = pid == 0
        >>> net.apply_param_config(mark)
        >>> net.apply_param_config(lambda pid, c: print(pid, c))
        0 ParamConfig(operational=True, clone=True, is_weight=True)
        1 ParamConfig(operational=True, clone=True, is_weight=False)
        """
        _ready(self)
        root, h, path, p, _ = current(self)
        if h.locked:
            raise VersionError(LOCKED)
        where = path
        if name is not None:
            if kind_at(self, name) not in ("param", "module"):
                raise SchemaError(f"apply_param_config: {name!r} is not a parameter or submodule "
                                  f"of {type(self).__name__} (or it is None)")
            where = f"{path}.{name}" if path else name
        changed = []
        for spec in sorted(h.schema.specs_under(where, kind="param"), key=lambda s: s.pid):
            view = MutableParamConfig.of(spec.config)
            fn(spec.pid, view)
            new = to_core(dict(view.__dict__), spec.config)
            if new != spec.config:
                if new.operational and not computable(spec.dtype):
                    raise SchemaError(f"apply_param_config: {spec.key!r} is "
                                      f"{str(spec.dtype).replace('torch.', '')}; integer "
                                      "parameters cannot be operational")
                changed.append((spec.key, new))
        if not changed:
            return

        def build(q: Particle) -> tuple[Event, dict]:
            return _edit.configure_event(q, where, changed, "apply_param_config"), {}

        q = _edit.commit(p, build, "apply_param_config")
        write_back(root, h, q)

    def set_param_config(self, operational: bool | None = None, clone: bool | None = None,
                         name: str | None = None) -> None:
        """Set ``operational`` / ``clone`` for every parameter (under ``name``): one event.

        >>> import torch, nytorch_func as nf
        >>> class Net(nf.NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a = torch.nn.Linear(1, 1)
        ...         self.b = torch.nn.Linear(1, 1)
        >>> net = Net()
        >>> net.set_param_config(operational=False, name="a")
        >>> new = 2 * net
        >>> torch.equal(new.a.weight, net.a.weight), torch.equal(new.b.weight, 2 * net.b.weight)
        (True, True)
        """
        for label, value in (("operational", operational), ("clone", clone)):
            if value is not None and not isinstance(value, bool):
                raise SchemaError(f"set_param_config: {label} must be True, False or None, got "
                                  f"{value!r}")

        def setter(pid: int, conf: MutableParamConfig) -> None:
            if operational is not None:
                conf.operational = operational
            if clone is not None:
                conf.clone = clone

        self.apply_param_config(setter, name)

    def get_param_id(self, param: torch.Tensor) -> int:
        """The stable id of ``param`` (one of this particle's parameter objects)."""
        p = current(self, touch=False)[3]
        for spec in p._schema.params:
            if p[spec.key] is param:
                return spec.pid  # type: ignore[return-value]
        raise SchemaError("get_param_id: the tensor given is not a parameter of this particle "
                          "(pass the Parameter object itself, e.g. net.layer.weight)")

    # -- a result tree is built when first used (see _plan.Deferred) -----------------------------
    def __getattr__(self, name: str) -> Any:
        if DEFERRED in self.__dict__:
            materialize(self)
            return getattr(self, name)
        return _module_getattr(self, name)

    def __getstate__(self) -> dict:
        _ready(self)
        return super().__getstate__()

    def __dir__(self):
        _ready(self)
        return super().__dir__()

    def _apply(self, fn: Callable, recurse: bool = True):
        out = super()._apply(fn, recurse)
        tag = TAGS.get(self)
        plan = None if tag is None else tag[0].plan
        if plan is not None and not plan.deferred:
            plan.known = ()  # dtypes and devices may have changed in place: check every leaf
        return out

    # -- structural events ----------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__"):
            return super().__setattr__(name, value)
        _ready(self)
        if TAGS.get(self) is None:  # no species yet: construction
            if isinstance(value, nn.Module):
                if warn_if_circular(self, name, value):
                    _keep_plain(self, name, value)
                    return None
                warn_if_shared(self, value)
            if isinstance(value, (nn.Parameter, nn.Module)):
                note_registration(self, name, value)
            return super().__setattr__(name, value)
        existing = kind_at(self, name)
        if isinstance(value, nn.Parameter):
            return put(self, name, value, "param")
        if isinstance(value, nn.Module):
            return put(self, name, value, "module")
        if value is None and existing in ("param", "buffer", "module"):
            return set_none(self, name)
        if existing == "buffer" and isinstance(value, torch.Tensor):
            return put(self, name, value, "buffer", name not in self._non_persistent_buffers_set)
        if existing == "buffer" and value is not None:
            raise CannotAssignError(f"cannot assign {type(value).__name__} as buffer {name!r} "
                                    "(torch.Tensor or None expected)")
        if existing == "param" and value is not None:
            raise CannotAssignError(f"cannot assign {type(value).__name__} as parameter "
                                    f"{name!r} (torch.nn.Parameter or None expected)")
        return super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        _ready(self)
        if TAGS.get(self) is not None and kind_at(self, name) is not None:
            return remove(self, name)
        return super().__delattr__(name)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        _ready(self)
        if TAGS.get(self) is None:
            if param is not None:
                note_registration(self, name, param)
            return super().register_parameter(name, param)
        if param is not None and not isinstance(param, nn.Parameter):
            raise CannotAssignError(f"register_parameter: {name!r} must be an nn.Parameter or "
                                    f"None, got {type(param).__name__}")
        existing = kind_at(self, name)
        if param is None:
            if existing in ("param", "module"):
                return set_none(self, name)
            if existing is None:
                return super().register_parameter(name, None)
            raise AttributeExistsError(f"attribute {name!r} already exists")
        return put(self, name, param, "param")

    def add_module(self, name: str, module: nn.Module | None) -> None:
        if module is not None and not isinstance(module, nn.Module):
            raise CannotAssignError(f"add_module: {name!r} must be an nn.Module or None, got "
                                    f"{type(module).__name__}")
        _ready(self)
        if TAGS.get(self) is None:
            if module is not None:
                if warn_if_circular(self, name, module):
                    _keep_plain(self, name, module)
                    return None
                warn_if_shared(self, module)
                note_registration(self, name, module)
            return super().add_module(name, module)
        existing = kind_at(self, name)
        if module is None:
            if existing in ("param", "module"):
                return set_none(self, name)
            if existing is None:
                return super().add_module(name, None)
            raise AttributeExistsError(f"attribute {name!r} already exists")
        return put(self, name, module, "module")

    register_module = add_module

    def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        """Register a buffer; on an existing buffer this updates *this particle's* value only.

        A new buffer (or one of another shape or dtype) is a species event; re-registering an
        existing buffer with a tensor of its shape and dtype is per-particle state, no event
        (the seed's Solution 2). Assigning ``self.name = tensor`` stays a species event.
        """
        _ready(self)
        if TAGS.get(self) is None:
            return super().register_buffer(name, tensor, persistent)
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise CannotAssignError(f"register_buffer: {name!r} must be a tensor or None, got "
                                    f"{type(tensor).__name__}")
        existing = kind_at(self, name)
        if existing == "buffer" and tensor is not None:
            old = self._buffers[name]
            h, path = handle_of(self)
            spec = h.schema.by_path.get(f"{path}.{name}" if path else name)
            if (persistent == (name not in self._non_persistent_buffers_set) and spec is not None
                    and spec.leaf and tensor.shape == old.shape and tensor.dtype == old.dtype):
                self._buffers[name] = tensor
                return None
        if tensor is None:
            if existing == "buffer":
                return set_none(self, name)
            if existing is None:
                return super().register_buffer(name, None, persistent)
        return put(self, name, tensor, "buffer", persistent)


_module_getattr = nn.Module.__getattr__


def _ready(m: nn.Module) -> None:
    """Build a deferred result tree before anything reads or edits its dicts."""
    if DEFERRED in m.__dict__:
        materialize(m)


def _keep_plain(m: nn.Module, name: str, value: nn.Module) -> None:
    """Keep a module that would close a cycle as a plain attribute (not registered)."""
    d = m.__dict__
    for dn in ("_parameters", "_buffers", "_modules"):
        d[dn].pop(name, None)
    d[name] = value


def _install() -> None:
    for name in ("add", "sub", "mul", "truediv", "pow"):
        op = getattr(operator, name)

        def forward(self, other, _op=op):
            return binary(self, other, _op, False)

        def reverse(self, other, _op=op):
            return binary(self, other, _op, True)

        def update(self, other, _op=op):
            return inplace(self, other, _op)

        for prefix, fn in (("", forward), ("r", reverse), ("i", update)):
            fn.__name__ = fn.__qualname__ = f"__{prefix}{name}__"
            setattr(NytoModule, fn.__name__, fn)


_install()
deferrable["getattr"] = NytoModule.__getattr__
