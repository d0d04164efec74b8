"""Several events as one version: a replacement (delete, then add under the same name) is one
atomic step, validated as a whole before anything is linked."""

from __future__ import annotations

from typing import ClassVar

from ._errors import SchemaError
from ._events import Event, Leaves, Migration, record
from ._schema import Schema

__all__ = ["Batch"]


@record
class Batch(Event):
    """Several events as one version: all of them apply, or none (a replacement is one step).

    ``apply`` validates every step against the schema the previous ones make before anything is
    linked; ``migrate`` replays them in order (through the same intermediate versions, which it
    makes again). The version number grows by one.
    """

    events: tuple[Event, ...]
    kind: ClassVar[str] = "batch"

    def _steps(self, schema: Schema) -> list[Schema]:
        if not self.events or not all(isinstance(e, Event) for e in self.events):
            raise SchemaError("batch: expected one or more events")
        out = [schema]
        for event in self.events:
            out.append(event.apply(out[-1]))
        return out

    def apply(self, schema: Schema) -> Schema:
        s = self._steps(schema)[-1]
        return Schema(schema.species, schema.version + 1, s._skeleton, s.specs, s.shared,
                      s.next_pid)

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...] | None:
        steps = self._steps(before)
        sel: tuple[int, ...] | None = None
        for event, a, b in zip(self.events, steps, steps[1:]):
            step = event.selection(a, b)
            if step is None:
                return None
            sel = step if sel is None else tuple([sel[j] for j in step])
        return sel

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        steps = self._steps(m.before)
        for event, a, b in zip(self.events, steps, steps[1:]):
            leaves = event.migrate(leaves, m._replace(before=a, after=b))
        return leaves

    def describe(self) -> str:
        return "; ".join(e.describe() for e in self.events)
