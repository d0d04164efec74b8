"""Events as bytes for :class:`~nytorch_func.distributed.Replica`: the general codec on the wire.

Every event kind, ``AddModule`` included, is encoded by :mod:`nytorch_func._codec` (the codec
``nf.save`` uses): the events become JSON, their tensors (snapshots, shared values) a tensor
table, module skeletons a JSON tree of classes, attributes and tensor shapes. The JSON rides in
the metadata header of one safetensors blob that also holds the tensor bytes. Nothing is
pickled; on decode, module classes are only accepted if they are ``torch.nn`` classes, already
imported by the receiving process, or passed in ``classes``, and their ``__init__`` never runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .._codec import Decoder, Encoder, decoding
from .._errors import CheckpointError
from .._events import Event
from ._errors import DistributedError

__all__ = ["encode_events", "decode_events", "FORMAT"]

FORMAT = "nytorch_func.distributed.events/2"
_META = "nytorch_func.events"


def encode_events(events: Sequence[Event], *, uid: str = "") -> bytes:
    """One blob: safetensors holding the events' tensors, the events' JSON in its header.

    ``uid`` names the replicated species (the receiver checks it).

    >>> import torch
    >>> from nytorch_func._events import AddParam, DelParam
    >>> from nytorch_func.distributed._eventwire import encode_events, decode_events
    >>> blob = encode_events([AddParam("s", torch.ones(2)), DelParam("s")])
    >>> [e.describe() for e in decode_events(blob)]
    ['add_param s [2 float32] ParamConfig(operational=True, clone=True)', 'del_param s']
    """
    enc = Encoder()
    try:
        body = [enc.event(e, f"event {i} ({e.describe()})") for i, e in enumerate(events)]
    except CheckpointError as err:
        raise DistributedError(f"sync: an event cannot be replicated: {err}") from err
    header = json.dumps({"format": FORMAT, "uid": uid, "events": body,
                         "tensors": enc.table.entries}, allow_nan=False, separators=(",", ":"))
    return st_save(enc.table.tensors, metadata={_META: header})


def decode_events(blob: bytes, *, classes: Iterable[Any] = (),
                  uid: str | None = None) -> list[Event]:
    """The events :func:`encode_events` wrote (fresh, unbound objects).

    ``classes``: module classes (or module-level functions) the events may name beyond
    ``torch.nn`` and what this process has imported. ``uid``: if given, the species the
    message must be about.
    """
    blob = bytes(blob)
    try:
        tensors = st_load(blob)
        doc = json.loads(_metadata(blob))
    except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt message
        raise DistributedError(f"sync: received a corrupt event message ({type(err).__name__}: "
                               f"{err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise DistributedError(f"sync: received events in format {got!r}, expected {FORMAT!r}; "
                               "run the same nytorch_func version on every rank")
    if uid is not None and doc.get("uid") != uid:
        raise DistributedError(f"sync: received events of species {doc.get('uid')!r}, this "
                               f"replica holds species {uid!r}; create the Replicas of a job in "
                               "the same order on every rank")
    try:
        with decoding("sync"):
            entries = {name: _here(entry) for name, entry in doc["tensors"].items()}
            dec = Decoder(tensors, entries, classes)
            return [dec.event(e) for e in doc["events"]]
    except CheckpointError as err:
        raise DistributedError(
            f"sync: could not decode the events received: {err}. A module class the events "
            "name must be importable here: import it before the Replica syncs, or pass it as "
            "nfd.Replica(p, classes=[TheClass])") from err


def _here(entry: dict[str, Any]) -> dict[str, Any]:
    """A tensor entry with a CUDA device mapped to this process's current CUDA device."""
    device = entry["device"]
    if isinstance(device, str) and device.startswith("cuda") and torch.cuda.is_available():
        return {**entry, "device": f"cuda:{torch.cuda.current_device()}"}
    return entry


def _metadata(blob: bytes) -> str:
    """The event JSON in a safetensors blob's header (8-byte little-endian header length)."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8: 8 + n])["__metadata__"][_META]
