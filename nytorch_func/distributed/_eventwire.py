"""Events as bytes: a JSON header plus raw tensor bytes in one safetensors blob, never pickle.

This is the distributed layer's own minimal codec for the events a replicated species needs
while ``nytorch_func._codec`` (the general one, with module skeletons) is not available:
``AddParam``, ``DelParam``, ``AddBuffer``, ``DelBuffer``, ``SetNone``, ``DelModule``,
``Configure`` and ``ConfigureBuffer``. ``AddModule`` needs a module skeleton encoded without
pickle, which only the general codec does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .._config import ParamConfig
from .._events import (AddBuffer, AddParam, Configure, ConfigureBuffer, DelBuffer, DelModule,
                       DelParam, Event, SetNone)
from ._errors import DistributedError

__all__ = ["encode_events", "decode_events", "FORMAT"]

FORMAT = "nytorch_func.distributed.events/1"
_META = "nytorch_func.events"


def _config_json(cfg: ParamConfig) -> dict[str, Any]:
    out = {}
    for key, value in cfg.asdict().items():
        out[key] = _value_json(value, key)
    return out


def _value_json(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_value_json(v, key) for v in value]}
    raise DistributedError(f"sync: the ParamConfig attribute {key!r} = {value!r} "
                           f"({type(value).__name__}) has no JSON form; use str, int, float, "
                           "bool, None or tuples of them in replicated species")


def _value_back(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(_value_back(v) for v in value["tuple"])
    return value


def _config_back(d: dict[str, Any]) -> ParamConfig:
    return ParamConfig(**{k: _value_back(v) for k, v in d.items()})


class _Tensors:
    """Collects the tensors of an encoding under stable names, with their device kind."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, t: torch.Tensor) -> dict[str, Any]:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = t.detach().to("cpu").contiguous().clone()
        return {"tensor": name, "device": t.device.type,
                "requires_grad": bool(t.requires_grad),
                "parameter": isinstance(t, nn.Parameter)}


def _event_json(event: Event, tensors: _Tensors) -> dict[str, Any]:
    if isinstance(event, AddParam):
        return {"kind": "add_param", "path": event.path, "snapshot": tensors.put(event.snapshot),
                "config": _config_json(event.config), "requires_grad": event.requires_grad}
    if isinstance(event, AddBuffer):
        return {"kind": "add_buffer", "path": event.path, "tensor": tensors.put(event.tensor),
                "state": event.state, "persistent": event.persistent}
    if isinstance(event, (DelParam, DelBuffer, DelModule, SetNone)):
        return {"kind": event.kind, "path": event.path}
    if isinstance(event, Configure):
        return {"kind": "configure", "path": event.path,
                "configs": [[k, _config_json(c)] for k, c in event.configs],
                "to_shared": [[k, tensors.put(t)] for k, t in event.to_shared]}
    if isinstance(event, ConfigureBuffer):
        return {"kind": "configure_buffer", "path": event.path, "policy": event.policy}
    raise DistributedError(
        f"sync: cannot replicate a {type(event).__name__} ({event.describe()}) yet: it needs the "
        "general codec (nytorch_func._codec, module skeletons without pickle). Replicate "
        "add/del param/buffer, set_none, del_module and configure events, or build the module "
        "into the species on every rank before the job starts")


def encode_events(events: Sequence[Event]) -> bytes:
    """One blob: safetensors with the events' JSON in its metadata header.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func._events import AddParam, DelParam
    >>> from nytorch_func.distributed._eventwire import encode_events, decode_events
    >>> blob = encode_events([AddParam("s", torch.ones(2)), DelParam("s")])
    >>> [e.describe() for e in decode_events(blob)]
    ['add_param s [2 float32] ParamConfig(operational=True, clone=True)', 'del_param s']
    """
    tensors = _Tensors()
    body = [_event_json(e, tensors) for e in events]
    header = json.dumps({"format": FORMAT, "events": body}, separators=(",", ":"))
    return st_save(tensors.tensors, metadata={_META: header})


def _tensor_back(ref: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    t = tensors[ref["tensor"]]
    if ref["device"] == "cuda" and torch.cuda.is_available():
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    if ref["parameter"]:
        return nn.Parameter(t, requires_grad=ref["requires_grad"])
    return t.requires_grad_(True) if ref["requires_grad"] else t


def decode_events(blob: bytes) -> list[Event]:
    """The events :func:`encode_events` wrote (fresh, unbound objects)."""
    try:
        tensors = st_load(bytes(blob))
        header = _metadata(bytes(blob))
        doc = json.loads(header)
    except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt message
        raise DistributedError(f"sync: received a corrupt event message ({type(err).__name__}: "
                               f"{err})") from err
    if doc.get("format") != FORMAT:
        raise DistributedError(f"sync: received events in format {doc.get('format')!r}, expected "
                               f"{FORMAT!r}; run the same nytorch_func version on every rank")
    out: list[Event] = []
    for e in doc["events"]:
        kind = e["kind"]
        if kind == "add_param":
            out.append(AddParam(e["path"], _tensor_back(e["snapshot"], tensors).detach(),
                                _config_back(e["config"]), e["requires_grad"]))
        elif kind == "add_buffer":
            out.append(AddBuffer(e["path"], _tensor_back(e["tensor"], tensors), e["state"],
                                 e["persistent"]))
        elif kind in _REMOVALS:
            out.append(_REMOVALS[kind](e["path"]))
        elif kind == "configure":
            out.append(Configure(e["path"], tuple((k, _config_back(c)) for k, c in e["configs"]),
                                 tuple((k, _tensor_back(r, tensors)) for k, r in e["to_shared"])))
        elif kind == "configure_buffer":
            out.append(ConfigureBuffer(e["path"], e["policy"]))
        else:
            raise DistributedError(f"sync: received an event of unknown kind {kind!r}")
    return out


_REMOVALS = {"del_param": DelParam, "del_buffer": DelBuffer, "del_module": DelModule,
             "set_none": SetNone}


def _metadata(blob: bytes) -> str:
    """The JSON metadata string of a safetensors blob (8-byte little-endian header length)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8: 8 + n])
    return header["__metadata__"][_META]
