"""touch: the pure migration of a particle (or population) to a later version of its species."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import NytorchFuncError, VersionError
from ._schema import Schema

if TYPE_CHECKING:
    from ._particle import Particle

__all__ = ["touch", "resolve_target"]


def resolve_target(p: "Particle", to: "None | int | Schema") -> Schema:
    """The schema ``to`` names for ``p``: None = head, an int = that version, or a Schema."""
    species = p._schema.species
    if to is None:
        head = species.head
        return p._schema if head is None else head
    if isinstance(to, Schema):
        if to.species is not species:
            raise VersionError(f"touch: the schema given belongs to species {to.species.name!r}, "
                               f"the particle to {species.name!r}; a particle only moves along its "
                               "own species")
        return to
    if isinstance(to, int) and not isinstance(to, bool):
        return species.version(to)
    raise VersionError(f"touch: 'to' must be None (newest), a version number or a Schema, got "
                       f"{type(to).__name__}")


def touch(p: "Particle", to: "None | int | Schema" = None) -> "Particle":
    """``p`` migrated to version ``to`` (default: the species head). Pure.

    Every event between the two versions is replayed with recipient semantics: added parameters
    and modules arrive as clones of the snapshot taken when the event was made (broadcast along
    the batch dimensions of a population), added buffers as the recorded tensor itself, deletions
    remove. Leaves that no event touched are the same tensor objects as in ``p``; ``p`` itself is
    unchanged. A particle already at ``to`` is returned as is.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> q = nf.del_param(p.clone(), "bias")
    >>> sorted(p.params), sorted(nf.touch(p).params)
    (['bias', 'weight'], ['weight'])
    >>> nf.touch(p).leaves[0] is p.leaves[0]
    True
    >>> nf.touch(q, to=0)
    Traceback (most recent call last):
    ...
    nytorch_func._errors.VersionError: touch: cannot go back from version 1 to version 0; touch only moves forward (events are not undone)
    """
    from ._particle import Particle

    if not isinstance(p, Particle):
        raise NytorchFuncError(f"touch: expected a Particle, got {type(p).__name__}; for a "
                               "NytoModule call module.touch()")
    target = resolve_target(p, to)
    start = p._schema
    if target is start:
        return p
    if target.version < start.version:
        raise VersionError(f"touch: cannot go back from version {start.version} to version "
                           f"{target.version}; touch only moves forward (events are not undone)")
    batch_shape = tuple(p.batch_shape)
    leaves = dict(zip(start.leaf_keys, p._leaves))
    schema = start
    while schema is not target:
        link = schema._next
        if link is None:  # pragma: no cover - a chain never forks
            raise VersionError(f"touch: version {target.version} is not reachable from version "
                               f"{start.version} of species {start.species.name!r}")
        event, schema = link
        leaves = event.migrate(leaves, batch_shape)
    return Particle._make(target, tuple(leaves[k] for k in target.leaf_keys), p._training)
