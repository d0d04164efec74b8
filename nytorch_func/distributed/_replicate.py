"""Replicated version history: every rank's species chain holds the same versions and events.

A :class:`Replica` marks the last version all ranks agreed on (its *anchor*). Events are made
with the ordinary event functions on one rank; :meth:`Replica.sync`, called by every rank, sends
that rank's new events (the general codec's JSON + tensor bytes in one ``uint8`` tensor, its
length announced first) and every other rank appends them to its own chain, in order, with
recipient semantics. Then every rank holds the same versions, the same snapshots and the same
parameter ids. Every event kind travels, ``add_module`` included.

Species identity: ``Species.uid`` is random per process, so the replicated species is named by
rank 0's uid. The constructor broadcasts it (in the same collective that checks versions) and
the replica records it as :attr:`Replica.uid`; every sync checks that all ranks' replicas carry
the same uid, and every event message names it. Each rank's own species keeps its own uid
(nothing of the core is changed); ``nf.save``/``nf.load`` keep rank 0's, so a job resumed from
per-rank checkpoints has the same replicated identity as before.
"""

from __future__ import annotations

from typing import Any

import zlib
from collections.abc import Iterable

import torch
import torch.distributed as dist

from .._edit import commit
from .._errors import NytorchFuncError
from .._particle import Particle
from .._schema import Schema
from .._migrate import events_between
from .._touch import touch
from ._errors import DistributedError, EventConflictError
from ._eventwire import decode_events, encode_events
from ._wire import (agree, check_ctrl, ctrl_device, guarded, reduce_ctrl, require_group,
                    uid_from, uid_payload)

__all__ = ["Replica"]


class Replica:
    """Keeps one species' chain identical on every rank of ``group``.

    Create it on every rank from a particle built the same way there (same constructor, same
    seed): the constructor checks, collectively, that all ranks hold the same version and
    structure. It holds the anchor (the last agreed version) strongly, so the events made since
    then stay in memory until the next :meth:`sync` sends them; sync often.

    >>> import torch, nytorch_func as nf, nytorch_func.distributed as nfd
    >>> _ = nfd.init()
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> rep = nfd.Replica(p)
    >>> p = nf.add_param(p, "scale", torch.ones(1))     # on one rank (here: the only one)
    >>> p = rep.sync(p)                                  # on every rank
    >>> rep.version, p.version, sorted(p.params)
    (1, 1, ['bias', 'scale', 'weight'])
    """

    __slots__ = ("_anchor", "group", "uid", "classes", "__weakref__")

    def __init__(self, p: Particle, *, group: Any = None, classes: Iterable[Any] = ()) -> None:
        require_group("Replica")
        if not isinstance(p, Particle):
            raise NytorchFuncError(f"Replica: expected a Particle, got {type(p).__name__}")
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
            raise NytorchFuncError(f"Replica: classes must be a list of nn.Module classes, got "
                                   f"{classes!r:.60}")
        p = touch(p)
        # rank 0's uid rides along in the version check
        root = dist.get_rank(group) == 0
        got = agree(p._schema, "Replica", group, uid_payload(p._schema.species.uid, root))
        self._anchor: Schema = p._schema
        self.group = group
        #: the replicated species' identity: rank 0's ``Species.uid``, the same on every rank
        self.uid: str = uid_from(got, "Replica")
        #: module classes the received events may name (see ``nf.load``'s ``classes``)
        self.classes: tuple = tuple(classes)

    @property
    def anchor(self) -> Schema:
        """The last version every rank agreed on."""
        return self._anchor

    @property
    def version(self) -> int:
        return self._anchor.version

    def __repr__(self) -> str:
        return (f"Replica(species={self._anchor.species.name!r}, uid={self.uid!r}, "
                f"version={self.version})")

    def sync(self, p: Particle) -> Particle:
        """Replicate the events made on one rank since the last sync; ``p`` at the new head.

        Collective. At most one rank may have made events since the last sync (else every
        rank raises :class:`EventConflictError`); its events are appended, in order, to every
        other rank's chain, and ``p`` (of this species) comes back touched to the new head.
        Costs one ``all_reduce`` when nothing changed, else two ``all_reduce`` and one
        ``broadcast``. Every kind of event travels (``add_module`` too: the module's class must
        be a ``torch.nn`` class, imported on the receiving ranks, or given in ``classes``).
        """
        what = "Replica.sync"
        if not isinstance(p, Particle):
            raise NytorchFuncError(f"{what}: expected a Particle, got {type(p).__name__}")
        anchor = self._anchor
        if p._schema.species is not anchor.species:
            raise NytorchFuncError(f"{what}: the particle is of species {p.species.name!r}, the "
                                   f"replica of {anchor.species.name!r}")
        p = touch(p)
        group = self.group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        head = p._schema
        blob, problem = b"", ""
        if head.version > anchor.version:
            try:
                blob = encode_events(events_between(anchor, head), uid=self.uid)
            except NytorchFuncError as err:  # told to every rank below, not raised alone
                problem = str(err)
        # One all_reduce(MAX): anchor version and structure, the replica's uid, plus every
        # rank's head version and message length (-1: could not encode) in its own slot.
        crc = float(zlib.crc32(self.uid.encode()))
        slots = torch.full((2 * world + 2,), -torch.inf, dtype=torch.float64)
        slots[rank] = head.version
        slots[world + rank] = -1 if problem else len(blob)
        slots[2 * world:] = torch.tensor([crc, -crc], dtype=torch.float64)
        reduced = agree(anchor, what, group, slots)
        if float(reduced[2 * world]) != -float(reduced[2 * world + 1]):
            raise DistributedError(
                f"{what}: the ranks' replicas name different species (this rank's: {self.uid!r});"
                " create the Replicas of a job in the same order on every rank")
        heads = [int(v) for v in reduced[:world]]
        lengths = [int(v) for v in reduced[world: 2 * world]]
        ahead = [r for r, v in enumerate(heads) if v > anchor.version]
        if len(ahead) > 1:
            raise EventConflictError(
                f"{what}: ranks {ahead} all made events since version {anchor.version} (their "
                f"heads: {[heads[r] for r in ahead]}); a chain cannot hold both. Make events on "
                "one rank at a time and call sync on every rank in between")
        if not ahead:
            self._anchor = head
            return p
        src = ahead[0]
        if lengths[src] < 0:
            raise DistributedError(problem or f"{what}: rank {src} could not encode its events "
                                   "(its own error says why); nothing was replicated")
        dev = ctrl_device(group)
        buf = (torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(dev) if rank == src
               else torch.empty(lengths[src], dtype=torch.uint8, device=dev))
        src_global = src if group is None else dist.get_global_rank(group, src)
        guarded(what, "broadcast", dist.broadcast, [buf], buf, src=src_global, group=group)
        problem = ""
        if rank != src:
            try:
                events = decode_events(buf.cpu().numpy().tobytes(), classes=self.classes,
                                       uid=self.uid)
                _dry_run(head, events)
            except NytorchFuncError as err:
                problem = str(err)
            else:
                p = _append(p, events, what)
        # Every rank must now hold the same head; a rank that could not append says so in the
        # same all_reduce, so all of them raise together rather than one hanging.
        failed = torch.zeros(world, dtype=torch.float64)
        failed[rank] = 1.0 if problem else 0.0
        ctrl, failed = reduce_ctrl(p._schema, what, group, failed)
        if problem or bool(failed.any()):
            bad = [r for r in range(world) if failed[r] > 0]
            raise DistributedError(problem or f"{what}: ranks {bad} could not append the events "
                                   f"of rank {src} (their own errors say why); the chains differ "
                                   "now: restart from the last checkpoint")
        check_ctrl(p._schema, what, ctrl)
        self._anchor = p._schema
        return p


def _dry_run(head: Schema, events: list) -> None:
    """Apply ``events`` to unlinked schemas: every one must fit before any is appended."""
    s = head
    for event in events:
        s = event.apply(s)


def _append(p: Particle, events: list, what: str) -> Particle:
    """Append ``events`` (received) to ``p``'s chain, recipient side; ``p`` at the new head."""
    for event in events:
        p = commit(p, lambda q, e=event: (e, {}), what)
    return p


