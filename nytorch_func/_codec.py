"""JSON encoding of schemas, module skeletons and events, with tensors kept apart.

The codec turns the metadata of a species (module skeletons, tensor specs, parameter configs,
events) into plain JSON values and back, never using pickle and never importing a module named
by the data. Tensors are not put in the JSON: the encoder hands them to a :class:`TensorTable`
and writes a reference (``{"$t": "tensor", "id": "t3"}``); the decoder is given a mapping from
those ids to tensors. ``nf.save`` stores the table in a safetensors file; a distributed layer can
ship the same JSON plus the tensor bytes between processes.

Values are JSON scalars, lists, or tagged objects ``{"$t": tag, ...}`` (tuples, dtypes, devices,
non-finite floats, configs, specs, modules, events, tensors). Decoding validates every field and
raises :class:`CheckpointError` naming what is wrong; it only builds classes that are
``nn.Module`` subclasses the caller allows (``torch.nn`` ones, ones already imported, or ones
passed in ``classes``), and it makes modules with ``cls.__new__`` plus ``nn.Module.__init__``,
never calling the class's own ``__init__``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ._config import ParamConfig
from ._errors import CheckpointError, NytorchFuncError
from ._events import Event
from ._schema import TensorSpec

__all__ = ["TensorTable", "Encoder", "Decoder", "event_classes"]


# the attributes nn.Module.__init__ makes: restored by calling it, not from the file
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_STRUCTURE = frozenset({"training", "_parameters", "_buffers", "_modules",
                        "_non_persistent_buffers_set"})
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(TensorSpec))
_NO_CLASSES: tuple = ()


def _qualified(obj: Any) -> tuple[str, str]:
    return getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", "")


def event_classes() -> dict[str, type[Event]]:
    """Every concrete event class by its ``kind`` (subclasses of Event defined anywhere)."""
    out: dict[str, type[Event]] = {}
    todo = list(Event.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.kind != Event.kind:
            out[cls.kind] = cls
    return out


class TensorTable:
    """Tensors met while encoding, each stored once (by identity) under an id ``t0, t1, ...``.

    ``entries[id]`` holds what the JSON needs to rebuild the tensor object exactly
    (``param``: an ``nn.Parameter``; ``requires_grad``; ``device``) and ``what`` (a readable
    description for error messages).
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self._ids: dict[int, str] = {}
        self._keep: list[torch.Tensor] = []  # keeps ids stable while encoding

    def add(self, t: torch.Tensor, what: str) -> str:
        name = self._ids.get(id(t))
        if name is not None:
            return name
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            raise CheckpointError(f"save: {what} is a {t.layout} / {t.device.type} tensor; only "
                                  "dense tensors with data can be saved")
        name = f"t{len(self.tensors)}"
        self._ids[id(t)] = name
        self._keep.append(t)
        self.tensors[name] = t.detach().to("cpu", copy=True).contiguous()
        self.entries[name] = {"param": isinstance(t, nn.Parameter),
                              "requires_grad": bool(t.requires_grad),
                              "device": str(t.device), "what": what}
        return name


class Encoder:
    """Encodes species metadata to JSON values, collecting tensors in ``self.table``."""

    def __init__(self) -> None:
        self.table = TensorTable()

    # plain values ----------------------------------------------------------------------------
    def value(self, v: Any, where: str, metas: Mapping[int, int] | None = None) -> Any:
        """A JSON value for ``v``; ``metas`` maps skeleton tensors to their index (attributes)."""
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"$t": "float", "v": repr(v)}
        if isinstance(v, tuple):
            return {"$t": "tuple", "v": [self.value(x, f"{where}[{i}]", metas)
                                         for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]", metas) for i, x in enumerate(v)]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"$t": "dict", "v": [[k, self.value(x, f"{where}[{k!r}]", metas)]
                                        for k, x in v.items()]}
        if isinstance(v, torch.dtype):
            return {"$t": "dtype", "v": str(v).replace("torch.", "")}
        if isinstance(v, torch.device):
            return {"$t": "device", "v": str(v)}
        if isinstance(v, ParamConfig):
            return {"$t": "config", "v": [[k, self.value(x, f"{where}.{k}")]
                                          for k, x in v.asdict().items()]}
        if isinstance(v, TensorSpec):
            return self.spec(v, where)
        if isinstance(v, Event):  # the steps of a Batch
            return self.event(v, where)
        if isinstance(v, torch.Tensor):
            if metas is not None:
                if id(v) in metas:
                    return {"$t": "meta", "i": metas[id(v)]}
                raise CheckpointError(f"save: {where} is a tensor that is not a parameter or "
                                      "buffer of the model; register it (register_buffer) so it "
                                      "can be saved")
            return {"$t": "tensor", "id": self.table.add(v, where)}
        if isinstance(v, weakref.ReferenceType) and metas is not None:
            target = v()
            live = target is not None and id(target) in metas
            return {"$t": "weakref", "v": {"$t": "meta", "i": metas[id(target)]} if live else None}
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)):
            module, qualname = _qualified(v)
            if "<" in qualname or _lookup(module, qualname) is not v:
                raise CheckpointError(f"save: {where} is the function {qualname!r}, which cannot "
                                      "be found by name (a lambda, closure or local function); "
                                      "use a module-level function or an nn.Module")
            return {"$t": "fn", "module": module, "qualname": qualname}
        if isinstance(v, nn.Module) and metas is None:
            return self.module(v, where)
        raise CheckpointError(f"save: {where} is a {type(v).__name__}, which a checkpoint cannot "
                              "hold without pickle (allowed: numbers, strings, None, tuples/lists/"
                              "dicts of those, torch dtypes and devices, module-level functions)")

    def config(self, c: ParamConfig | None, where: str) -> Any:
        return None if c is None else self.value(c, where)

    def spec(self, s: TensorSpec, where: str) -> dict:
        return {"$t": "spec", "v": {name: self.value(getattr(s, name), f"{where}.{name}")
                                     for name in _SPEC_FIELDS}}

    # module skeletons -------------------------------------------------------------------------
    def module(self, root: nn.Module, where: str) -> dict:
        """A skeleton (tensors on any device; only shapes/dtypes are kept) as JSON."""
        metas: dict[int, int] = {}
        table: list[dict] = []
        for _, t in [*root.named_parameters(remove_duplicate=False),
                     *root.named_buffers(remove_duplicate=False)]:
            if id(t) not in metas:
                metas[id(t)] = len(table)
                table.append({"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                              "param": isinstance(t, nn.Parameter),
                              "requires_grad": bool(t.requires_grad)})
        seen: dict[int, str] = {}
        return {"$t": "module", "metas": table,
                "root": self._module_node(root, where, "", metas, seen)}

    def _module_node(self, m: nn.Module, where: str, path: str, metas: dict[int, int],
                     seen: dict[int, str]) -> dict:
        if id(m) in seen:
            return {"same": seen[id(m)]}
        seen[id(m)] = path
        cls = type(m)
        name = f"{where}:{path or '<root>'} ({cls.__name__})"
        module, qualname = _qualified(cls)
        for key in _MODULE_INTERNALS - _STRUCTURE:
            hooks = m.__dict__.get(key)
            if hooks:
                raise CheckpointError(f"save: module {name} has {key} registered; hooks are code "
                                      "and cannot be saved without pickle; remove them first")
        attrs = {k: self.value(v, f"module {name} attribute {k!r}", metas)
                 for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS}
        return {
            "class": [module, qualname],
            "training": bool(m.training),
            "params": {k: None if t is None else metas[id(t)] for k, t in m._parameters.items()},
            "buffers": {k: None if t is None else metas[id(t)] for k, t in m._buffers.items()},
            "non_persistent": sorted(m._non_persistent_buffers_set),
            "attrs": attrs,
            "children": {k: None if c is None else
                         self._module_node(c, where, f"{path}.{k}" if path else k, metas, seen)
                         for k, c in m._modules.items()},
        }

    # events -----------------------------------------------------------------------------------
    def event(self, e: Event, where: str) -> dict:
        if not dataclasses.is_dataclass(e) or event_classes().get(e.kind) is not type(e):
            raise CheckpointError(f"save: {where} is an event of type {type(e).__name__} that "
                                  "the codec does not know (not a dataclass Event subclass)")
        fields = {f.name: self.value(getattr(e, f.name), f"{where}.{f.name}")
                  for f in dataclasses.fields(e)}
        return {"$t": "event", "kind": e.kind, "v": fields}


def _lookup(module: str, qualname: str) -> Any:
    """The object ``module.qualname`` if ``module`` is already imported; never imports."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


class _Malformed(Exception):
    """Internal: a decoding step met data of the wrong form (wrapped into CheckpointError)."""


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Malformed(what)


class Decoder:
    """Decodes what :class:`Encoder` wrote. ``tensors``: the table's tensors by id.

    ``classes``: extra ``nn.Module`` subclasses (and module-level functions) the data may name,
    matched by module and qualified name.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], entries: Mapping[str, Any],
                 classes: Iterable[Any] = _NO_CLASSES) -> None:
        self.tensors = tensors
        self.entries = entries
        self.allowed = {_qualified(c): c for c in classes}
        self._built: dict[str, torch.Tensor] = {}

    # plain values ----------------------------------------------------------------------------
    def value(self, v: Any, metas: list | None = None) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v
        if isinstance(v, list):
            return [self.value(x, metas) for x in v]
        _need(isinstance(v, dict) and isinstance(v.get("$t"), str), f"unexpected value {v!r:.80}")
        tag = v["$t"]
        if tag == "tuple":
            _need(isinstance(v["v"], list), "tuple without items")
            return tuple(self.value(x, metas) for x in v["v"])
        if tag == "dict":
            return {self._str(k): self.value(x, metas) for k, x in v["v"]}
        if tag == "float":
            _need(v["v"] in ("inf", "-inf", "nan"), f"bad float {v['v']!r}")
            return float(v["v"])
        if tag == "dtype":
            dtype = getattr(torch, self._str(v["v"]), None)
            _need(isinstance(dtype, torch.dtype), f"unknown dtype {v['v']!r}")
            return dtype
        if tag == "device":
            return torch.device(self._str(v["v"]))
        if tag == "config":
            return ParamConfig(**{self._str(k): self.value(x) for k, x in v["v"]})
        if tag == "spec":
            return self.spec(v)
        if tag == "tensor":
            return self.tensor(v["id"])
        if tag == "meta":
            _need(metas is not None, "a skeleton tensor reference outside a skeleton")
            return metas[v["i"]]  # type: ignore[index]
        if tag == "weakref":
            target = v["v"]
            return None if target is None else weakref.ref(self.value(target, metas))
        if tag == "fn":
            return self._function(self._str(v["module"]), self._str(v["qualname"]))
        if tag == "module":
            return self.module(v)
        if tag == "event":
            return self.event(v)
        raise _Malformed(f"unknown tag {tag!r}")

    @staticmethod
    def _str(v: Any) -> str:
        _need(isinstance(v, str), f"expected a string, got {v!r:.80}")
        return v

    def tensor(self, name: Any) -> torch.Tensor:
        """The tensor ``name`` as the object it was (Parameter, requires_grad, device); cached."""
        _need(isinstance(name, str) and name in self.tensors and name in self.entries,
              f"reference to an unknown tensor {name!r:.40}")
        built = self._built.get(name)
        if built is not None:
            return built
        entry = self.entries[name]
        t = self.tensors[name]
        device = torch.device(self._str(entry["device"]))
        if device != t.device:
            try:
                t = t.to(device)
            except (RuntimeError, AssertionError) as err:
                raise CheckpointError(f"load: tensor {name} ({entry.get('what')}) was saved on "
                                      f"{device}, which is not available here ({err})") from err
        requires_grad = entry["requires_grad"]
        _need(isinstance(requires_grad, bool) and isinstance(entry["param"], bool),
              f"bad flags of tensor {name}")
        if requires_grad and not (t.is_floating_point() or t.is_complex()):
            raise _Malformed(f"tensor {name} of dtype {t.dtype} cannot require grad")
        if entry["param"]:
            t = nn.Parameter(t, requires_grad=requires_grad)
        elif requires_grad:
            t = t.requires_grad_(True)
        self._built[name] = t
        return t

    def spec(self, v: dict) -> TensorSpec:
        _need(v.get("$t") == "spec" and isinstance(v.get("v"), dict), "bad tensor spec")
        f = v["v"]
        _need(set(f) == set(_SPEC_FIELDS), f"tensor spec fields {sorted(f)}")
        out = {k: self.value(x) for k, x in f.items()}
        for k in ("paths", "shape"):
            _need(isinstance(out[k], tuple), f"spec {k} must be a tuple")
        _need(out["kind"] in ("param", "buffer"), f"spec kind {out['kind']!r}")
        _need(all(isinstance(p, str) for p in out["paths"]) and out["paths"]
              and out["key"] == out["paths"][0], "spec paths")
        _need(all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                  for n in out["shape"]), "spec shape")
        _need(isinstance(out["dtype"], torch.dtype) and isinstance(out["device"], torch.device),
              "spec dtype/device")
        _need((out["config"] is None) == (out["kind"] == "buffer")
              and (out["config"] is None or isinstance(out["config"], ParamConfig)), "spec config")
        _need(out["pid"] is None or isinstance(out["pid"], int), "spec pid")
        return TensorSpec(**out)

    def _function(self, module: str, qualname: str) -> Any:
        fn = self.allowed.get((module, qualname))
        if fn is None and (module == "torch" or module.startswith("torch.")):
            fn = _lookup(module, qualname)
        if not callable(fn) or isinstance(fn, type):
            raise CheckpointError(f"load: the checkpoint names the function {module}.{qualname}, "
                                  "which is not a torch function; if you trust the file, pass it "
                                  "as nf.load(path, classes=[that_function])")
        return fn

    def _class(self, module: str, qualname: str) -> type[nn.Module]:
        cls = self.allowed.get((module, qualname))
        if cls is None:
            cls = _lookup(module, qualname)  # only classes of modules already imported
            if cls is None:
                raise CheckpointError(
                    f"load: the checkpoint needs the module class {module}.{qualname}, which is "
                    "not imported; nf.load never imports code named by a file: import it "
                    "yourself, or pass it as nf.load(path, classes=[TheClass])")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise CheckpointError(f"load: the checkpoint names {module}.{qualname} as a module "
                                  "class, but it is not an nn.Module subclass; refusing it")
        return cls

    # module skeletons -------------------------------------------------------------------------
    def module(self, v: dict) -> nn.Module:
        _need(v.get("$t") == "module" and isinstance(v.get("metas"), list), "bad module")
        metas = [self._meta(m) for m in v["metas"]]
        built: dict[str, nn.Module] = {}
        root = self._module_node(v["root"], "", metas, built)
        return root

    def _meta(self, m: dict) -> torch.Tensor:
        shape = m["shape"]
        _need(isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape),
              "bad skeleton tensor shape")
        dtype = getattr(torch, self._str(m["dtype"]), None)
        _need(isinstance(dtype, torch.dtype), f"unknown dtype {m['dtype']!r}")
        t = torch.empty(shape, dtype=dtype, device="meta")
        if m["param"]:
            return nn.Parameter(t, requires_grad=bool(m["requires_grad"]))
        return t

    def _module_node(self, v: dict, path: str, metas: list, built: dict) -> nn.Module:
        if "same" in v:
            _need(v["same"] in built, "reference to an unknown submodule")
            return built[v["same"]]
        module, qualname = v["class"]
        cls = self._class(self._str(module), self._str(qualname))
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        built[path] = m
        d = m.__dict__
        for k, x in v["attrs"].items():
            _need(k not in _MODULE_INTERNALS, f"attribute {k!r} overrides nn.Module internals")
            d[self._str(k)] = self.value(x, metas)
        _need(isinstance(v["training"], bool), "bad training flag")
        d["training"] = v["training"]
        for k, i in v["params"].items():
            d["_parameters"][k] = None if i is None else metas[i]
        for k, i in v["buffers"].items():
            d["_buffers"][k] = None if i is None else metas[i]
        d["_non_persistent_buffers_set"].update(self._str(k) for k in v["non_persistent"])
        for k, c in v["children"].items():
            d["_modules"][k] = None if c is None else self._module_node(
                c, f"{path}.{k}" if path else k, metas, built)
        return m

    # events -----------------------------------------------------------------------------------
    def event(self, v: dict) -> Event:
        _need(v.get("$t") == "event", "bad event")
        cls = event_classes().get(v["kind"])
        if cls is None:
            raise CheckpointError(f"load: unknown event kind {v['kind']!r:.60}; the file was "
                                  "written by a newer or different nytorch_func")
        names = {f.name for f in dataclasses.fields(cls)}
        fields = v["v"]
        _need(isinstance(fields, dict) and set(fields) == names,
              f"fields of {cls.__name__}: {sorted(fields) if isinstance(fields, dict) else fields}")
        return cls(**{k: self.value(x) for k, x in fields.items()})


def decoding(what: str):
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
        if isinstance(err, (_Malformed, NytorchFuncError, KeyError, IndexError, TypeError,
                            ValueError, AttributeError, RuntimeError)):
            raise CheckpointError(f"{self.what}: the checkpoint is malformed or was tampered "
                                  f"with ({type(err).__name__}: {err})") from err
        return False
