"""``nf.load(path, species=s)``: a checkpoint's particles join a live species.

The file's history (its oldest saved version and every event to its newest) must be a prefix of
``s``'s history, or equal to it: the same version numbers, the same schema at the file's oldest
version (module skeleton, specs, parameter ids, configs, shared tensors) and then the same
events (kinds, paths, configs, and snapshot values bit for bit, since a recipient touched later
receives them). The particles are then placed at ``s``'s versions, so they combine with ``s``'s
live particles and touch forward through ``s``'s later events. Otherwise the load is refused,
naming the first difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._codec import Encoder
from ._config import value_key
from ._errors import CheckpointError, VersionError
from ._schema import Schema
from ._species import Species

__all__ = ["join"]


def join(chain: Mapping[int, Schema], s: Species) -> dict[int, Schema]:
    """``s``'s schemas for the file's versions; CheckpointError naming the first difference."""
    base, head = min(chain), max(chain)
    if base >= len(s):
        raise _refuse(s, f"the species ends at version {len(s) - 1}, the checkpoint starts at "
                         f"version {base}")
    try:
        mine = s.version(base)
    except VersionError as err:
        live = s.live_versions()
        have = f"its oldest live version is {live[0].version}" if live else "no version is live"
        raise CheckpointError(
            f"load: the checkpoint's particles start at version {base}, which the species "
            f"{s.name!r} given as species= cannot provide ({err}; {have}). Keep a particle of "
            f"version {base} alive while loading, or load without species= and touch the "
            "particles") from None
    why = schema_difference(chain[base], mine)
    if why is not None:
        raise _refuse(s, f"version {base}: {why}")
    out = {base: mine}
    for version in range(base, head):
        theirs = chain[version]._next.event  # type: ignore[union-attr]
        link = mine._next
        if link is None:
            raise _refuse(s, f"the species ends at version {version}, the checkpoint goes on "
                             f"to version {head} (next: {theirs.describe()}); load the "
                             "checkpoint without species= (or into the species it came from)")
        why = difference(theirs, link.event, f"the event v{version}->v{version + 1}")
        if why is not None:
            raise _refuse(s, f"{why} (checkpoint: {theirs.describe()}; here: "
                             f"{link.event.describe()})")
        mine = out[version + 1] = link.schema
    return out


def _refuse(s: Species, why: str) -> CheckpointError:
    return CheckpointError(f"load: the checkpoint's history is not a prefix of the history of "
                           f"species {s.name!r} (species=); first difference: {why}")


def schema_difference(a: Schema, b: Schema) -> str | None:
    """The first difference between two schemas (the file's first), or None."""
    if a.next_pid != b.next_pid:
        return f"the next parameter id is {a.next_pid} in the checkpoint, {b.next_pid} here"
    keys_a, keys_b = [s.key for s in a.specs], [s.key for s in b.specs]
    if keys_a != keys_b:
        return f"the tensors are {keys_a} in the checkpoint, {keys_b} here"
    for x, y in zip(a.specs, b.specs):
        why = difference(x, y, f"spec {x.key!r}")
        if why is not None:
            return why
    return (difference(dict(a.shared), dict(b.shared), "shared tensors")
            or difference(a._skeleton, b._skeleton, "module skeleton"))


def difference(a: Any, b: Any, where: str) -> str | None:
    """The first difference between two decoded values (the checkpoint's first), or None.

    Tensors are compared by kind, shape, dtype, device, requires_grad and bits; modules by their
    encoded skeletons; records (specs, events) field by field; other values by ``==``, a NaN
    equal to a NaN (a checkpoint holds a copy of the NaN, never the same object).
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return _tensor_difference(a, b, where)
    if isinstance(a, nn.Module) or isinstance(b, nn.Module):
        if not (isinstance(a, nn.Module) and isinstance(b, nn.Module)):
            return f"{where}: {_kind(a)} in the checkpoint, {_kind(b)} here"
        return _json_difference(Encoder().module(a, where), Encoder().module(b, where), where)
    if type(a) is not type(b):
        return f"{where}: {_kind(a)} in the checkpoint, {_kind(b)} here"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            why = difference(getattr(a, f.name), getattr(b, f.name), f"{where} {f.name}")
            if why is not None:
                return why
        return None
    if isinstance(a, (tuple, list)):
        if all(type(x) in (int, str, bool, float) for x in (*a, *b)):
            if _same(tuple(a), tuple(b)):
                return None
            return f"{where}: {a!r:.80} in the checkpoint, {b!r:.80} here"
        if len(a) != len(b):
            return f"{where}: {len(a)} entries in the checkpoint, {len(b)} here"
        for i, (x, y) in enumerate(zip(a, b)):
            why = difference(x, y, f"{where}[{i}]")
            if why is not None:
                return why
        return None
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{where}: keys {sorted(map(str, a))} in the checkpoint, {sorted(map(str, b))} here"
        for k in a:
            why = difference(a[k], b[k], f"{where}[{k!r}]")
            if why is not None:
                return why
        return None
    return None if _same(a, b) else f"{where}: {a!r:.80} in the checkpoint, {b!r:.80} here"


def _same(a: Any, b: Any) -> bool:
    return a is b or bool(value_key(a) == value_key(b))


def _kind(x: Any) -> str:
    return type(x).__name__


def _tensor_difference(a: Any, b: Any, where: str) -> str | None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return f"{where}: {_kind(a)} in the checkpoint, {_kind(b)} here"
    for what, x, y in (("class", _kind(a), _kind(b)), ("shape", tuple(a.shape), tuple(b.shape)),
                       ("dtype", a.dtype, b.dtype), ("device", a.device, b.device),
                       ("requires_grad", a.requires_grad, b.requires_grad)):
        if x != y:
            hint = "; pass device= to load onto the species' device" if what == "device" else ""
            return f"{where}: {what} {x} in the checkpoint, {y} here{hint}"
    if a.device.type != "meta" and not _same_bits(a, b):
        return f"{where}: the values differ"
    return None


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bytes of the values (so NaN equals NaN and -0.0 differs from 0.0; a conjugate or
    negative view compares by its resolved values)."""
    x, y = (t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
            for t in (a, b))
    return torch.equal(x, y.to(x.device))


def _json_difference(a: Any, b: Any, where: str) -> str | None:
    if type(a) is not type(b):
        return f"{where}: {a!r:.80} in the checkpoint, {b!r:.80} here"
    if isinstance(a, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if k not in a or k not in b:
                return f"{where}: {k!r} only {'here' if k in b else 'in the checkpoint'}"
            why = _json_difference(a[k], b[k], f"{where}.{k}" if k not in ("v", "root") else where)
            if why is not None:
                return why
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} entries in the checkpoint, {len(b)} here"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _json_difference(x, y, f"{where}[{i}]")
            if why is not None:
                return why
        return None
    return None if a == b else f"{where}: {a!r:.80} in the checkpoint, {b!r:.80} here"
