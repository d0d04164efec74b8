"""save / load: particles and their species' history in one safetensors file, no pickle.

File layout: every tensor (particle leaves, shared tensors, event snapshots) is a tensor of one
safetensors file; the safetensors metadata header carries

- ``format``: ``"nytorch_func"`` and ``nytorch_func.format_version``,
- ``nytorch_func.payload``: JSON with, per species, the schema of the oldest saved version
  (module skeleton, tensor specs, shared tensors) and every event from there to the head, the
  shape of what was saved (a particle, or lists/tuples/dicts of them) and, per tensor, its
  sha256 and what it is,
- ``nytorch_func.payload_sha256``: the sha256 of that JSON text.

Loading replays the events on the decoded base schema, so the loaded species has the very
version numbers, parameter ids and events of the saved one. The JSON is decoded by
:mod:`._codec`, which never imports a module named by the file and never calls a model class's
``__init__``. Writes go to a temporary file in the same directory, are fsynced, and replace the
target in one ``os.replace``: a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable
from typing import Any, BinaryIO

import safetensors
import safetensors.torch
import torch
from torch import nn

from ._codec import Decoder, Encoder, decoding
from ._errors import CheckpointError
from ._particle import Particle
from ._schema import Schema
from ._species import Species

__all__ = ["save", "load", "CheckpointError"]

FORMAT = "nytorch_func"
FORMAT_VERSION = "1"
_PAYLOAD = "nytorch_func.payload"
_PAYLOAD_SHA = "nytorch_func.payload_sha256"


def digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (row-major, as stored)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


# saving -----------------------------------------------------------------------------------------

def save(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (a particle, a population, or a list/tuple/dict of them) to ``path``.

    One safetensors file holds every tensor; the species' history (module skeleton, parameter
    specs and configs, and every event since the oldest saved version) is JSON in its metadata
    header, with a sha256 per tensor. No pickle is used, so :func:`load` of an untrusted file
    cannot run code. The write is atomic: the old file stays intact if saving fails.

    >>> import os, tempfile, torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(3, 2))
    >>> q = nf.add_param(p, "scale", torch.nn.Parameter(torch.ones(2)))
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
    >>> nf.save(path, {"old": p, "new": q})
    >>> back = nf.load(path)
    >>> back["old"].version, back["new"].version, back["old"].species is back["new"].species
    (0, 1, True)
    >>> torch.equal(nf.touch(back["old"])["scale"], q["scale"])
    True
    """
    target = _path(path, "save")
    enc = Encoder()
    species_index: dict[int, int] = {}
    oldest: dict[int, Schema] = {}
    order: list[Species] = []
    _visit(obj, "", species_index, oldest, order)
    species = [_encode_species(enc, sp, oldest[id(sp)], i) for i, sp in enumerate(order)]
    root = _encode_tree(enc, obj, "", species_index)
    table = enc.table
    entries = {name: {**entry, "sha256": digest(table.tensors[name])}
               for name, entry in table.entries.items()}
    payload = json.dumps({"species": species, "root": root, "tensors": entries},
                         allow_nan=False, separators=(",", ":"))
    metadata = {"format": FORMAT, "nytorch_func.format_version": FORMAT_VERSION,
                _PAYLOAD: payload,
                _PAYLOAD_SHA: hashlib.sha256(payload.encode()).hexdigest()}
    data = safetensors.torch.save(table.tensors, metadata=metadata)
    _atomic_write(target, data)


def _visit(x: Any, where: str, species_index: dict[int, int], oldest: dict[int, Schema],
           order: list[Species]) -> None:
    """Check what is saved and find, per species, the oldest saved version (no closures: a
    recursive closure would be a reference cycle holding schemas)."""
    if isinstance(x, Particle):
        sp = x._schema.species
        if id(sp) not in species_index:
            species_index[id(sp)] = len(order)
            order.append(sp)
            oldest[id(sp)] = x._schema
        elif x._schema.version < oldest[id(sp)].version:
            oldest[id(sp)] = x._schema
    elif isinstance(x, (list, tuple)):
        for i, y in enumerate(x):
            _visit(y, f"{where}[{i}]", species_index, oldest, order)
    elif isinstance(x, dict):
        for k, y in x.items():
            if not isinstance(k, str):
                raise CheckpointError(f"save: dict keys must be strings, got {k!r} at {where}")
            _visit(y, f"{where}[{k!r}]", species_index, oldest, order)
    else:
        raise CheckpointError(f"save: {where or 'the object'} is a {type(x).__name__}; save "
                              "takes a Particle or lists/tuples/dicts of Particles (for plain "
                              "PyTorch weights use nf.to_module(p).state_dict())")


def _encode_species(enc: Encoder, sp: Species, base: Schema, index: int) -> dict:
    where = f"species {sp.name!r}"
    events = []
    schema = base
    while schema._next is not None:
        event, schema = schema._next.event, schema._next.schema
        events.append(enc.event(event, f"{where} event v{schema.version - 1}->v{schema.version}"))
    name = sp.name.rpartition("#")[0] or sp.name
    return {
        "name": name, "uid": sp.uid, "head": schema.version,
        "base": {
            "version": base.version, "next_pid": base.next_pid,
            "skeleton": enc.module(base.skeleton, f"{where} v{base.version}"),
            "specs": [enc.spec(s, f"{where} spec {s.key}") for s in base.specs],
            "shared": [[k, enc.value(t, f"{where} v{base.version} shared {k!r}")]
                       for k, t in base.shared.items()],
        },
        "events": events,
    }


def _encode_tree(enc: Encoder, x: Any, where: str, species_index: dict[int, int]) -> Any:
    if isinstance(x, Particle):
        s = x._schema
        leaves = [enc.table.add(t, f"particle {where or '<root>'} leaf {k!r}")
                  for k, t in zip(s.leaf_keys, x._leaves)]
        return {"$t": "particle", "species": species_index[id(s.species)], "version": s.version,
                "training": x._training, "leaves": leaves}
    if isinstance(x, dict):
        return {"$t": "dict", "v": [[k, _encode_tree(enc, y, f"{where}[{k!r}]", species_index)]
                                    for k, y in x.items()]}
    tag = "tuple" if isinstance(x, tuple) else "list"
    return {"$t": tag, "v": [_encode_tree(enc, y, f"{where}[{i}]", species_index)
                             for i, y in enumerate(x)]}


def _path(path: Any, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"{what}: path must be a str or os.PathLike, got "
                              f"{type(path).__name__}")
    return os.fspath(path)


def _write_bytes(f: BinaryIO, data: bytes) -> None:
    """The one place bytes reach the disk (tests make it fail midway)."""
    f.write(data)


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file in the same dir and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# loading ----------------------------------------------------------------------------------------

def load(path: str | os.PathLike, *, classes: Iterable[Any] = ()) -> Any:
    """Read what :func:`save` wrote, in the same shape (a particle, list, tuple or dict).

    Particles saved together that share a species share one (new) species on load, with the
    same version numbers, parameter ids and events, so an old-version particle touched forward
    gets exactly what the original would have. Module classes are rebuilt without running their
    ``__init__``; a class is only accepted if it is a ``torch.nn`` module, already imported, or
    passed in ``classes`` (which may also hold module-level functions a model keeps as an
    attribute). A truncated, corrupted or tampered file raises :class:`CheckpointError`.

    >>> import os, tempfile, torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(2, 2), 4)
    >>> path = os.path.join(tempfile.mkdtemp(), "pop.safetensors")
    >>> nf.save(path, pop)
    >>> back = nf.load(path)
    >>> back.batch_shape, torch.equal(back["weight"], pop["weight"])
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
    allowed = _classes(classes)
    meta, tensors = _read(source)
    if meta.get("format") != FORMAT or _PAYLOAD not in meta:
        raise CheckpointError(f"load: {source!r} is a safetensors file but not a nytorch_func "
                              "checkpoint (no nytorch_func metadata); for plain weights use "
                              "safetensors.torch.load_file and module.load_state_dict")
    if meta.get("nytorch_func.format_version") != FORMAT_VERSION:
        raise CheckpointError(f"load: checkpoint format version "
                              f"{meta.get('nytorch_func.format_version')!r} is not supported "
                              f"(this nytorch_func reads version {FORMAT_VERSION})")
    payload = meta[_PAYLOAD]
    if hashlib.sha256(payload.encode()).hexdigest() != meta.get(_PAYLOAD_SHA):
        raise CheckpointError(f"load: the metadata of {source!r} does not match its checksum; "
                              "the file is corrupted or was edited")
    with decoding("load"):
        doc = json.loads(payload)
        entries = doc["tensors"]
        if not isinstance(entries, dict) or set(entries) != set(tensors):
            missing = sorted(set(entries) - set(tensors))
            extra = sorted(set(tensors) - set(entries))
            raise CheckpointError(f"load: the tensors in the file do not match its metadata "
                                  f"(missing {missing[:5]}, unexpected {extra[:5]})")
        for name, t in tensors.items():
            if digest(t) != entries[name]["sha256"]:
                raise CheckpointError(f"load: checksum mismatch for tensor {name} "
                                      f"({entries[name].get('what')}): the file is corrupted")
        dec = Decoder(tensors, entries, allowed)
        chains = [_decode_species(dec, rec) for rec in doc["species"]]
        return _decode_tree(dec, doc["root"], chains)


def _classes(classes: Iterable[Any]) -> tuple:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise CheckpointError(f"load: classes must be a list of nn.Module classes (or functions), "
                              f"got {classes!r:.60}")
    out = tuple(classes)
    for c in out:
        ok = isinstance(c, type) and issubclass(c, nn.Module)
        if not ok and not (callable(c) and not isinstance(c, type) and hasattr(c, "__qualname__")):
            raise CheckpointError(f"load: classes may hold nn.Module subclasses and module-level "
                                  f"functions, got {c!r:.60}")
    return out


def _read(source: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with open(source, "rb"):  # a missing/unreadable file raises the usual OSError
        pass
    try:
        with safetensors.safe_open(source, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several kinds for bad files
        raise CheckpointError(f"load: {source!r} is not a readable safetensors file (truncated "
                              f"or corrupted?): {type(err).__name__}: {err}") from err
    return meta, tensors


def _decode_species(dec: Decoder, rec: dict) -> dict[int, Schema]:
    """Rebuild one species: the base schema, then every event replayed; ``{version: schema}``."""
    base = rec["base"]
    species = Species(dec._str(rec["name"]), uid=dec._str(rec["uid"]))
    version, next_pid = base["version"], base["next_pid"]
    if not (_int(version) and _int(next_pid)):
        raise CheckpointError("load: bad version or parameter counter in the checkpoint")
    skeleton = dec.module(base["skeleton"])
    specs = tuple(dec.spec(s) for s in base["specs"])
    shared = {dec._str(k): dec.value(v) for k, v in base["shared"]}
    _check_schema(skeleton, specs, shared, version)
    schema = Schema(species, version, skeleton, specs, shared, next_pid)
    species._register(schema)
    chain = {version: schema}
    for raw in rec["events"]:
        event = dec.event(raw)
        new = event.apply(schema)
        species._link(schema, event, new)
        schema = chain[new.version] = new
    if schema.version != rec["head"]:
        raise CheckpointError(f"load: species {rec['name']!r} should end at version "
                              f"{rec['head']}, its events end at {schema.version}")
    return chain


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_schema(skeleton: nn.Module, specs: tuple, shared: dict, version: int) -> None:
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
    need = {s.key: s for s in specs if not s.leaf}
    if set(shared) != set(need):
        raise CheckpointError(f"load: shared tensors {sorted(shared)} do not match the shared "
                              f"specs {sorted(need)} of version {version}")
    for k, t in shared.items():
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != need[k].shape:
            raise CheckpointError(f"load: shared tensor {k!r} does not match its spec")


def _decode_tree(dec: Decoder, x: Any, chains: list[dict[int, Schema]]) -> Any:
    if not isinstance(x, dict):
        raise CheckpointError(f"load: unexpected entry {x!r:.60} in the saved structure")
    tag = x["$t"]
    if tag == "particle":
        chain = chains[x["species"]]
        schema = chain.get(x["version"])
        if schema is None:
            raise CheckpointError(f"load: a particle at version {x['version']!r} is outside the "
                                  f"saved history (versions {min(chain)}..{max(chain)})")
        training = x["training"]
        if training is not None and not isinstance(training, bool):
            raise CheckpointError("load: bad training flag")
        leaves = tuple(dec.tensor(name) for name in x["leaves"])
        _check_leaves(schema, leaves)
        return Particle._make(schema, leaves, training)
    if tag == "dict":
        return {dec._str(k): _decode_tree(dec, y, chains) for k, y in x["v"]}
    if tag in ("list", "tuple"):
        items = [_decode_tree(dec, y, chains) for y in x["v"]]
        return tuple(items) if tag == "tuple" else items
    raise CheckpointError(f"load: unknown entry {tag!r:.40} in the saved structure")


def _check_leaves(schema: Schema, leaves: tuple) -> None:
    if len(leaves) != len(schema.leaf_specs):
        raise CheckpointError(f"load: a particle of version {schema.version} needs "
                              f"{len(schema.leaf_specs)} tensors, the file gives {len(leaves)}")
    batch = None
    for spec, t in zip(schema.leaf_specs, leaves):
        n = t.dim() - len(spec.shape)
        if n < 0 or tuple(t.shape[n:]) != spec.shape or t.dtype != spec.dtype or (
                batch is not None and tuple(t.shape[:n]) != batch):
            raise CheckpointError(f"load: tensor for {spec.key!r} has shape {tuple(t.shape)} "
                                  f"{t.dtype}, the schema says {spec.shape} {spec.dtype}")
        batch = tuple(t.shape[:n])
