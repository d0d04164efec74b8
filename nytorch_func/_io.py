"""save / load: particles, training state and their species' history in one safetensors file.

File layout (format version 2): every tensor (particle leaves, plain tensors of the saved tree,
shared tensors, event snapshots, reset values) is a tensor of one safetensors file; the
safetensors metadata header carries

- ``format``: ``"nytorch_func"`` and ``nytorch_func.format_version``: ``"2"``,
- ``nytorch_func.payload``: JSON with, per species, the schema of the oldest saved version
  (module skeleton, tensor specs, shared tensors) and every event from there to the head, the
  saved tree (particles, plain values, containers, NamedTuples, generators) and, per tensor,
  its checksum (:mod:`._checksum`) and what it is,
- ``nytorch_func.payload_checksum``: the checksum of that JSON text.

Loading replays the events on the decoded base schema, so the loaded species has the very
version numbers, parameter ids and events of the saved one (or, with ``species=``, the
particles join a live species whose history the file's is a prefix of). The JSON is decoded by
:mod:`._codec`, which never imports a module named by the file and never calls a model class's
``__init__``. Writes are atomic (:mod:`._tensorfile`). Files of format version 1 (sha256
checksums, no reset values or batch shapes of leafless particles) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from . import _tensorfile
from ._checksum import checksum
from ._codec_names import allowed_classes
from ._codec_values import decoding, need
from ._errors import ArgumentTypeError, CheckpointError
from ._io_join import join
from ._io_tree import TreeDecoder, TreeEncoder
from ._schema import Schema
from ._species import Species

__all__ = ["save", "load", "CheckpointError"]

FORMAT = "nytorch_func"
FORMAT_VERSION = "2"
_READS = ("1", "2")
_PAYLOAD = "nytorch_func.payload"
_PAYLOAD_SUM = "nytorch_func.payload_checksum"
_PAYLOAD_SHA = "nytorch_func.payload_sha256"  # format version 1


def _text_checksum(text: str) -> str:
    return checksum(np.frombuffer(text.encode(), dtype=np.uint8))


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (used by nytorch_func.distributed's manifests)."""
    _tensorfile.atomic_write(path, [data])


# saving -----------------------------------------------------------------------------------------

def save(path: str | os.PathLike, obj: Any, *, sync: bool = True) -> None:
    """Write ``obj`` to ``path``: particles and populations, alone or inside training state.

    ``obj`` is a particle or any tree of particles, tensors, Python numbers, strings and
    ``None``, dicts, lists, tuples, ``NamedTuple`` s (optimizer states), enum members and
    ``torch.Generator`` s. One safetensors file holds every tensor; the species' history (module
    skeleton, parameter specs and configs, and every event since the oldest saved version) is
    JSON in its metadata header, with a checksum per tensor. No pickle is used, so :func:`load`
    of an untrusted file cannot run code. The write is atomic: the old file stays intact if
    saving fails or the process dies. ``sync=True`` (the default, as
    ``torch.distributed.checkpoint``'s ``sync_files``) also fsyncs the file and its directory,
    so a finished save survives a power loss; ``sync=False`` skips that (as ``torch.save``
    does) for frequent, cheap checkpoints. A particle whose tensors disagree with its schema
    is refused.

    >>> import os, tempfile, torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(3, 2))
    >>> q = nf.add_param(p, "scale", torch.nn.Parameter(torch.ones(2)))
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
    >>> nf.save(path, {"old": p, "new": q, "step": 7})
    >>> back = nf.load(path)
    >>> back["old"].version, back["new"].version, back["old"].species is back["new"].species
    (0, 1, True)
    >>> torch.equal(nf.touch(back["old"])["scale"], q["scale"]), back["step"]
    (True, 7)
    """
    target = _path(path, "save")
    if not isinstance(sync, bool):
        raise ArgumentTypeError(f"save: sync must be True or False, got {type(sync).__name__}")
    enc = TreeEncoder()
    root = enc.tree(obj)
    species = [_encode_species(enc, sp, base) for sp, base in enc.species]
    stored: dict[str, torch.Tensor] = {}
    views = {}
    entries = enc.table.entries
    for name, t in enc.table.tensors.items():
        entry = entries[name]
        if t.dtype not in _tensorfile.CODES:  # complex128, ...: stored as its bytes
            entry["dtype"], entry["shape"] = str(t.dtype)[6:], list(t.shape)
            t = t.reshape(-1).view(torch.uint8)
        view = views[name] = _tensorfile.byte_view(t)
        entry["checksum"] = checksum(view)
        stored[name] = t
    payload = json.dumps({"species": species, "root": root, "tensors": entries},
                         allow_nan=False, separators=(",", ":"))
    metadata = {"format": FORMAT, "nytorch_func.format_version": FORMAT_VERSION,
                _PAYLOAD: payload, _PAYLOAD_SUM: _text_checksum(payload)}
    _tensorfile.write(target, stored, metadata, sync=sync, views=views)


def _encode_species(enc: TreeEncoder, sp: Species, base: Schema) -> dict:
    where = f"species {sp.name!r}"
    events = []
    schema = base
    while schema._next is not None:
        event, schema = schema._next.event, schema._next.schema
        events.append(enc.event(event, (where, "{} event to v{}", schema.version)))
    name = sp.name.rpartition("#")[0] or sp.name
    return {
        "name": name, "uid": sp.uid, "head": schema.version,
        "base": {
            "version": base.version, "next_pid": base.next_pid,
            "skeleton": enc.module(base._skeleton, (where, "{} v{}", base.version)),
            "specs": [enc.spec(s, (where, "{} spec {}", s.key)) for s in base.specs],
            "shared": [[k, enc.value(t, (where, "{} shared {!r}", k))]
                       for k, t in base.shared.items()],
        },
        "events": events,
    }


def _path(path: Any, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"{what}: path must be a str or os.PathLike, got "
                                f"{type(path).__name__}")
    return os.fspath(path)


# loading ----------------------------------------------------------------------------------------

def load(path: str | os.PathLike, *, device: str | torch.device | None = None,
         species: Species | None = None, classes: Iterable[Any] = ()) -> Any:
    """Read what :func:`save` wrote, in the same shape.

    Particles saved together that share a species share one (new) species on load, with the
    same version numbers, parameter ids and events, so an old-version particle touched forward
    gets exactly what the original would have.

    ``device``: load every tensor onto this device instead of the one it was saved on (the
    species' specs, snapshots and ``nf.to`` events follow: everything the file says lived on a
    device now lives on ``device``). ``species``: join this live species instead of making a
    new one; the file's history must be a prefix of (or equal to) the species' history, else a
    :class:`CheckpointError` names the first difference. ``classes``: module, enum and
    NamedTuple classes (and module-level functions) the file may name beyond ``torch`` and
    modules already imported; nf.load never imports code named by a file and never calls a
    class's ``__init__``. A truncated, corrupted or tampered file raises
    :class:`CheckpointError`.

    >>> import os, tempfile, torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(2, 2), 4)
    >>> path = os.path.join(tempfile.mkdtemp(), "pop.safetensors")
    >>> nf.save(path, pop)
    >>> back = nf.load(path, species=pop.species)   # joins: combines with live particles
    >>> back.batch_shape, torch.equal((back - pop)["weight"], torch.zeros(4, 2, 2))
    (torch.Size([4]), True)
    >>> with open(path, "r+b") as f:  # flip one byte at the end of the tensor data
    ...     _ = f.seek(-1, os.SEEK_END); b = f.read(1); _ = f.seek(-1, os.SEEK_END)
    ...     _ = f.write(bytes([b[0] ^ 0xFF]))
    >>> nf.load(path)
    Traceback (most recent call last):
    ...
    nytorch_func._errors.CheckpointError: load: checksum mismatch for tensor ...
    """
    source = _path(path, "load")
    allowed = allowed_classes(classes, "load")
    target = _device(device)
    if species is not None and not isinstance(species, Species):
        raise ArgumentTypeError(f"load: species must be a Species (p.species), got "
                                f"{type(species).__name__}")
    meta, stored, views = _tensorfile.read(source)
    if meta.get("format") != FORMAT or _PAYLOAD not in meta:
        raise CheckpointError(f"load: {source!r} is a safetensors file but not a nytorch_func "
                              "checkpoint (no nytorch_func metadata); for plain weights use "
                              "safetensors.torch.load_file and module.load_state_dict")
    version = meta.get("nytorch_func.format_version")
    if version not in _READS:
        raise CheckpointError(f"load: checkpoint format version {version!r} is not supported "
                              f"(this nytorch_func reads versions {', '.join(_READS)})")
    payload = meta[_PAYLOAD]
    if not _payload_intact(payload, meta, version):
        raise CheckpointError(f"load: the metadata of {source!r} does not match its checksum; "
                              "the file is corrupted or was edited")
    with decoding("load"):
        doc = json.loads(payload)
        entries = doc["tensors"]
        if not isinstance(entries, dict) or set(entries) != set(stored):
            missing = sorted(set(entries) - set(stored))
            extra = sorted(set(stored) - set(entries))
            raise CheckpointError(f"load: the tensors in the file do not match its metadata "
                                  f"(missing {missing[:5]}, unexpected {extra[:5]})")
        tensors = {name: _verified(name, t, views[name], entries[name])
                   for name, t in stored.items()}
        dec = TreeDecoder(tensors, entries, allowed, device=target, lenient=version == "1")
        chains = [_decode_species(dec, rec) for rec in doc["species"]]
        if species is not None and chains:
            if len(chains) > 1:
                raise CheckpointError(f"load: the checkpoint holds {len(chains)} species; "
                                      "species= joins a checkpoint of one species (save "
                                      "particles of different species in separate files)")
            chains = [join(chains[0], species)]
        return dec.tree(doc["root"], chains)


def _device(device: Any) -> torch.device | None:
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise ArgumentTypeError(f"load: device must be a str or torch.device, got "
                                f"{type(device).__name__}")
    try:
        out = torch.device(device)
    except RuntimeError as err:
        raise CheckpointError(f"load: {device!r} is not a device ({err})") from None
    if out.type == "meta":
        raise CheckpointError("load: device='meta' holds no data, so a checkpoint cannot be "
                              "loaded onto it; load onto a real device (e.g. 'cpu') and make "
                              "meta copies yourself if you need them")
    try:
        torch.empty(0, device=out)
    except (RuntimeError, AssertionError) as err:
        raise CheckpointError(f"load: device {str(out)!r} is not available here ({err})"
                              ) from None
    return out


def _payload_intact(payload: str, meta: dict[str, str], version: str) -> bool:
    if version == "1":
        return hashlib.sha256(payload.encode()).hexdigest() == meta.get(_PAYLOAD_SHA)
    return _text_checksum(payload) == meta.get(_PAYLOAD_SUM)


def _verified(name: str, t: torch.Tensor, view: np.ndarray, entry: Any) -> torch.Tensor:
    """The stored tensor ``name`` (``view``: its bytes) after its checksum, in its saved dtype
    and shape."""
    need(isinstance(entry, dict), f"bad entry for tensor {name}")
    if "sha256" in entry:  # format version 1
        intact = hashlib.sha256(view).hexdigest() == entry["sha256"]
    else:
        intact = checksum(view) == entry["checksum"]
    if not intact:
        raise CheckpointError(f"load: checksum mismatch for tensor {name} ({entry.get('what')}): "
                              "the file is corrupted")
    if "dtype" in entry:  # stored as bytes (a dtype safetensors has no code for)
        need(t.dtype == torch.uint8 and t.dim() == 1, f"tensor {name} is not stored as bytes")
        dtype = getattr(torch, str(entry["dtype"]), None)
        need(isinstance(dtype, torch.dtype), f"unknown dtype of tensor {name}")
        t = t.view(dtype).reshape(entry["shape"])
    return t


def _decode_species(dec: TreeDecoder, rec: dict) -> dict[int, Schema]:
    """Rebuild one species: the base schema, then every event replayed; ``{version: schema}``."""
    base = rec["base"]
    sp = Species(dec.str(rec["name"]), uid=dec.str(rec["uid"]))
    version, next_pid = base["version"], base["next_pid"]
    need(_count(version) and _count(next_pid), "bad version or parameter counter")
    skeleton = dec.module(base["skeleton"])
    specs = tuple(dec.spec(s) for s in base["specs"])
    shared = {dec.str(k): dec.value(v) for k, v in base["shared"]}
    _check_schema(skeleton, specs, shared, version)
    schema = Schema(sp, version, skeleton, specs, shared, next_pid)
    sp._register(schema)
    chain = {version: schema}
    for raw in rec["events"]:
        event = dec.event(raw)
        new = event.apply(schema)
        sp._link(schema, event, new)
        schema = chain[new.version] = new
    if schema.version != rec["head"]:
        raise CheckpointError(f"load: species {rec['name']!r} should end at version "
                              f"{rec['head']}, its events end at {schema.version}")
    return chain


def _count(x: Any) -> bool:
    return type(x) is int and x >= 0


def _check_schema(skeleton: torch.nn.Module, specs: tuple, shared: dict, version: int) -> None:
    """The decoded skeleton, specs and shared tensors must describe the same tensors."""
    tensors = {**dict(skeleton.named_parameters(remove_duplicate=False)),
               **dict(skeleton.named_buffers(remove_duplicate=False))}
    paths = [p for s in specs for p in s.paths]
    if sorted(paths) != sorted(tensors) or len({s.key for s in specs}) != len(specs):
        raise CheckpointError(f"load: the specs of version {version} do not match its module "
                              f"skeleton ({sorted(set(paths) ^ set(tensors))[:5]})")
    for s in specs:
        for p in s.paths:
            t = tensors[p]
            if tuple(t.shape) != s.shape or t.dtype != s.dtype:
                raise CheckpointError(f"load: spec {p!r} says {s.shape} {s.dtype}, the skeleton "
                                      f"{tuple(t.shape)} {t.dtype}")
    need_shared = {s.key: s for s in specs if not s.leaf}
    if set(shared) != set(need_shared):
        raise CheckpointError(f"load: shared tensors {sorted(shared)} do not match the shared "
                              f"specs {sorted(need_shared)} of version {version}")
    for k, t in shared.items():
        s = need_shared[k]
        if not (isinstance(t, torch.Tensor) and tuple(t.shape) == s.shape and t.dtype == s.dtype
                and t.device == s.device):
            raise CheckpointError(f"load: shared tensor {k!r} does not match its spec")
