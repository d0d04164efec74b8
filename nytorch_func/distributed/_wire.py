"""The wire: guarded torch.distributed collectives, per-dtype flat buffers, version agreement.

Everything the distributed layer sends goes through here, so three rules hold everywhere:

* a peer that dies or times out surfaces as :class:`RankFailureError` (never a bare hang or a
  backend-specific exception);
* before a collective on particles, the ranks agree on the version and the structure of what
  they hold (one ``all_reduce(MAX)`` of ``[v, -v, fingerprint, -fingerprint]``), and all raise
  the same typed error together if they disagree;
* leaves travel as one flat buffer per dtype (``torch.cat``), so a collective over a particle
  is one collective per dtype, not one per tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .._errors import NytorchFuncError
from ._errors import DistributedError, RankFailureError, StructureSkewError, VersionSkewError

if TYPE_CHECKING:
    from .._schema import Schema

__all__ = ["Traffic", "count_bytes", "guarded", "agree", "reduce_ctrl", "check_ctrl", "fingerprint", "pack", "unpack", "Layout",
           "uid_payload", "uid_from", "UID_BYTES",
           "world_of", "rank_of", "ctrl_device", "require_group"]


# traffic accounting -----------------------------------------------------------------------------

@dataclasses.dataclass
class Traffic:
    """What this rank handed to collectives inside a :func:`count_bytes` block.

    ``bytes`` counts the payload of every collective issued by ``nytorch_func.distributed`` as the
    size of the tensors this rank passes in (for ``all_gather``: the gathered output). On the
    wire a ring ``all_reduce`` moves about ``2 (world - 1) / world`` times its payload per rank.
    ``by_kind`` splits the figures by collective, ``calls`` counts them.
    """

    bytes: int = 0
    calls: int = 0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes += nbytes
        self.calls += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes


_meters: list[Traffic] = []


@contextlib.contextmanager
def count_bytes() -> Iterator[Traffic]:
    """Count the bytes this rank hands to collectives inside the block.

    >>> import nytorch_func.distributed as nfd
    >>> with nfd.count_bytes() as traffic:
    ...     pass
    >>> traffic.bytes, traffic.calls
    (0, 0)
    """
    meter = Traffic()
    _meters.append(meter)
    try:
        yield meter
    finally:
        _meters.remove(meter)


def _record(kind: str, tensors: Sequence[torch.Tensor]) -> None:
    if _meters:
        n = sum(t.numel() * t.element_size() for t in tensors)
        for m in _meters:
            m.add(kind, n)


# process group ------------------------------------------------------------------------------------

def require_group(what: str) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise DistributedError(
            f"{what}: torch.distributed is not initialised; call nfd.init() first (it reads the "
            "torchrun environment, or starts a world of one process when there is none)")


def world_of(group: Any = None) -> int:
    return dist.get_world_size(group)


def rank_of(group: Any = None) -> int:
    return dist.get_rank(group)


def ctrl_device(group: Any = None) -> torch.device:
    """Where small control tensors live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_FAILURES: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(dist, "DistError", None), RuntimeError, ConnectionError, TimeoutError)
    if c is not None)


def guarded(what: str, kind: str, fn: Any, tensors: Sequence[torch.Tensor], *args: Any,
            **kwargs: Any) -> Any:
    """Run the collective ``fn(*args, **kwargs)``; a peer failure becomes RankFailureError."""
    _record(kind, tensors)
    try:
        return fn(*args, **kwargs)
    except NytorchFuncError:
        raise
    except _FAILURES as err:
        raise RankFailureError(
            f"{what}: the {kind} collective failed on rank {dist.get_rank()}: a peer rank died or "
            f"did not answer within the process group's timeout ({type(err).__name__}: "
            f"{_first_line(err)}). Restart the job (torchrun --max-restarts) and "
            "resume from its per-rank checkpoints.") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


# version and structure agreement ------------------------------------------------------------------

_fingerprints: "weakref.WeakKeyDictionary[Schema, int]" = weakref.WeakKeyDictionary()


def fingerprint(schema: "Schema") -> int:
    """A 31-bit digest of what a collective depends on: leaf paths, shapes, dtypes, configs."""
    fp = _fingerprints.get(schema)
    if fp is None:
        items = [(s.key, s.kind, s.paths, s.shape, str(s.dtype), s.leaf, s.pid,
                  None if s.config is None else sorted(s.config.asdict().items(), key=str),
                  s.state, s.persistent, s.policy) for s in schema.specs]
        fp = zlib.crc32(repr(items).encode()) & 0x7FFFFFFF
        _fingerprints[schema] = fp
    return fp


def reduce_ctrl(schema: "Schema", what: str, group: Any = None,
                payload: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor]:
    """One ``all_reduce(MAX)`` of ``[v, -v, fp, -fp, *payload]`` (float64; versions and 31-bit
    fingerprints are exact there). Returns ``([max v, min v, max fp, min fp], payload_max)``."""
    fp = fingerprint(schema)
    dev = ctrl_device(group)
    head = torch.tensor([schema.version, -schema.version, fp, -fp], dtype=torch.float64, device=dev)
    t = head if payload is None else torch.cat([head, payload.to(dev, torch.float64)])
    guarded(what, "all_reduce", dist.all_reduce, [t], t, op=dist.ReduceOp.MAX, group=group)
    t = t.cpu()
    hi_v, lo_v, hi_f, lo_f = (int(x) for x in t[:4].tolist())
    return [hi_v, -lo_v, hi_f, -lo_f], t[4:]


def check_ctrl(schema: "Schema", what: str, ctrl: list[int]) -> None:
    """Raise the same typed error on every rank when versions or structures differ."""
    hi_v, lo_v, hi_f, lo_f = ctrl
    if hi_v != lo_v:
        raise VersionSkewError(
            f"{what}: the ranks hold versions {lo_v}..{hi_v} of the species (rank "
            f"{dist.get_rank()} holds version {schema.version}); every rank must be at the same "
            "version: make events on one rank, call sync on every rank (nfd.Replica), then "
            "nf.touch")
    if hi_f != lo_f:
        raise StructureSkewError(
            f"{what}: the ranks hold particles of different structure at version "
            f"{schema.version} (paths, shapes, dtypes or configs differ); build the species the "
            "same way on every rank and change it only through events replicated with nfd.Replica")


def agree(schema: "Schema", what: str, group: Any = None,
          payload: torch.Tensor | None = None) -> torch.Tensor | None:
    """All ranks check they hold one version and one structure, in one ``all_reduce(MAX)``.

    ``payload`` (1-D) rides along in the same collective, MAX-reduced, and its reduced value is
    returned. Every rank sees the same result, so every rank raises the same error and no rank
    is left waiting in a later collective.
    """
    ctrl, rest = reduce_ctrl(schema, what, group, payload)
    check_ctrl(schema, what, ctrl)
    return None if payload is None else rest


# species identity -------------------------------------------------------------------------------

UID_BYTES = 64  # the longest species uid the ranks can share (a uuid4 hex is 32)


def uid_payload(uid: str, root: bool) -> torch.Tensor:
    """MAX-payload handing the root rank's ``uid`` to every rank: its length and bytes, in slots
    the other ranks leave at ``-inf``. Decode the reduced payload with :func:`uid_from`."""
    t = torch.full((1 + UID_BYTES,), -torch.inf, dtype=torch.float64)
    if root:
        raw = uid.encode()
        t[0] = len(raw)
        if raw:
            t[1: 1 + min(len(raw), UID_BYTES)] = torch.tensor(list(raw[:UID_BYTES]),
                                                              dtype=torch.float64)
    return t


def uid_from(reduced: torch.Tensor, what: str) -> str:
    """The root's uid from a reduced :func:`uid_payload` (every rank raises alike if too long)."""
    n = int(reduced[0])
    if n > UID_BYTES:
        raise DistributedError(f"{what}: rank 0's species uid is {n} bytes long; at most "
                               f"{UID_BYTES} can be shared")
    return bytes(int(b) for b in reduced[1: 1 + n].tolist()).decode()


# flat buffers -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """How :func:`pack` laid tensors out: per buffer, its dtype and its members."""

    dtypes: tuple[torch.dtype, ...]  # the original dtype of each buffer
    members: tuple[tuple[int, ...], ...]  # indices of the input tensors in each buffer
    shapes: tuple[torch.Size, ...]  # the trailing shape of every input tensor (input order)


def pack(tensors: Sequence[torch.Tensor], lead: Sequence[int] = ()) -> tuple[list[torch.Tensor], Layout]:
    """One contiguous buffer per dtype of shape ``(*lead, total)``, in first-seen dtype order.

    Every tensor must have the leading shape ``lead``. ``bool`` travels as ``uint8``.

    >>> import torch
    >>> from nytorch_func.distributed._wire import pack, unpack
    >>> ts = [torch.ones(2, 3), torch.arange(2), torch.zeros(2, 1)]
    >>> bufs, layout = pack(ts, lead=(2,))
    >>> [tuple(b.shape) for b in bufs]
    [(2, 4), (2, 1)]
    >>> all(torch.equal(a, b) for a, b in zip(unpack(bufs, layout, lead=(2,)), ts))
    True
    """
    lead = tuple(lead)
    order: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        order.setdefault(t.dtype, []).append(i)
    bufs = []
    for dtype, idx in order.items():
        parts = [tensors[i].detach().reshape(*lead, -1) for i in idx]
        if dtype == torch.bool:
            parts = [p.to(torch.uint8) for p in parts]
        bufs.append(torch.cat(parts, dim=len(lead)) if len(parts) > 1
                    else parts[0].contiguous())
    shapes = tuple(t.shape[len(lead):] for t in tensors)
    return bufs, Layout(tuple(order), tuple(tuple(v) for v in order.values()), shapes)


def unpack(bufs: Sequence[torch.Tensor], layout: Layout, lead: Sequence[int] = ()) -> list[torch.Tensor]:
    """The tensors :func:`pack` flattened, as views into ``bufs`` (same order as packed)."""
    lead = tuple(lead)
    out: list[Any] = [None] * len(layout.shapes)
    for buf, dtype, idx in zip(bufs, layout.dtypes, layout.members):
        sizes = [_numel(layout.shapes[i]) for i in idx]
        for i, piece in zip(idx, torch.split(buf, sizes, dim=len(lead))):
            piece = piece.reshape((*lead, *layout.shapes[i]))
            out[i] = piece.to(torch.bool) if dtype == torch.bool else piece
    return out


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
