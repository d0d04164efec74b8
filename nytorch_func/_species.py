"""Species: the append-only chain of schema versions shared by related particles.

The only mutable object of the core. Links point forward only (version k holds the event to k+1
and version k+1); the species itself holds its versions by weak reference. A version therefore
lives exactly as long as some particle (or user) can still reach it, and nothing forms a cycle.
"""

from __future__ import annotations

import itertools
import threading
import uuid
import weakref
from typing import TYPE_CHECKING

from ._errors import VersionError, frozen
from ._schema import Link

if TYPE_CHECKING:
    from ._events import Event
    from ._schema import Schema

__all__ = ["Species"]

_counter = itertools.count()


_ASK = object()  # _link computes the selection itself


class StaleHead(Exception):
    """Internal: another thread appended first; the caller touches and tries again."""


class Species:
    """The lineage of one model: every version its particles have had.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> sp = p.species
    >>> sp.head is p.schema, len(sp)
    (True, 1)
    """

    __slots__ = ("name", "uid", "_lock", "_call_lock", "_versions", "_head", "_count",
                 "__weakref__")

    def __init__(self, name: str, uid: str | None = None) -> None:
        put = object.__setattr__
        put(self, "name", f"{name}#{next(_counter)}")
        put(self, "uid", uid or uuid.uuid4().hex)
        put(self, "_lock", threading.Lock())
        # Held while a forward pass swaps a particle's tensors into a skeleton (nf.apply), while
        # to_module copies one, and while an event copies one: the versions of a species share
        # their skeleton modules, so these must not interleave across threads. Re-entrant, so a
        # forward pass may itself call nf.apply or an event on the same species.
        put(self, "_call_lock", threading.RLock())
        put(self, "_versions", weakref.WeakValueDictionary())
        put(self, "_head", None)
        put(self, "_count", 0)

    def __setattr__(self, name: str, value: object) -> None:
        raise frozen("Species", name, "a species changes only by events (nf.add_param, ...)")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __repr__(self) -> str:
        return f"Species({self.name!r}, versions={self._count}, live={len(self._versions)})"

    def __len__(self) -> int:
        """How many versions were ever made (the head's version + 1)."""
        return self._count

    def __deepcopy__(self, memo: dict) -> "Species":
        return self

    def __copy__(self) -> "Species":
        return self

    @property
    def head(self) -> "Schema | None":
        """The newest version, or None once no particle can reach any version."""
        return None if self._head is None else self._head()

    def version(self, number: int) -> "Schema":
        """The live schema of version ``number``; VersionError if it was never made or is freed.

        >>> import torch, nytorch_func as nf
        >>> p = nf.from_module(torch.nn.Linear(2, 1))
        >>> p.species.version(0) is p.schema
        True
        """
        if isinstance(number, bool) or not isinstance(number, int):
            raise VersionError(f"species {self.name!r}: a version is an int, got "
                               f"{type(number).__name__} {number!r}")
        schema = self._versions.get(number)
        if schema is None:
            if not 0 <= number < self._count:
                raise VersionError(f"species {self.name!r} has no version {number}: versions made "
                                   f"are 0..{self._count - 1}")
            raise VersionError(f"version {number} of species {self.name!r} was freed: no particle "
                               "or schema references it any more (old versions live only while "
                               "something holds them)")
        return schema

    def live_versions(self) -> list["Schema"]:
        """The versions still in memory, oldest first.

        Safe while other threads append events: the versions are copied under the species'
        lock (iterating the weak dictionary while an event is added would fail), so the list
        is the species as it was at one moment.
        """
        with self._lock:
            items = list(self._versions.items())
        items.sort(key=lambda item: item[0])
        return [s for _, s in items]

    # writing (under the lock) ---------------------------------------------------------------
    def _register(self, schema: "Schema") -> None:
        with self._lock:
            self._install(schema)

    def _install(self, schema: "Schema") -> None:
        self._versions[schema.version] = schema
        object.__setattr__(self, "_head", weakref.ref(schema))
        if schema.version >= self._count:
            object.__setattr__(self, "_count", schema.version + 1)

    def _link(self, base: "Schema", event: "Event", new: "Schema",
              selection: "tuple[int, ...] | None | object" = _ASK) -> None:
        """Append ``new`` after ``base``; StaleHead if ``base`` is no longer the head.

        ``selection``: the event's selection for these two versions, if the caller has it.
        """
        if selection is _ASK:
            selection = event.selection(base, new)
        link = Link(event, new, selection)
        with self._lock:
            if base._next is not None or self._head is None or self._head() is not base:
                raise StaleHead()
            object.__setattr__(base, "_next", link)
            self._install(new)
