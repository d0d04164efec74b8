"""JSON encoding of schemas, module skeletons and events, with tensors kept apart.

The codec turns the metadata of a species (module skeletons, tensor specs, parameter configs,
events) into plain JSON values and back, never using pickle and never importing a module named
by the data; plain values are the job of :mod:`._codec_values`. Tensors are not put in the
JSON: the encoder hands them to a :class:`TensorTable` and writes a reference
(``{"$t": "tensor", "id": "t3"}``); the decoder is given a mapping from those ids to tensors.
``nf.save`` stores the table in a safetensors file; a distributed layer ships the same JSON plus
the tensor bytes between processes.

Events are encoded generically from their dataclass fields, so every event kind (growth events
defined elsewhere included) round-trips as long as its fields are values the codec knows.
Module skeletons are built with ``cls.__new__`` plus ``nn.Module.__init__``, never calling the
class's own ``__init__``, and only for ``nn.Module`` subclasses the caller allows (``torch.nn``
ones, ones already imported, or ones passed in ``classes``).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._codec_values import (Malformed, TensorTable, ValueDecoder, ValueEncoder, Where,
                            decoding, described, dtype_name, dtype_named, need)
from ._config import ParamConfig
from ._config_events import BUFFER_POLICIES
from ._errors import CheckpointError
from ._events import Event
from ._schema import TensorSpec

__all__ = ["TensorTable", "Encoder", "Decoder", "event_classes", "decoding"]


# the attributes nn.Module.__init__ makes: restored by calling it, not from the file
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_STRUCTURE = frozenset({"training", "_parameters", "_buffers", "_modules",
                        "_non_persistent_buffers_set"})
_SPEC_FIELDS = {f.name: f for f in dataclasses.fields(TensorSpec)}
_META = torch.device("meta")
_SPEC_CORE = frozenset({"key", "kind", "paths", "shape", "dtype", "device"})
_SPEC_REQUIRED = _SPEC_CORE - {"paths"}
# every other field, with its default (left out of the file when the spec has it)
_SPEC_DEFAULTS = {name: f.default for name, f in _SPEC_FIELDS.items() if name not in _SPEC_CORE}


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


class Encoder(ValueEncoder):
    """Encodes species metadata to JSON values, collecting tensors in ``self.table``."""

    def _more(self, v: Any, where: Where, metas: Mapping[int, int] | None) -> Any:
        if isinstance(v, ParamConfig):
            return {"$t": "config", "v": [[k, self.value(x, (where, "{}.{}", k))]
                                          for k, x in v.asdict().items()]}
        if isinstance(v, TensorSpec):
            return self.spec(v, where)
        if isinstance(v, Event):  # the steps of a Batch
            return self.event(v, where)
        if isinstance(v, weakref.ReferenceType) and metas is not None:
            target = v()
            live = target is not None and id(target) in metas
            return {"$t": "weakref", "v": {"$t": "meta", "i": metas[id(target)]} if live else None}
        if isinstance(v, nn.Module) and metas is None:
            return self.module(v, where)
        return NotImplemented

    def spec(self, s: TensorSpec, where: Where) -> dict:
        """A spec as a compact record: fields at their defaults are left out."""
        out: dict[str, Any] = {"key": s.key, "kind": s.kind, "shape": list(s.shape),
                               "dtype": dtype_name(s.dtype), "device": str(s.device)}
        if s.paths != (s.key,):
            out["paths"] = list(s.paths)
        for name, default in _SPEC_DEFAULTS.items():
            v = getattr(s, name)
            if v is not default and not (type(v) is type(default) and v == default):
                out[name] = self.value(v, (where, "{}.{}", name))
        return {"$t": "tspec", "v": out}

    # module skeletons -------------------------------------------------------------------------
    def module(self, root: nn.Module, where: Where) -> dict:
        """A skeleton (tensors on any device; only shapes/dtypes are kept) as JSON."""
        metas = _Metas()
        for _, t in [*root.named_parameters(remove_duplicate=False),
                     *root.named_buffers(remove_duplicate=False)]:
            metas.add(t)
        seen: dict[int, str] = {}
        return {"$t": "module", "metas": metas.table,
                "root": self._module_node(root, where, "", metas, seen)}

    def _tensor(self, v: torch.Tensor, where: Where, metas: Mapping[int, int] | None) -> Any:
        if isinstance(metas, _Metas) and id(v) not in metas and v.device.type == "meta":
            # a data-free tensor the skeleton keeps but does not register (an RNN's
            # _flat_weights entry of a deleted parameter): its shape and dtype are all of it
            return {"$t": "meta", "i": metas.add(v)}
        return super()._tensor(v, where, metas)

    def _module_node(self, m: nn.Module, where: Where, path: str, metas: "_Metas",
                     seen: dict[int, str]) -> dict:
        if id(m) in seen:
            return {"same": seen[id(m)]}
        seen[id(m)] = path
        cls = type(m)
        name = ((where, "{}:{}", path or "<root>"), "{} ({})", cls.__name__)
        for key in _MODULE_INTERNALS - _STRUCTURE:
            hooks = m.__dict__.get(key)
            if hooks:
                raise CheckpointError(f"save: module {described(name)} has {key} registered; hooks "
                                      "are code "
                                      "and cannot be saved without pickle; remove them first")
        attrs = {k: self.value(v, (name, "module {} attribute {!r}", k), metas)
                 for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS}
        return {
            "class": [cls.__module__, cls.__qualname__],
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
    def event(self, e: Event, where: Where) -> dict:
        kinds = self.__dict__.get("_kinds") or self.__dict__.setdefault("_kinds", event_classes())
        if not dataclasses.is_dataclass(e) or kinds.get(e.kind) is not type(e):
            raise CheckpointError(f"save: {described(where)} is an event of type {type(e).__name__} that "
                                  "the codec does not know (not a dataclass Event subclass)")
        fields = {f.name: self.value(getattr(e, f.name), (where, "{}.{}", f.name))
                  for f in dataclasses.fields(e)}
        return {"$t": "event", "kind": e.kind, "v": fields}


class _Metas(dict):
    """The tensors of a skeleton by ``id``: index into ``table`` (shape, dtype, flags)."""

    def __init__(self) -> None:
        super().__init__()
        self.table: list[dict] = []
        self._keep: list[torch.Tensor] = []

    def add(self, t: torch.Tensor) -> int:
        i = self.get(id(t))
        if i is None:
            i = self[id(t)] = len(self.table)
            self._keep.append(t)
            self.table.append({"shape": list(t.shape), "dtype": dtype_name(t.dtype),
                               "param": isinstance(t, nn.Parameter),
                               "requires_grad": bool(t.requires_grad)})
        return i


class Decoder(ValueDecoder):
    """Decodes what :class:`Encoder` wrote (see :class:`ValueDecoder` for the arguments)."""

    def _more(self, tag: str, v: dict, metas: list | None) -> Any:
        if tag == "config":
            return self._config(v["v"])
        if tag in ("spec", "tspec"):
            return self.spec(v)
        if tag == "weakref":
            target = v["v"]
            return None if target is None else weakref.ref(self.value(target, metas))
        if tag == "module":
            return self.module(v)
        if tag == "event":
            return self.event(v)
        raise Malformed(f"unknown tag {tag!r:.40}")

    def _config(self, items: Any) -> ParamConfig:
        """A ParamConfig; equal ones of scalar attributes are one (immutable) object."""
        memo = self.__dict__.setdefault("_configs", {})
        try:
            key = tuple((k, x) for k, x in items if x is None or type(x) in (bool, int, str))
            if len(key) == len(items):
                found = memo.get(key)
                if found is not None:
                    return found
        except (TypeError, ValueError):
            raise Malformed("bad config") from None
        config = ParamConfig(**{self.str(k): self.value(x) for k, x in items})
        if len(key) == len(items):
            memo[key] = config
        return config

    def _fields(self, raw: Any, fields: Mapping[str, dataclasses.Field], what: str) -> dict:
        """The decoded fields of a record; missing ones take their defaults when lenient."""
        need(isinstance(raw, dict), f"{what} without fields")
        missing = set(fields) - set(raw)
        if self.lenient:
            missing = {k for k in missing if fields[k].default is dataclasses.MISSING
                       and fields[k].default_factory is dataclasses.MISSING}
        if missing or not raw.keys() <= fields.keys():
            raise Malformed(f"fields of {what}: {sorted(raw)}, expected {sorted(fields)}")
        return {k: self.value(x) for k, x in raw.items()}

    def spec(self, v: dict) -> TensorSpec:
        tag = v.get("$t")
        if tag == "spec":  # format version 1: every field, each a tagged value
            out = self._fields(v.get("v"), _SPEC_FIELDS, "a tensor spec")
        else:
            need(tag == "tspec" and isinstance(v.get("v"), dict), "bad tensor spec")
            raw = v["v"]
            if not (_SPEC_REQUIRED <= raw.keys() <= _SPEC_FIELDS.keys()):
                raise Malformed(f"tensor spec fields {sorted(raw)}")
            key = raw["key"]
            paths, shape = raw.get("paths", (key,)), raw["shape"]
            need(isinstance(paths, (list, tuple)) and isinstance(shape, list), "spec paths/shape")
            out = {"key": key, "kind": raw["kind"], "paths": tuple(paths), "shape": tuple(shape),
                   "dtype": dtype_named(raw["dtype"]), "device": self.device_named(raw["device"])}
            for name in raw.keys() - _SPEC_CORE:
                x = raw[name]
                out[name] = x if x is None or type(x) in (bool, int, str) else self.value(x)
        return _checked_spec(out)

    # module skeletons -------------------------------------------------------------------------
    def module(self, v: dict) -> nn.Module:
        need(v.get("$t") == "module" and isinstance(v.get("metas"), list), "bad module")
        metas = [self._meta(m) for m in v["metas"]]
        return self._module_node(v["root"], "", metas, {})

    def _meta(self, m: dict) -> torch.Tensor:
        shape = m["shape"]
        need(isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape),
             "bad skeleton tensor shape")
        t = torch.empty(shape, dtype=dtype_named(m["dtype"]), device=_META)
        if m["param"]:
            return nn.Parameter(t, requires_grad=bool(m["requires_grad"]))
        return t

    def _module_node(self, v: dict, path: str, metas: list, built: dict) -> nn.Module:
        if "same" in v:
            need(v["same"] in built, "reference to an unknown submodule")
            return built[v["same"]]
        cls = self.cls(v["class"], "nn.Module", lambda c: issubclass(c, nn.Module))
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        built[path] = m
        d = m.__dict__
        for k, x in v["attrs"].items():
            if k in _MODULE_INTERNALS:
                raise Malformed(f"attribute {k!r} overrides nn.Module internals")
            d[self.str(k)] = self.value(x, metas)
        need(isinstance(v["training"], bool), "bad training flag")
        d["training"] = v["training"]
        for k, i in v["params"].items():
            d["_parameters"][k] = None if i is None else metas[i]
        for k, i in v["buffers"].items():
            d["_buffers"][k] = None if i is None else metas[i]
        d["_non_persistent_buffers_set"].update(self.str(k) for k in v["non_persistent"])
        for k, c in v["children"].items():
            d["_modules"][k] = None if c is None else self._module_node(
                c, f"{path}.{k}" if path else k, metas, built)
        return m

    # events -----------------------------------------------------------------------------------
    def event(self, v: dict) -> Event:
        need(v.get("$t") == "event", "bad event")
        kinds = self.__dict__.get("_kinds") or self.__dict__.setdefault("_kinds", event_classes())
        cls = kinds.get(v["kind"])
        if cls is None:
            raise CheckpointError(f"load: unknown event kind {v['kind']!r:.60}; the file was "
                                  "written by a newer or different nytorch_func")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**self._fields(v["v"], fields, cls.__name__))


def _checked_spec(out: dict[str, Any]) -> TensorSpec:
    """A TensorSpec of decoded fields, each checked (Malformed otherwise)."""
    paths, shape, kind, config = out["paths"], out["shape"], out["kind"], out.get("config")
    ok = (kind in ("param", "buffer") and paths and out["key"] == paths[0]
          and all(type(p) is str for p in paths) and all(type(n) is int and n >= 0 for n in shape)
          and type(out["dtype"]) is torch.dtype and type(out["device"]) is torch.device
          and (config is None) == (kind == "buffer")
          and (config is None or type(config) is ParamConfig)
          and (out.get("pid") is None or type(out["pid"]) is int)
          and type(out.get("requires_grad", False)) is bool and type(out.get("state", True)) is bool
          and type(out.get("persistent", True)) is bool
          and out.get("policy", "keep") in BUFFER_POLICIES)
    reset = out.get("reset")
    if ok and reset is not None:
        ok = (isinstance(reset, torch.Tensor) and tuple(reset.shape) == shape
              and reset.dtype == out["dtype"])
    if not ok:
        raise Malformed(f"tensor spec {out.get('key')!r:.60}: a field has the wrong form")
    return TensorSpec(**out)
