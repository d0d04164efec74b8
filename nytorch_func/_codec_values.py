"""JSON encoding of plain values, with tensors kept apart in a table; no pickle, no imports.

The value layer of the codec (:mod:`._codec` adds module skeletons, specs and events). A value
becomes a JSON scalar, a list, or a tagged object ``{"$t": tag, ...}``:

- ``None``, ``bool``, ``int``, ``str``, finite ``float``: themselves; non-finite floats and
  ``complex`` numbers are tagged;
- ``tuple``, ``list``, ``dict`` (any encodable, hashable keys: ``str``, ``int``, tuples, enum
  members, ...), ``OrderedDict``, ``torch.Size``;
- ``torch.dtype`` and ``torch.device``;
- enum members (``IntEnum``, ``str`` enums, flags) and ``NamedTuple`` instances, by class name
  and member name / fields;
- functions, by module and name (module-level functions, torch's own ``torch.tanh``, ...);
- tensors: a reference ``{"$t": "tensor", "id": "t3"}`` into a :class:`TensorTable`, which keeps
  what rebuilds the tensor object exactly (``nn.Parameter``, ``requires_grad``, device);
- ``torch.Generator``: its device and state (a tensor).

The decoder never imports a module named by the data and never runs a class's ``__init__``;
which classes and functions a file may name is :mod:`._codec_names`' job.
"""

from __future__ import annotations

import enum
import functools
import math
import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ._codec_names import (FUNCTION_TYPES, allowed_classes, function_name, is_namedtuple,
                           qualified, trusted_class, trusted_function)
from ._errors import CheckpointError, NytorchFuncError

__all__ = ["TensorTable", "ValueEncoder", "ValueDecoder", "Malformed", "need", "decoding",
           "dtype_name", "dtype_named", "Where", "described"]

_SCALARS = (type(None), bool, int, str)


# Where a value sits, for error messages: a string, or ``(parent, format, arg)`` formatted only
# when needed (``format.format(described(parent), arg)``), so encoding builds no strings.
Where = Any


def described(where: Where) -> str:
    """The text of a :data:`Where`.

    >>> described(((("model", "{} attribute {!r}", "act"), "{}[{}]", 0)))
    "model attribute 'act'[0]"
    """
    parts = []
    while isinstance(where, tuple):
        where, fmt, arg = where
        parts.append((fmt, arg))
    text = where
    for fmt, arg in reversed(parts):
        text = fmt.format(text, arg)
    return text


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype)[6:]


def dtype_named(name: Any) -> torch.dtype:
    """The torch dtype called ``name`` (``"float32"``), or :class:`Malformed`."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise Malformed(f"unknown dtype {name!r:.40}")
    return dtype  # type: ignore[return-value]


class TensorTable:
    """Tensors met while encoding, each stored once (by identity) under an id ``t0, t1, ...``.

    ``tensors[id]`` is the tensor on the CPU, contiguous, with a conjugate or negative view
    resolved (the tensor itself when it already is all that: saving copies nothing it does not
    have to). ``entries[id]`` holds what rebuilds the tensor
    object exactly (``param``: an ``nn.Parameter``; ``requires_grad``; ``device``) and ``what``
    (a readable description for error messages).
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self._ids: dict[int, str] = {}
        self._keep: list[torch.Tensor] = []  # keeps ids stable while encoding

    def add(self, t: torch.Tensor, what: Where) -> str:
        name = self._ids.get(id(t))
        if name is not None:
            return name
        device = t.device
        if t.layout != torch.strided or t.is_quantized or device.type == "meta":
            raise CheckpointError(f"save: {described(what)} is a {t.layout} / {device.type} "
                                  "tensor; only dense tensors with data can be saved")
        name = f"t{len(self.tensors)}"
        self._ids[id(t)] = name
        self._keep.append(t)
        stored = t.detach().resolve_conj().resolve_neg()  # the values, not a lazy view
        if device.type != "cpu":
            stored = stored.cpu()
        self.tensors[name] = stored if stored.is_contiguous() else stored.contiguous()
        self.entries[name] = {"param": isinstance(t, nn.Parameter),
                              "requires_grad": t.requires_grad,
                              "device": _DEVICE_NAMES.get(device) or str(device),
                              "what": described(what)}
        return name


_DEVICE_NAMES = {torch.device("cpu"): "cpu"}


class ValueEncoder:
    """Encodes plain values to JSON, collecting tensors in ``self.table``.

    Subclasses add kinds (``_more``): module skeletons, specs and events (:mod:`._codec`),
    particles (:mod:`._io_tree`).
    """

    def __init__(self, table: TensorTable | None = None) -> None:
        self.table = TensorTable() if table is None else table
        self._open: set[int] = set()  # containers being encoded: a cycle is refused

    def value(self, v: Any, where: Where, metas: Mapping[int, int] | None = None) -> Any:
        """A JSON value for ``v``; ``metas`` maps skeleton tensors to their index (attributes)."""
        kind = type(v)
        if kind in _SCALARS:
            return v
        if kind is float:
            return v if math.isfinite(v) else {"$t": "float", "v": repr(v)}
        if isinstance(v, enum.Enum):
            return self._enum(v, where)
        if kind in (tuple, list, dict, OrderedDict) or is_namedtuple(kind):
            return self._container(v, where, metas)
        if kind is complex:
            return {"$t": "complex", "v": [self.value(v.real, where), self.value(v.imag, where)]}
        if kind is torch.Size:
            return {"$t": "size", "v": list(v)}
        if kind is torch.dtype:
            return {"$t": "dtype", "v": dtype_name(v)}
        if kind is torch.device:
            return {"$t": "device", "v": str(v)}
        if isinstance(v, torch.Tensor):
            return self._tensor(v, where, metas)
        if isinstance(v, FUNCTION_TYPES):
            name = function_name(v)
            if name is None:
                raise CheckpointError(f"save: {described(where)} is the function {qualified(v)[1]!r}, which "
                                      "cannot be found by name (a lambda, closure or local "
                                      "function); use a module-level function or an nn.Module")
            return {"$t": "fn", "module": name[0], "qualname": name[1]}
        if kind is torch.Generator:
            return {"$t": "generator", "device": str(v.device),
                    "state": self._tensor(v.get_state(), (where, "{} {}", "(generator state)"),
                                          None)}
        out = self._more(v, where, metas)
        if out is not NotImplemented:
            return out
        if isinstance(v, (int, float, str, tuple, list, dict)):
            raise CheckpointError(f"save: {described(where)} is a {kind.__name__}, a subclass of "
                                  f"{kind.__mro__[1].__name__} that a checkpoint cannot rebuild; "
                                  "convert it to a plain value, an Enum or a NamedTuple")
        raise CheckpointError(f"save: {described(where)} is a {kind.__name__}, which a checkpoint "
                              "cannot "
                              "hold without pickle (allowed: numbers, strings, None, tuples, "
                              "lists, dicts, NamedTuples, enum members, tensors, torch dtypes, "
                              "devices and generators, module-level functions)")

    def _more(self, v: Any, where: Where, metas: Mapping[int, int] | None) -> Any:
        """Hook for subclasses: encode ``v`` or return NotImplemented."""
        return NotImplemented

    def _tensor(self, v: torch.Tensor, where: Where, metas: Mapping[int, int] | None) -> Any:
        if metas is not None:
            if id(v) in metas:
                return {"$t": "meta", "i": metas[id(v)]}
            raise CheckpointError(f"save: {described(where)} is a tensor that is not a parameter "
                                  "or buffer "
                                  "of the model; register it (register_buffer) so it can be saved")
        return {"$t": "tensor", "id": self.table.add(v, where)}

    def _container(self, v: Any, where: Where, metas: Mapping[int, int] | None) -> Any:
        if id(v) in self._open:
            raise CheckpointError(f"save: {described(where)} contains itself; a checkpoint holds "
                                  "trees, not "
                                  "cycles")
        self._open.add(id(v))
        try:
            if isinstance(v, dict):
                items = [[self.value(k, (where, "{} key {!r}", k), metas),
                          self.value(x, (where, "{}[{!r}]", k), metas)] for k, x in v.items()]
                return {"$t": "odict" if type(v) is OrderedDict else "dict", "v": items}
            items = [self.value(x, (where, "{}[{}]", i), metas) for i, x in enumerate(v)]
            if type(v) is list:
                return items
            if type(v) is tuple:
                return {"$t": "tuple", "v": items}
            module, qualname = qualified(type(v))
            return {"$t": "ntuple", "class": [module, qualname], "fields": list(v._fields),
                    "v": items}
        finally:
            self._open.discard(id(v))

    def _enum(self, v: enum.Enum, where: Where) -> dict:
        cls = type(v)
        module, qualname = qualified(cls)
        names = None
        if v._name_ in cls.__members__ and cls.__members__[v._name_] is v:
            names = [v._name_]
        elif isinstance(v, enum.Flag):  # a combination of flags
            parts = list(v)
            if parts and functools.reduce(operator.or_, parts) == v:
                names = [m._name_ for m in parts]
        if names is None:
            raise CheckpointError(f"save: {described(where)} is the member {v!r} of {qualname}, which is "
                                  "not one of its named members; use a named member")
        return {"$t": "enum", "class": [module, qualname], "names": names}


class Malformed(Exception):
    """Internal: a decoding step met data of the wrong form (wrapped into CheckpointError)."""


def need(cond: bool, what: str) -> None:
    if not cond:
        raise Malformed(what)


class ValueDecoder:
    """Decodes what :class:`ValueEncoder` wrote.

    ``tensors``: the table's tensors by id, ``entries``: their entries. ``classes``: what the
    caller trusts beyond torch and already imported modules (see :func:`allowed_classes`).
    ``device``: where every tensor goes (and what every device in the data becomes), or None for
    the devices they were saved on. ``lenient``: fields missing from a record take their
    defaults (files of an older format version).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], entries: Mapping[str, Any],
                 classes: Mapping[tuple[str, str], Any] | Iterable[Any] = (), *,
                 device: torch.device | None = None, lenient: bool = False) -> None:
        self.tensors = tensors
        self.entries = entries
        self.allowed = (dict(classes) if isinstance(classes, Mapping)
                        else allowed_classes(classes, "load"))
        self.device = device
        self.lenient = lenient
        self._built: dict[str, torch.Tensor] = {}

    def value(self, v: Any, metas: list | None = None) -> Any:
        if v is None or isinstance(v, (bool, int, str, float)):
            return v
        if isinstance(v, list):
            return [self.value(x, metas) for x in v]
        if not (isinstance(v, dict) and isinstance(v.get("$t"), str)):
            raise Malformed(f"unexpected value {v!r:.80}")
        tag = v["$t"]
        decode = _DECODERS.get(tag)
        if decode is None:
            return self._more(tag, v, metas)
        return decode(self, v, metas)

    def _more(self, tag: str, v: dict, metas: list | None) -> Any:
        """Hook for subclasses: decode the tagged value ``v``."""
        raise Malformed(f"unknown tag {tag!r:.40}")

    @staticmethod
    def str(v: Any) -> str:
        if not isinstance(v, str):
            raise Malformed(f"expected a string, got {v!r:.80}")
        return v

    def _items(self, v: dict, metas: list | None) -> list:
        if not isinstance(v.get("v"), list):
            raise Malformed(f"{v['$t']} without items")
        return [self.value(x, metas) for x in v["v"]]

    def _pairs(self, v: dict, metas: list | None) -> list:
        need(isinstance(v.get("v"), list) and all(isinstance(kv, list) and len(kv) == 2
                                                    for kv in v["v"]), "bad dict items")
        return [(self.value(k, metas), self.value(x, metas)) for k, x in v["v"]]

    def device_named(self, name: Any) -> torch.device:
        """The device called ``name`` (or the one everything is loaded onto)."""
        devices = self.__dict__.setdefault("_devices", {})
        device = devices.get(name)
        if device is None:
            device = devices[self.str(name)] = torch.device(name)
        return device if self.device is None else self.device

    def tensor(self, name: Any) -> torch.Tensor:
        """The tensor ``name`` as the object it was (Parameter, requires_grad, device); cached."""
        need(isinstance(name, str) and name in self.tensors and name in self.entries,
             f"reference to an unknown tensor {name!r:.40}")
        built = self._built.get(name)
        if built is not None:
            return built
        entry = self.entries[name]
        t = self.tensors[name]
        device = self.device_named(entry["device"])
        if device != t.device:
            try:
                t = t.to(device)
            except (RuntimeError, AssertionError) as err:
                raise CheckpointError(f"load: tensor {name} ({entry.get('what')}) was saved on "
                                      f"{entry['device']}, which is not available here ({err}); "
                                      "load it elsewhere with nf.load(path, device='cpu')") from err
        requires_grad = entry["requires_grad"]
        need(isinstance(requires_grad, bool) and isinstance(entry["param"], bool),
             f"bad flags of tensor {name}")
        if requires_grad and not (t.is_floating_point() or t.is_complex()):
            raise Malformed(f"tensor {name} of dtype {t.dtype} cannot require grad")
        if entry["param"]:
            t = nn.Parameter(t, requires_grad=requires_grad)
        elif requires_grad:
            t = t.requires_grad_(True)
        self._built[name] = t
        return t

    def cls(self, ref: Any, kind: str, check: Any) -> Any:
        """The class ``[module, qualname]`` names, if trusted and ``check(cls)`` holds."""
        need(isinstance(ref, list) and len(ref) == 2, "bad class reference")
        return trusted_class(self.allowed, self.str(ref[0]), self.str(ref[1]), kind, check)

    def function(self, module: str, qualname: str) -> Any:
        return trusted_function(self.allowed, module, qualname)



def _dict(dec: ValueDecoder, v: dict, metas: list | None) -> dict:
    return dict(dec._pairs(v, metas))


def _float(dec: ValueDecoder, v: dict, metas: list | None) -> float:
    need(v.get("v") in ("inf", "-inf", "nan"), f"bad float {v.get('v')!r:.20}")
    return float(v["v"])


def _complex(dec: ValueDecoder, v: dict, metas: list | None) -> complex:
    re, im = dec._items(v, None)
    need(isinstance(re, float) and isinstance(im, float), "bad complex number")
    return complex(re, im)


def _size(dec: ValueDecoder, v: dict, metas: list | None) -> torch.Size:
    items = dec._items(v, None)
    need(all(type(n) is int and n >= 0 for n in items), "bad torch.Size")
    return torch.Size(items)


def _ntuple(dec: ValueDecoder, v: dict, metas: list | None) -> tuple:
    cls = dec.cls(v.get("class"), "NamedTuple", is_namedtuple)
    fields = v.get("fields")
    if list(cls._fields) != fields:
        raise CheckpointError(f"load: the checkpoint's {cls.__qualname__} has fields {fields}, "
                              f"the class here has {list(cls._fields)}")
    items = dec._items(v, metas)
    need(len(items) == len(fields), f"{cls.__qualname__} needs {len(fields)} values")
    return tuple.__new__(cls, items)  # what cls._make does, without running user code


def _enum_member(dec: ValueDecoder, v: dict, metas: list | None) -> enum.Enum:
    cls = dec.cls(v.get("class"), "Enum", lambda c: issubclass(c, enum.Enum))
    names = v.get("names")
    need(isinstance(names, list) and names and all(isinstance(n, str) for n in names),
         "bad enum member names")
    missing = [n for n in names if n not in cls.__members__]
    if missing:
        raise CheckpointError(f"load: the checkpoint names the member(s) {missing} of "
                              f"{cls.__qualname__}, which has {list(cls.__members__)}")
    members = [cls.__members__[n] for n in names]
    if len(members) == 1:
        return members[0]
    need(issubclass(cls, enum.Flag), "several members of a non-flag enum")
    return functools.reduce(operator.or_, members)


def _function(dec: ValueDecoder, v: dict, metas: list | None) -> Any:
    return dec.function(dec.str(v.get("module")), dec.str(v.get("qualname")))


def _generator(dec: ValueDecoder, v: dict, metas: list | None) -> torch.Generator:
    saved = torch.device(dec.str(v.get("device")))
    device = dec.device_named(v["device"])
    if device.type != saved.type:
        raise CheckpointError(f"load: a torch.Generator was saved on {saved}; its state does not "
                              f"fit a generator on {device}. Load without device=, or save "
                              "g.get_state() and seed a new generator yourself")
    state = dec.value(v.get("state"))
    need(isinstance(state, torch.Tensor) and state.dtype == torch.uint8, "bad generator state")
    try:
        g = torch.Generator(device=device)
    except RuntimeError as err:
        raise CheckpointError(f"load: a torch.Generator was saved on {saved}, which is not "
                              f"available here ({err})") from None
    g.set_state(state.detach().cpu())
    return g


def _meta(dec: ValueDecoder, v: dict, metas: list | None) -> torch.Tensor:
    need(metas is not None, "a skeleton tensor reference outside a skeleton")
    i = v.get("i")
    need(type(i) is int and 0 <= i < len(metas), "bad skeleton tensor reference")  # type: ignore[arg-type]
    return metas[i]  # type: ignore[index]


_DECODERS = {
    "tuple": lambda dec, v, metas: tuple(dec._items(v, metas)),
    "dict": _dict,
    "odict": lambda dec, v, metas: OrderedDict(dec._pairs(v, metas)),
    "ntuple": _ntuple,
    "float": _float,
    "complex": _complex,
    "size": _size,
    "dtype": lambda dec, v, metas: dtype_named(v.get("v")),
    "device": lambda dec, v, metas: dec.device_named(v.get("v")),
    "enum": _enum_member,
    "fn": _function,
    "tensor": lambda dec, v, metas: dec.tensor(v.get("id")),
    "generator": _generator,
    "meta": _meta,
}


def decoding(what: str) -> "_Decoding":
    """Context manager: malformed data (any lookup/type failure) becomes a CheckpointError."""
    return _Decoding(what)


class _Decoding:
    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> bool:
        if err is None or isinstance(err, CheckpointError):
            return False
        if isinstance(err, (Malformed, NytorchFuncError, KeyError, IndexError, TypeError,
                            ValueError, AttributeError, RuntimeError, RecursionError)):
            raise CheckpointError(f"{self.what}: the checkpoint is malformed or was tampered "
                                  f"with ({type(err).__name__}: {err})") from err
        return False
