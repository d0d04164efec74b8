"""Typed errors of the distributed layer; all derive from :class:`nytorch_func.NytorchFuncError`."""

from __future__ import annotations

from .._errors import NytorchFuncError, SchemaError, VersionError

__all__ = ["DistributedError", "VersionSkewError", "StructureSkewError", "RankFailureError",
           "EventConflictError"]


class DistributedError(NytorchFuncError):
    """A collective of ``nytorch_func.distributed`` could not run as asked."""


class VersionSkewError(DistributedError, VersionError):
    """The ranks hold particles at different versions of their species.

    Every rank raises it, from the same collective, so no rank goes on alone. Bring the ranks
    together first: make events on one rank and call ``nfd.sync(p)`` on every rank, then
    ``nf.touch`` the particles to the species head.
    """


class StructureSkewError(DistributedError, SchemaError):
    """The ranks hold particles whose structure (paths, shapes, dtypes, configs) differs.

    Build the species the same way on every rank (same constructor and seed), and change it only
    through events replicated with ``nfd.sync``.
    """


class EventConflictError(DistributedError, VersionError):
    """Two or more ranks made events since the last ``nfd.sync``: the order is ambiguous.

    A species chain is append-only, so two ranks' local events cannot both be kept. Make events
    on one rank at a time and call ``nfd.sync`` on every rank in between.
    """


class RankFailureError(DistributedError, RuntimeError):
    """A peer rank died, or did not answer within the process group's timeout.

    The collective was abandoned; restart the job (``torchrun`` restarts it with
    ``--max-restarts``) and resume from the per-rank checkpoints.
    """
