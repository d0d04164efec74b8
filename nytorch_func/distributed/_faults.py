"""Starting, checking and ending a job: bounded timeouts instead of hangs."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from .._errors import NytorchFuncError
from ._errors import DistributedError
from ._wire import guarded, require_group

__all__ = ["init", "shutdown", "barrier", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 120.0  # seconds a collective may wait for its peers before it fails


def init(backend: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """Join (or start) the job's process group; returns ``(rank, world_size)``.

    Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) this is
    ``init_process_group(init_method="env://")`` with ``backend`` defaulting to NCCL when CUDA
    is available (each process then uses the GPU ``LOCAL_RANK``) and gloo otherwise. Without
    that environment it starts a world of one process (gloo over an in-memory store), so the
    same script runs with plain ``python``. ``timeout`` bounds every collective: a peer that
    died or hangs makes the others raise :class:`RankFailureError` after at most that long
    instead of waiting forever. Calling it again returns the existing group's place. Under
    ``torchrun --max-restarts`` every restart attempt rendezvous under its own key prefix, so
    a restarted rank never meets the addresses of the previous attempt's dead ranks.

    >>> import nytorch_func.distributed as nfd
    >>> nfd.init()
    (0, 1)
    """
    if not dist.is_available():
        raise DistributedError("init: this torch build has no torch.distributed")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise NytorchFuncError(f"init: timeout must be a positive number of seconds, got {timeout!r}")
    delta = datetime.timedelta(seconds=float(timeout))
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))
        try:
            if "TORCHELASTIC_RESTART_COUNT" in env:
                dist.init_process_group(backend, store=_attempt_store(env, delta),
                                        rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                                        timeout=delta)
            else:
                dist.init_process_group(backend, init_method="env://", timeout=delta)
        except (RuntimeError, ValueError, ConnectionError, TimeoutError) as err:
            raise DistributedError(
                f"init: could not join the process group at {env.get('MASTER_ADDR')}:"
                f"{env.get('MASTER_PORT')} as rank {env['RANK']} of {env['WORLD_SIZE']} "
                f"({type(err).__name__}: {err}); check that every node runs the same torchrun "
                "command and can reach the master address") from err
    else:
        dist.init_process_group(backend or "gloo", store=dist.HashStore(), rank=0, world_size=1,
                                timeout=delta)
    return dist.get_rank(), dist.get_world_size()


def _attempt_store(env: Any, timeout: datetime.timedelta) -> Any:
    """The rendezvous store of this torchrun attempt, its keys prefixed by the attempt number.

    ``torchrun`` keeps one TCP store for all restarts (its agent hosts it) and ``env://`` uses
    it without a per-attempt prefix, so a restarted rank may read the address a dead rank of
    the previous attempt published and wait for a peer that is gone (gloo: "connectFullMesh
    failed ... Connect timeout", 3 restarts in 10 here). A prefix per attempt keeps
    the attempts apart.
    """
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world,
                          is_master=not agent and rank == 0, timeout=timeout,
                          multi_tenant=not agent)
    return dist.PrefixStore(f"nytorch_func/attempt_{env['TORCHELASTIC_RESTART_COUNT']}", store)


def shutdown() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(timeout: float | None = None, *, group: Any = None) -> None:
    """Wait until every rank arrives; a rank that does not arrive in time fails the others.

    On gloo this is ``monitored_barrier(wait_all_ranks=True)``: rank 0 names every rank that
    did not arrive within ``timeout`` seconds (default: the process group's timeout) and the
    others fail when rank 0 does; on NCCL it is ``barrier()`` under the group's timeout.
    Either way the failure is a :class:`RankFailureError`.

    >>> import nytorch_func.distributed as nfd
    >>> _ = nfd.init()
    >>> nfd.barrier(timeout=5)
    """
    require_group("barrier")
    if dist.get_backend(group) == "gloo":
        kw = {} if timeout is None else {"timeout": datetime.timedelta(seconds=float(timeout))}
        guarded("barrier", "barrier", dist.monitored_barrier, [], group=group,
                wait_all_ranks=True, **kw)
    else:
        guarded("barrier", "barrier", dist.barrier, [], group=group)
