"""touch: the pure migration of a particle (or population) to a later version of its species."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._errors import NytorchFuncError, VersionError
from ._particle import Particle
from ._schema import Schema

__all__ = ["touch", "touch_tree", "resolve_target", "events_between"]


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


def touch(p: "Particle", to: "None | int | Schema" = None, *, fill: "str | Callable" = "snapshot"
          ) -> "Particle":
    """``p`` migrated to version ``to`` (default: the species head). Pure.

    Every event between the two versions is replayed with recipient semantics: added parameters
    and modules arrive as clones of the snapshot taken when the event was made (broadcast along
    the batch dimensions of a population), added buffers as the recorded tensor itself, deletions
    remove. Leaves that no event touched are the same tensor objects as in ``p``; ``p`` itself is
    unchanged. A particle already at ``to`` is returned as is.

    ``fill`` decides what entries that did not exist at ``p``'s version start as: ``"snapshot"``
    (the seed's recipient rule, above), ``"zeros"``, or a callable ``fill(value, spec) -> tensor``
    given the snapshot value. Use ``"zeros"`` for training state that mirrors a particle
    (gradients, optimizer moments): a network grown mid-training keeps Adam's moments for the old
    parameters and starts the new ones at zero.

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
    # Events that only drop, rename or keep leaves (deletions, set_none, buffer policies) are
    # index selections: compose them without building dicts; the rest migrate below.
    sel: tuple[int, ...] | None = None  # None: the identity
    schema = start
    while schema is not target:
        link = schema._next
        if link is None:
            break
        step = _selection(link[0], schema, link[1])
        if step is None:
            break
        sel = step if sel is None else tuple([sel[j] for j in step])
        schema = link[1]
    if sel is None:
        sel = tuple(range(len(p._leaves)))
    if schema is target and fill == "snapshot":
        old = p._leaves
        kept = tuple([old[i] for i in sel])
        return Particle._make(target, kept, p._training, None if kept else tuple(p.batch_shape))
    batch_shape = tuple(p.batch_shape)
    leaves = {k: p._leaves[i] for k, i in zip(schema.leaf_keys, sel)}
    while schema is not target:
        link = schema._next
        if link is None:  # pragma: no cover - a chain never forks
            raise VersionError(f"touch: version {target.version} is not reachable from version "
                               f"{start.version} of species {start.species.name!r}")
        event, schema = link
        leaves = event.migrate(leaves, batch_shape)
    if fill != "snapshot":
        _refill(leaves, start, target, fill)
    return Particle._make(target, tuple(leaves[k] for k in target.leaf_keys), p._training,
                          batch_shape)


_NOT_PURE = object()  # marker: the event makes new values, it is no pure selection


def _selection(event: object, before: Schema, after: Schema) -> "tuple[int, ...] | None":
    """Indices into ``before``'s leaves that give ``after``'s, if ``event`` only selects."""
    cached = getattr(event, "_selection", None)
    if cached is None:
        probe = event.migrate({k: i for i, k in enumerate(before.leaf_keys)}, ())  # type: ignore[attr-defined]
        ints = [probe.get(k) for k in after.leaf_keys]
        cached = tuple(ints) if all(type(i) is int for i in ints) else _NOT_PURE
        object.__setattr__(event, "_selection", cached)
    if cached is _NOT_PURE and after.leaf_keys:
        return None
    return cached


def _refill(leaves: dict, start: Schema, target: Schema, fill: "str | Callable") -> None:
    if fill != "zeros" and not callable(fill):
        raise VersionError(f"touch: fill must be 'snapshot', 'zeros' or a callable, got {fill!r}")
    old = {s.pid if s.is_param else s.key for s in start.leaf_specs}
    for spec in target.leaf_specs:
        if (spec.pid if spec.is_param else spec.key) in old:
            continue
        value = leaves[spec.key]
        new = torch.zeros_like(value) if fill == "zeros" else fill(value, spec)
        if not isinstance(new, torch.Tensor) or new.shape != value.shape:
            raise VersionError(f"touch: fill returned {getattr(new, 'shape', type(new))} for "
                               f"{spec.key!r}; expected a tensor of shape {tuple(value.shape)}")
        leaves[spec.key] = new


def events_between(start: Schema, end: Schema) -> list:
    """The events that lead from version ``start`` to the later version ``end``, in order."""
    events, s = [], start
    while s is not end:
        link = s._next
        if link is None:
            raise VersionError(f"version {end.version} of species {end.species.name!r} is not "
                               f"reachable from version {start.version}")
        events.append(link[0])
        s = link[1]
    return events


def touch_tree(tree: Any, to: "None | int | Schema" = None, *,
               fill: "str | Callable" = "snapshot") -> Any:
    """``touch`` every Particle inside any pytree (optimizer state, dicts, lists, tuples).

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> state = {"m": p.zeros(), "step": 3}
    >>> p = nf.add_param(p, "gain", torch.ones(1))
    >>> nf.touch_tree(state, fill="zeros")["m"]["gain"]
    tensor([0.])
    """
    import optree

    from ._particle import Particle

    return optree.tree_map(lambda x: touch(x, to, fill=fill) if isinstance(x, Particle) else x,
                           tree, is_leaf=lambda x: isinstance(x, Particle), none_is_leaf=True)
