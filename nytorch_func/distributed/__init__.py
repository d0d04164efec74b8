"""Scale-out on ``torch.distributed``: sharded populations and a replicated version history.

Launch with ``torchrun`` (gloo on CPUs, NCCL on GPUs); everything here is built from
``torch.distributed`` collectives over flat tensor buffers, never pickle.

* :func:`init` joins the job's process group with a bounded timeout (or starts a world of
  one process when there is no ``torchrun`` environment), :func:`barrier` fails fast when a
  rank does not arrive, :func:`shutdown` leaves.
* :func:`shard` / :class:`ShardedPopulation`: each rank holds a block of one population;
  ``gather``, ``best``, ``sum``, ``mean`` are the collectives a distributed PSO, ES or model
  soup needs; :func:`all_mean` averages one particle per rank, :func:`broadcast` copies one.
* :class:`Replica`: events made on one rank (every kind, ``add_module`` included) are appended,
  in the same order, to every rank's species chain (same versions, snapshots and parameter
  ids); the replicated species is named by rank 0's ``Species.uid`` (:attr:`Replica.uid`).
* :meth:`ShardedPopulation.save` / :func:`load_sharded`: per-rank checkpoints (``nf.save``
  files, written atomically, committed together), so a job restarted by ``torchrun
  --max-restarts`` resumes from the newest step every rank finished.
* Typed errors: :class:`VersionSkewError` when ranks hold different versions,
  :class:`StructureSkewError`, :class:`EventConflictError`, :class:`RankFailureError` when a
  peer dies or times out, and :class:`ShardedCheckpointError`.

>>> import torch, nytorch_func as nf, nytorch_func.distributed as nfd
>>> rank, world = nfd.init()
>>> pop = nf.population(torch.nn.Linear(4, 2), 8, generator=torch.Generator().manual_seed(0))
>>> sp = nfd.shard(pop)                       # this rank's block of the population
>>> centre = sp.mean()                        # the same particle on every rank
>>> torch.allclose(centre["weight"], pop["weight"].mean(0))
True
"""

from ._checkpoint import (ShardedCheckpoint, ShardedCheckpointError, checkpoint_files,
                          load_sharded, save_sharded)
from ._errors import (DistributedError, EventConflictError, RankFailureError,
                      StructureSkewError, VersionSkewError)
from ._faults import DEFAULT_TIMEOUT, barrier, init, shutdown
from ._replicate import Replica
from ._sharded import ShardedPopulation, all_mean, broadcast, shard, split_sizes
from ._wire import Traffic, count_bytes

__all__ = [
    "init", "shutdown", "barrier", "DEFAULT_TIMEOUT",
    "shard", "ShardedPopulation", "split_sizes", "all_mean", "broadcast",
    "Replica", "count_bytes", "Traffic",
    "save_sharded", "load_sharded", "ShardedCheckpoint", "ShardedCheckpointError",
    "checkpoint_files",
    "DistributedError", "VersionSkewError", "StructureSkewError", "EventConflictError",
    "RankFailureError",
]
