"""The migration engine: a particle's leaves carried along the species chain to a later version.

Works on schemas and leaf tuples only (no Particle type), so the particle's own methods and the
public :func:`nytorch_func.touch` both build on it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._errors import ArgumentTypeError, SchemaError, VersionError
from ._events import Migration
from ._schema import Schema

__all__ = ["resolve_target", "migrate", "events_between", "check_fill"]

FILLS = ("snapshot", "zeros")


def check_fill(fill: Any, what: str = "touch") -> None:
    """``fill`` must be ``"snapshot"``, ``"zeros"`` or a callable ``fill(value, spec)``."""
    if callable(fill) or (isinstance(fill, str) and fill in FILLS):
        return
    raise (SchemaError if isinstance(fill, str) else ArgumentTypeError)(
        f"{what}: fill must be 'snapshot' (the seed's recipient rule), 'zeros' (for training "
        f"state such as optimizer moments) or a callable fill(value, spec) -> tensor, got "
        f"{fill!r}")


def resolve_target(start: Schema, to: "None | int | Schema", what: str = "touch") -> Schema:
    """The schema ``to`` names for a particle at ``start``: None = head, an int = that version,
    or a Schema of the same species."""
    species = start.species
    if to is None:
        head = species.head
        return start if head is None else head
    if isinstance(to, Schema):
        if to.species is not species:
            raise VersionError(f"{what}: the schema given belongs to species "
                               f"{to.species.name!r}, the particle to {species.name!r}; a "
                               "particle only moves along its own species")
        return to
    if isinstance(to, int) and not isinstance(to, bool):
        try:
            return species.version(to)
        except VersionError as err:
            raise VersionError(f"{what}: {err}; pass to=None for the newest version "
                               f"({species.head.version if species.head else '?'}), or one of "
                               f"the live versions {[s.version for s in species.live_versions()]}"
                               ) from None
    raise ArgumentTypeError(f"{what}: 'to' must be None (newest), a version number or a "
                            f"Schema, got {type(to).__name__}")


def migrate(start: Schema, leaves: tuple, batch_shape: tuple[int, ...], target: Schema,
            fill: "str | Callable" = "snapshot", what: str = "touch") -> tuple:
    """``leaves`` (at ``start``, in its leaf order) carried to ``target``, in its leaf order.

    Events that only select leaves compose as index selections without building a dict; the
    others migrate through ``event.migrate``. ``fill`` decides what entries new since ``start``
    start as (see :func:`nytorch_func.touch`).
    """
    if target.version < start.version:
        raise VersionError(f"{what}: cannot go back from version {start.version} to version "
                           f"{target.version}; touch only moves forward (events are not undone)")
    sel: tuple[int, ...] | None = None  # None: the identity
    schema = start
    while schema is not target:
        link = schema._next
        if link is None or link.selection is None:
            break
        step = link.selection
        sel = step if sel is None else tuple([sel[j] for j in step])
        schema = link.schema
    if sel is None:
        sel = tuple(range(len(leaves)))
    if schema is target and fill == "snapshot":
        return tuple([leaves[i] for i in sel])
    current = {k: leaves[i] for k, i in zip(schema.leaf_keys, sel)}
    while schema is not target:
        link = schema._next
        if link is None:
            raise VersionError(f"{what}: version {target.version} is not reachable from version "
                               f"{start.version} of species {start.species.name!r}")
        if link.selection is not None:
            keys = schema.leaf_keys
            current = {k: current[keys[i]] for k, i in zip(link.schema.leaf_keys, link.selection)}
        else:
            current = link.event.migrate(current, Migration(batch_shape, schema, link.schema, fill))
        schema = link.schema
    if fill != "snapshot":
        _refill(current, start, target, batch_shape, fill, what)
    return tuple(current[k] for k in target.leaf_keys)


def _refill(leaves: dict, start: Schema, target: Schema, batch_shape: tuple[int, ...],
            fill: "str | Callable", what: str) -> None:
    """Replace the entries that are new since ``start`` by zeros or ``fill(value, spec)``."""
    old = {s.pid if s.is_param else s.key for s in start.leaf_specs}
    for spec in target.leaf_specs:
        if (spec.pid if spec.is_param else spec.key) in old:
            continue
        value = leaves[spec.key]
        if fill == "zeros":
            leaves[spec.key] = torch.zeros_like(value)
            continue
        new = fill(value, spec)
        if not isinstance(new, torch.Tensor) or new.shape != value.shape or (
                new.dtype != value.dtype or new.device != value.device):
            got = (f"shape {tuple(new.shape)} {new.dtype} on {new.device}"
                   if isinstance(new, torch.Tensor) else type(new).__name__)
            raise SchemaError(f"{what}: fill returned {got} for {spec.key!r}; it must return a "
                              f"tensor of shape {tuple(value.shape)} {value.dtype} on "
                              f"{value.device} (the schema's dtype: cast with .to(value.dtype))")
        leaves[spec.key] = new


def events_between(start: Schema, end: Schema) -> list:
    """The events that lead from version ``start`` to the later version ``end``, in order."""
    events, s = [], start
    while s is not end:
        link = s._next
        if link is None:
            raise VersionError(f"version {end.version} of species {end.species.name!r} is not "
                               f"reachable from version {start.version}")
        events.append(link.event)
        s = link.schema
    return events
