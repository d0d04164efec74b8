"""Per-rank checkpoints of a sharded population, so a restarted job resumes where it was.

Every rank writes its own files into one shared directory (``nf.save``: one safetensors file,
no pickle, written to a temporary file and renamed), then a small JSON manifest (also renamed
into place) that commits them::

    step-000000012.rank-00001-of-00004.safetensors   # this rank's block + extras + history
    step-000000012.rank-00001-of-00004.json          # step, layout, species uid: the commit

:meth:`ShardedPopulation.save` is collective: after every rank has written step ``s``, one
``all_reduce`` confirms it, and only then does each rank delete its other steps. So at any
moment each rank holds a complete step ``s`` (and maybe an unconfirmed ``s + 1``), whatever
process was killed when. :func:`load_sharded` (also collective) picks the newest step that every
rank has, loads this rank's file and checks that the ranks agree on layout, species identity
(rank 0's ``Species.uid``), version and structure. Restarted by ``torchrun --max-restarts``,
the job calls it first and goes on from the step it returns (``None``: no checkpoint yet).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .._errors import CheckpointError, frozen_dataclass
from .._errors import NytorchFuncError
from .._io import _atomic_write, load, save
from .._particle import Particle
from ._errors import DistributedError, StructureSkewError, VersionSkewError
from ._wire import agree, ctrl_device, guarded, require_group, uid_from, uid_payload

if TYPE_CHECKING:
    from ._sharded import ShardedPopulation

__all__ = ["ShardedCheckpoint", "ShardedCheckpointError", "save_sharded", "load_sharded",
           "checkpoint_files"]

FORMAT = "nytorch_func.distributed.shard/1"
_NAME = re.compile(r"^step-(\d{9})\.rank-(\d{5})-of-(\d{5})\.(safetensors|json)$")
_LOAD = "load_sharded"
_TMP = re.compile(r"^\.step-\d{9}\.rank-(\d{5})-of-(\d{5})\.(safetensors|json)\..*\.tmp$")


class ShardedCheckpointError(DistributedError, CheckpointError):
    """The per-rank checkpoints could not be written or do not fit together.

    Raised on every rank together (the ranks agree on the outcome in one collective), naming
    the ranks that failed and this rank's own reason.
    """


@frozen_dataclass("what load_sharded found is a record: copy what you need out of it", eq=False)
class ShardedCheckpoint:
    """What :func:`load_sharded` found: the population block, its step, the extras saved with it,
    and the replicated species' identity (rank 0's ``Species.uid`` when it was saved)."""

    pop: "ShardedPopulation"
    step: int
    extras: dict[str, Any]
    uid: str


def checkpoint_files(directory: str | os.PathLike, step: int, rank: int,
                     world: int) -> tuple[str, str]:
    """The paths ``(data, manifest)`` of rank ``rank``'s checkpoint of ``step``.

    >>> from nytorch_func.distributed import checkpoint_files
    >>> [p.split("/")[-1] for p in checkpoint_files("ckpt", 12, 1, 4)]
    ['step-000000012.rank-00001-of-00004.safetensors', 'step-000000012.rank-00001-of-00004.json']
    """
    stem = os.path.join(os.fspath(directory), f"step-{step:09d}.rank-{rank:05d}-of-{world:05d}")
    return f"{stem}.safetensors", f"{stem}.json"


def save_sharded(sp: "ShardedPopulation", directory: str | os.PathLike, step: int, *,
                 extras: Mapping[str, Any] | None = None) -> str:
    """Collective: every rank writes its checkpoint of ``step``; returns this rank's data file.

    See :meth:`ShardedPopulation.save`.
    """
    what = "ShardedPopulation.save"
    require_group(what)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise NytorchFuncError(f"{what}: step must be a non-negative int, got {step!r}")
    if not isinstance(directory, (str, os.PathLike)):
        raise NytorchFuncError(f"{what}: directory must be a str or os.PathLike, got "
                               f"{type(directory).__name__}")
    extras = {} if extras is None else extras
    if not isinstance(extras, Mapping) or not all(isinstance(k, str) for k in extras):
        raise NytorchFuncError(f"{what}: extras must be a dict with string keys (values: "
                               "particles, or lists/tuples/dicts of them)")
    group = sp.group
    rank, world = sp.rank, sp.world
    local = sp.local
    root = dist.get_rank(group) == 0
    # one all_reduce: version and structure, the same step/total everywhere, rank 0's uid
    check = torch.tensor([step, -step, sp.total, -sp.total], dtype=torch.float64)
    got = agree(local._schema, what, group,
                torch.cat([check, uid_payload(local._schema.species.uid, root)]))
    if got[0] != -got[1] or got[2] != -got[3]:
        raise ShardedCheckpointError(
            f"{what}: the ranks save different steps ({int(-got[1])}..{int(got[0])}) or "
            "populations; call save with the same step on every rank")
    uid = uid_from(got[4:], what)
    data, manifest = checkpoint_files(directory, step, rank, world)
    problem = ""
    try:
        os.makedirs(os.fspath(directory), exist_ok=True)
        save(data, {"local": local, "extras": dict(extras)})
        doc = {"format": FORMAT, "step": step, "rank": rank, "world": world, "total": sp.total,
               "uid": uid, "version": local.version, "file": os.path.basename(data)}
        _atomic_write(manifest, json.dumps(doc, indent=1).encode())
    except Exception as err:  # noqa: BLE001 - told to every rank below, so none waits alone
        problem = f"rank {rank}: {type(err).__name__}: {err}"
    _all_ok(what, problem, group, "nothing was committed; the previous step is intact")
    _prune(os.fspath(directory), step, rank, world)
    return data


def load_sharded(directory: str | os.PathLike, *, classes: Iterable[Any] = (),
                 group: Any = None) -> ShardedCheckpoint | None:
    """Collective: this rank's part of the newest step every rank saved, or ``None`` if no rank
    has a checkpoint in ``directory`` (a fresh start).

    The job must have as many ranks as the one that saved (each rank reads its own file).
    ``classes``: module classes the checkpoint may name (as ``nf.load``). Every rank raises
    :class:`ShardedCheckpointError` together when some rank lacks the step, a file is damaged,
    or the ranks' files disagree (layout, species uid, version, structure).

    >>> import tempfile, torch, nytorch_func as nf, nytorch_func.distributed as nfd
    >>> _ = nfd.init()
    >>> folder = tempfile.mkdtemp()
    >>> nfd.load_sharded(folder) is None                    # nothing saved yet
    True
    >>> sp = nfd.shard(nf.population(torch.nn.Linear(2, 2), 4))
    >>> _ = sp.save(folder, step=3, extras={"best": sp.local[0]})
    >>> ck = nfd.load_sharded(folder)
    >>> ck.step, ck.pop.count, torch.equal(ck.pop.local["weight"], sp.local["weight"])
    (3, 4, True)
    """
    what = "load_sharded"
    require_group(what)
    if not isinstance(directory, (str, os.PathLike)):
        raise NytorchFuncError(f"{what}: directory must be a str or os.PathLike, got "
                               f"{type(directory).__name__}")
    directory = os.fspath(directory)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    steps, worlds = _scan(directory, rank, world)
    newest = max(steps, default=-1)
    # one all_reduce(MAX): the newest step of every rank (as max and -min), and whether some
    # rank sees checkpoints of another world size
    t = torch.tensor([newest, -newest, 1.0 if worlds else 0.0], dtype=torch.float64)
    _reduce(what, t, group)
    hi, lo = int(t[0]), -int(t[1])
    if hi < 0:
        if t[2] > 0:
            raise ShardedCheckpointError(
                f"{what}: {directory!r} holds checkpoints of a job of "
                f"{sorted(worlds) or 'another number of'} ranks, this job has {world}; restart "
                "with the same number of ranks (resharding a checkpoint is not supported: load "
                "it in a job of the old size, gather, reshard)")
        return None
    if lo < 0:
        t = torch.zeros(world, dtype=torch.float64)
        t[rank] = 1.0 if newest < 0 else 0.0
        _reduce(what, t, group)
        raise ShardedCheckpointError(
            f"{what}: ranks {[r for r in range(world) if t[r] > 0]} have no checkpoint in "
            f"{directory!r}, the others do (up to step {hi}); every rank needs its own files: "
            "restore them, or remove the directory to start afresh")
    problem, result, cause = "", None, None
    try:
        result = _load_step(directory, lo, rank, world, classes, group)
    except Exception as err:  # noqa: BLE001 - told to every rank below, so none waits alone
        problem = (f"{what}: rank {rank} could not load step {lo} from {directory!r} "
                   f"({type(err).__name__}: {err})")
        cause = err
    # one all_reduce: every rank loaded, and they agree on the uid and the population size
    uid = result.uid if result is not None else ""
    total = result.pop.total if result is not None else 0
    crc = float(zlib.crc32(uid.encode()))
    fails = torch.zeros(world + 4, dtype=torch.float64)
    fails[rank] = 1.0 if problem else 0.0
    if result is not None:
        fails[world:] = torch.tensor([crc, -crc, total, -total], dtype=torch.float64)
    else:
        fails[world:] = -torch.inf
    _reduce(what, fails, group)
    bad = [r for r in range(world) if fails[r] > 0]
    if bad:
        raise ShardedCheckpointError(
            problem or f"{what}: ranks {bad} could not load step {lo} from {directory!r} (their "
            "own errors say why); every rank stops. Restore the missing files or remove the "
            "directory to start afresh") from cause
    if fails[world] != -fails[world + 1] or fails[world + 2] != -fails[world + 3]:
        raise ShardedCheckpointError(
            f"{what}: the ranks' checkpoints of step {lo} in {directory!r} belong to different "
            "jobs or populations (species uid or population size differ)")
    try:  # the same version and structure everywhere
        agree(result.pop.local._schema, what, group)
    except (VersionSkewError, StructureSkewError) as err:
        raise ShardedCheckpointError(f"{what}: the ranks' checkpoints of step {lo} do not fit "
                                     f"together: {err}") from err
    return result


def _load_step(directory: str, step: int, rank: int, world: int, classes: Iterable[Any],
               group: Any) -> ShardedCheckpoint:
    from ._sharded import ShardedPopulation

    data, manifest = checkpoint_files(directory, step, rank, world)
    with open(manifest, "rb") as f:
        doc = json.loads(f.read())
    expect = {"format": FORMAT, "step": step, "rank": rank, "world": world,
              "file": os.path.basename(data)}
    wrong = {k: doc.get(k) for k, v in expect.items() if doc.get(k) != v}
    if wrong or not isinstance(doc.get("uid"), str) or not isinstance(doc.get("total"), int):
        raise CheckpointError(f"{_LOAD}: the manifest {manifest!r} does not describe step "
                              f"{step} of rank {rank} of {world} ({wrong or 'uid/total'})")
    obj = load(data, classes=classes)
    if not (isinstance(obj, dict) and set(obj) == {"local", "extras"}
            and isinstance(obj["local"], Particle) and isinstance(obj["extras"], dict)):
        raise CheckpointError(f"{_LOAD}: {data!r} is a checkpoint, but not one written by "
                              "ShardedPopulation.save")
    local = obj["local"]
    if local.version != doc.get("version"):
        raise CheckpointError(f"{_LOAD}: {data!r} holds version {local.version}, its "
                              f"manifest says {doc.get('version')}")
    pop = ShardedPopulation(local, doc["total"], rank, world, group)
    return ShardedCheckpoint(pop, step, obj["extras"], doc["uid"])


def _scan(directory: str, rank: int, world: int) -> tuple[set[int], set[int]]:
    """Steps with a manifest for this rank and world; the world sizes of other files."""
    steps: set[int] = set()
    worlds: set[int] = set()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return steps, worlds
    for name in names:
        m = _NAME.match(name)
        if m is None:
            continue
        if int(m.group(3)) != world:
            worlds.add(int(m.group(3)))
        elif int(m.group(2)) == rank and m.group(4) == "json":
            steps.add(int(m.group(1)))
    return steps, worlds


def _prune(directory: str, keep: int, rank: int, world: int) -> None:
    """Remove this rank's files of every other step, and temporary files a crash left."""
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m is not None:
            mine = int(m.group(2)) == rank and int(m.group(3)) == world
            if not mine or int(m.group(1)) == keep:
                continue
        else:
            m = _TMP.match(name)
            if m is None or int(m.group(1)) != rank or int(m.group(2)) != world:
                continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))


def _reduce(what: str, t: torch.Tensor, group: Any) -> None:
    """In-place ``all_reduce(MAX)`` of a small float64 tensor (moved to the control device)."""
    dev = ctrl_device(group)
    buf = t.to(dev)
    guarded(what, "all_reduce", dist.all_reduce, [buf], buf, op=dist.ReduceOp.MAX, group=group)
    t.copy_(buf.cpu())


def _all_ok(what: str, problem: str, group: Any, consequence: str) -> None:
    """Every rank learns whether any rank failed; all raise together if one did."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    t = torch.zeros(world, dtype=torch.float64)
    t[rank] = 1.0 if problem else 0.0
    _reduce(what, t, group)
    bad = [r for r in range(world) if t[r] > 0]
    if bad:
        reason = problem or "their own errors say why"
        raise ShardedCheckpointError(f"{what}: ranks {bad} failed ({reason}); {consequence}")
