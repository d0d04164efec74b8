"""ModuleView: the read-only face of a schema's module skeleton.

Every particle of a species runs its forward pass on one skeleton module tree (versions share
the submodules an event did not touch), so an attribute changed on it would change the forward
pass of every particle of every version that shares the module. ``Schema.skeleton`` and
``Schema.module_at`` therefore hand out a :class:`ModuleView`: it reads like the module and
refuses every change with :class:`~nytorch_func.FrozenError`. The library's own code reads the
live tree (``Schema._skeleton``), never a view.
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ContextManager, NoReturn

import torch
from torch import nn

from ._errors import FrozenError, frozen

__all__ = ["ModuleView", "live"]

_HINT = ("every particle of the species runs this skeleton module, so a change would reach all "
         "of them. Run a particle with nf.apply(p, x); change the model with an event "
         "(nf.add_param, nf.add_module, nf.set_none, nf.to, ...); or take a module of your own: "
         "nf.to_module(p) (with p's values) or copy.deepcopy(p.schema.skeleton) (meta tensors)")


def _refuse(what: str, name: str) -> NoReturn:
    """Raise the FrozenError for changing ``name`` (an attribute, ``"f()"``, ``"[key]"``) of
    the skeleton's ``what``."""
    if name.endswith("()"):
        name = _CALLS.get(name, name)
        raise FrozenError(f"the skeleton's {what} is immutable (cannot call {name}): {_HINT}")
    raise frozen(f"the skeleton's {what}", name, _HINT)


_CALLS = {"_apply()": "to()/cuda()/float()/half() (_apply)"}


class ModuleView:
    """A read-only view of one module of a species' skeleton.

    It reads as the module does: attributes, parameters and buffers (``meta`` tensors, no data),
    submodules (views too), indexing and iteration of containers, ``isinstance`` checks,
    ``named_modules()``, ``state_dict()``, ``repr``; the module's methods run with the view as
    ``self``, so whatever they reach is read-only as well. Every change raises
    :class:`~nytorch_func.FrozenError` and leaves the module as it was: assigning or deleting an
    attribute, registering a parameter, buffer, submodule or hook, ``train()``/``eval()``,
    ``to()``/``half()``/``requires_grad_()``, ``load_state_dict``, and ``torch.func.
    functional_call`` on the view (run a particle with ``nf.apply(p, x)`` instead).

    ``copy.deepcopy(view)`` is a real, independent module of the same class (meta tensors):
    take that to experiment. Views are made on access, so two accesses give equal (``==``), not
    identical, views, and ``type(view)`` is ``ModuleView`` (``view.__class__`` and
    ``isinstance`` give the module's class). Tensors are handed out as copies (``meta`` ones for
    parameters and buffers, which hold no data), one per tensor for all the views reached from
    one ``schema.skeleton``, so tied parameters stay one tensor there, and changing a copy in
    place changes nothing. A view reads under the species' call lock, so a thread reading it
    never sees another thread's ``nf.apply`` in the middle of its forward pass (the particle's
    tensors swapped in).

    >>> import copy, torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LeakyReLU(0.01)))
    >>> act = p.schema.module_at("1")
    >>> isinstance(act, torch.nn.LeakyReLU), act.negative_slope, act
    (True, 0.01, LeakyReLU(negative_slope=0.01))
    >>> act.negative_slope = 0.9
    Traceback (most recent call last):
    ...
    nytorch_func._errors.FrozenError: the skeleton's LeakyReLU is immutable (cannot set 'negative_slope'): ...
    >>> mine = copy.deepcopy(p.schema.skeleton)
    >>> type(mine) is torch.nn.Sequential, mine[0].weight.device
    (True, device(type='meta'))
    """

    __slots__ = ("_nf_module", "_nf_tree", "__weakref__")

    def __init__(self, module: nn.Module, lock: ContextManager | None = None, *,
                 tree: "_Tree | None" = None) -> None:
        object.__setattr__(self, "_nf_module", module)
        object.__setattr__(self, "_nf_tree", tree or _Tree(lock))

    def __getattribute__(self, name: str) -> Any:
        m = object.__getattribute__(self, "_nf_module")
        if name in _OWN:
            if name == "__class__":
                return type(m)
            if name == "__dict__":
                return MappingView(m.__dict__, "__dict__", _tree(self))
            return object.__getattribute__(self, name)
        tree = object.__getattribute__(self, "_nf_tree")
        cls = type(m)
        attr = _class_attr(cls, name)
        if attr is not _MISSING and _is_data_descriptor(attr):
            return _bind(attr, self, m, name)
        with tree:
            d = m.__dict__
            if name in d:
                return freeze(d[name], tree)
            if attr is _MISSING:  # nn.Module.__getattr__: parameters, buffers, children
                return freeze(getattr(m, name), tree)
        return _bind(attr, self, m, name)

    def __setattr__(self, name: str, value: Any) -> None:
        _refuse(_name(self), name)

    def __delattr__(self, name: str) -> None:
        _refuse(_name(self), name)

    def __dir__(self) -> list[str]:
        return dir(live(self))

    def __repr__(self) -> str:
        return _call(self, "__repr__")

    def __eq__(self, other: object) -> bool:
        if type(other) is ModuleView:
            return live(other) is live(self)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(live(self))

    def __deepcopy__(self, memo: dict) -> nn.Module:
        with _tree(self):  # never while a forward pass has real tensors swapped in
            return copy.deepcopy(live(self), memo)

    def __copy__(self) -> "ModuleView":
        return self  # read-only: a copy would be the same

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a skeleton view is not pickled: copy.deepcopy(view) gives a module, and "
                        "nf.save(path, p) saves a particle with its schema")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call(self, "__call__", *args, **kwargs)

    def __bool__(self) -> bool:
        cls = type(live(self))
        if _class_attr(cls, "__bool__") is not _MISSING:
            return _call(self, "__bool__")
        if _class_attr(cls, "__len__") is not _MISSING:
            return _call(self, "__len__") != 0
        return True

    def __len__(self) -> int:
        return _call(self, "__len__")

    def __iter__(self) -> Iterator[Any]:
        return _call(self, "__iter__")

    def __contains__(self, item: Any) -> bool:
        if _class_attr(type(live(self)), "__contains__") is _MISSING:
            return any(x is item or x == item for x in self)
        return _call(self, "__contains__", item)

    def __getitem__(self, key: Any) -> Any:
        return _call(self, "__getitem__", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        _refuse(_name(self), f"[{key!r}]")

    def __delitem__(self, key: Any) -> None:
        _refuse(_name(self), f"[{key!r}]")

    def __iadd__(self, other: Any) -> NoReturn:
        _refuse(_name(self), "+=")

    def __imul__(self, other: Any) -> NoReturn:
        _refuse(_name(self), "*=")

    def __add__(self, other: Any) -> Any:
        return _binary(self, "__add__", other)

    def __mul__(self, other: Any) -> Any:
        return _binary(self, "__mul__", other)

    def __rmul__(self, other: Any) -> Any:
        return _binary(self, "__rmul__", other)


# Names the view answers itself; every other one is looked up on the module.
_OWN = (frozenset(vars(ModuleView)) - {"__init__", "__doc__", "__module__", "__slots__",
                                       "_nf_module", "_nf_tree"}) | {"__class__", "__dict__"}
_MISSING = object()

# Methods that change the module, refused up front: some would change its tensors in place
# (``param.data = ...``, ``requires_grad_``, ``copy_``) before reaching an assignment the view
# refuses; ``_apply`` is behind to/cuda/cpu/type/float/double/half/bfloat16/to_empty; the
# ``register_*`` family (hooks included) and ``add_module`` would add entries.
_CHANGES = frozenset({"_apply", "requires_grad_", "zero_grad", "load_state_dict",
                      "share_memory", "flatten_parameters", "set_extra_state", "compile",
                      "add_module", "set_submodule", "train", "eval"})


def _changes(name: str) -> bool:
    return name in _CHANGES or name.startswith(("register_", "_register_"))


def live(m: Any) -> Any:
    """The module a view shows (``m`` itself when it is not a view)."""
    return object.__getattribute__(m, "_nf_module") if type(m) is ModuleView else m


def _tree(view: ModuleView) -> "_Tree":
    return object.__getattribute__(view, "_nf_tree")


class _Tree:
    """What the views reached from one root share: the species' call lock (entered with
    ``with tree:``) and the copies of the tensors handed out, by the id of the original."""

    __slots__ = ("lock", "tensors")

    def __init__(self, lock: ContextManager | None) -> None:
        self.lock = lock or contextlib.nullcontext()
        self.tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self) -> Any:
        return self.lock.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.lock.__exit__(*exc)

    def copy_of(self, t: torch.Tensor) -> torch.Tensor:
        """One copy of ``t`` for the whole tree (tied tensors stay one)."""
        found = self.tensors.get(id(t))
        if found is None:
            new = (torch.empty(t.shape, dtype=t.dtype, device="meta") if t.is_meta
                   else t.detach().clone())
            if isinstance(t, nn.Parameter):
                new = nn.Parameter(new, requires_grad=t.requires_grad)
            elif t.requires_grad:
                new.requires_grad_(True)
            found = self.tensors[id(t)] = (t, new)  # t kept: its id stays unique
        return found[1]


def _name(view: ModuleView) -> str:
    return type(live(view)).__name__


def _class_attr(cls: type, name: str) -> Any:
    for k in cls.__mro__:
        d = k.__dict__
        if name in d:
            return d[name]
    return _MISSING


def _is_data_descriptor(attr: Any) -> bool:
    t = type(attr)
    return hasattr(t, "__get__") and (hasattr(t, "__set__") or hasattr(t, "__delete__"))


def _bind(attr: Any, view: ModuleView, m: nn.Module, name: str) -> Any:
    """``attr`` (found on the module's class) as seen from ``view``: methods run on the view."""
    if _changes(name):
        def refused(*args: Any, **kwargs: Any) -> NoReturn:
            _refuse(_name(view), f"{name}()")
        return refused
    if isinstance(attr, types.FunctionType):
        return types.MethodType(attr, view)
    tree = _tree(view)
    if hasattr(type(attr), "__get__"):
        try:
            return freeze(attr.__get__(view, type(m)), tree)
        except TypeError:  # a C-level descriptor that insists on a real instance
            with tree:
                return freeze(getattr(m, name), tree)
    return freeze(attr, tree)


def _call(view: ModuleView, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run the module's special method ``name`` with the view as ``self``."""
    cls = type(live(view))
    attr = _class_attr(cls, name)
    if attr is _MISSING:
        what = {"__len__": f"object of type {cls.__name__!r} has no len()",
                "__iter__": f"{cls.__name__!r} object is not iterable",
                "__getitem__": f"{cls.__name__!r} object is not subscriptable",
                "__call__": f"{cls.__name__!r} object is not callable"}.get(name, name)
        raise TypeError(what)
    return _bind(attr, view, live(view), name)(*args, **kwargs)


def _binary(view: ModuleView, name: str, other: Any) -> Any:
    if _class_attr(type(live(view)), name) is _MISSING:
        return NotImplemented
    return _call(view, name, other)


def freeze(value: Any, tree: _Tree) -> Any:
    """``value`` as a view hands it out: modules and containers read-only, tensors copied, the
    rest as is."""
    t = type(value)
    if t is ModuleView:
        return value
    if isinstance(value, torch.Tensor):
        return tree.copy_of(value)
    if isinstance(value, nn.Module):
        return ModuleView(value, tree=tree)
    if isinstance(value, dict):
        return MappingView(value, t.__name__, tree)
    if isinstance(value, list):
        return SequenceView(value, tree)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if t is tuple and any(isinstance(x, (nn.Module, torch.Tensor, dict, list, set))
                          for x in value):
        return tuple(freeze(x, tree) for x in value)
    return value


class MappingView(Mapping):
    """A read-only mapping over a skeleton module's dict (``_modules``, ``_parameters``, ...)."""

    __slots__ = ("_d", "_what", "_tree")

    def __init__(self, d: dict, what: str, tree: _Tree) -> None:
        self._d, self._what, self._tree = d, what, tree

    def __getitem__(self, key: Any) -> Any:
        with self._tree:
            return freeze(self._d[key], self._tree)

    def __iter__(self) -> Iterator[Any]:
        with self._tree:
            return iter(list(self._d))

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __eq__(self, other: object) -> bool:
        if type(other) is MappingView:
            other = other._d
        return self._d == other if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MappingView({self._d!r})"

    def copy(self) -> dict:
        with self._tree:
            return {k: freeze(v, self._tree) for k, v in self._d.items()}

    def _changes(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise FrozenError(f"the skeleton is immutable (cannot change a {self._what} held by one "
                          f"of its modules): {_HINT}")

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = _changes  # type: ignore[assignment]
    move_to_end = _changes


class SequenceView(Sequence):
    """A read-only list attribute of a skeleton module (an RNN's ``_flat_weights``, ...)."""

    __slots__ = ("_items", "_tree")

    def __init__(self, items: list, tree: _Tree) -> None:
        self._items, self._tree = items, tree

    def __getitem__(self, i: Any) -> Any:
        with self._tree:
            if isinstance(i, slice):
                return [freeze(x, self._tree) for x in self._items[i]]
            return freeze(self._items[i], self._tree)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if type(other) is SequenceView:
            other = other._items
        return self._items == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SequenceView({self._items!r})"

    def _changes(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise FrozenError(f"the skeleton is immutable (cannot change a list held by one of its "
                          f"modules): {_HINT}")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = extend = insert = _changes  # type: ignore[assignment]
    pop = remove = clear = sort = reverse = _changes
