"""Which particle a module belongs to: per-particle handles and the weak tables that find them.

Bookkeeping lives outside the modules, so nothing here forms a reference cycle:

* ``TAGS``: every NytoModule of a bound tree -> ``(handle, path inside its root)``. Plain
  ``nn.Module`` children are not tagged: the tree's :class:`~._plan.Plan` knows them.
* ``BUILDING``: a NytoModule with no species yet -> :class:`Construction` (the NytoModule it was
  put into, and when each of its names was registered: nytorch gives parameter ids in that
  order). Dropped when the species is made.

A :class:`ParticleHandle` (nytorch's ``_particle_kernel``) is shared by a particle's root and
every NytoModule in its tree; it holds the particle's schema and its root by weak reference.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from torch import nn

from .._schema import Schema

__all__ = ["TAGS", "BUILDING", "Construction", "ParticleHandle", "NytoModuleBase", "tag_tree",
           "note_registration", "ORPHAN", "LOCKED"]

ORPHAN = ("this NytoModule's root module was freed (it came from a particle operation on a "
          "submodule, or its root was garbage collected); keep the root module alive and use "
          "root.<path>, or run particle operations on the root")
LOCKED = ("version updates are locked for this particle (it is wrapped in a ParticleModule); "
          "use `with GetNytoModule(particle_module) as root: ...` to edit its structure")


class NytoModuleBase(nn.Module):
    """The facade's module class (``NytoModule`` derives from it): what the tables tag."""


class TagTable:
    """``module -> value`` with weak keys, like ``weakref.WeakKeyDictionary``, but cheaper.

    Keys are weak references whose callback is the table dict's own ``pop`` (a C function): a
    module's death removes its entry without running Python code. Entries are never deleted by
    hand (``discard`` stores ``None``), so every callback finds its key.
    """

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[weakref.ref, Any] = {}

    def get(self, module: nn.Module, default: Any = None) -> Any:
        value = self.data.get(weakref.ref(module))
        return default if value is None else value

    def __setitem__(self, module: nn.Module, value: Any) -> None:
        self.data[weakref.ref(module, self.data.pop)] = value

    def discard(self, module: nn.Module) -> None:
        key = weakref.ref(module)
        if key in self.data:
            self.data[key] = None

    def __len__(self) -> int:
        return sum(v is not None for v in self.data.values())


TAGS = TagTable()


class Construction:
    """What is known of a NytoModule before its species exists (weak references only)."""

    __slots__ = ("parent", "times")

    def __init__(self) -> None:
        self.parent: weakref.ref | None = None
        self.times: dict[str, int] = {}


BUILDING: "weakref.WeakKeyDictionary[nn.Module, Construction]" = weakref.WeakKeyDictionary()
_clock = itertools.count()  # registration times, shared by all modules (order is all that counts)


def note_registration(module: nn.Module, name: str, value: Any) -> None:
    """Record that ``name`` was registered on unbound ``module`` now (and ``value``'s parent)."""
    record = BUILDING.get(module)
    if record is None:
        record = BUILDING[module] = Construction()
    record.times[name] = next(_clock)
    if isinstance(value, NytoModuleBase):
        child = BUILDING.get(value)
        if child is None:
            child = BUILDING[value] = Construction()
        child.parent = weakref.ref(module)


class ParticleHandle:
    """The per-particle handle (nytorch's ``_particle_kernel``): the particle's version and root.

    One handle is shared by a particle's root module and every NytoModule in its tree; each
    particle has its own. ``schema`` is the version the tree holds, ``plan`` how it lies in the
    tree (:class:`~._plan.Plan`), ``locked`` whether a ParticleModule locks its structure. The
    root is held by weak reference (no reference cycles).
    """

    __slots__ = ("schema", "_root", "locked", "plan", "__weakref__")

    def __init__(self, schema: Schema, root: nn.Module, plan: Any = None) -> None:
        self.schema = schema
        self._root = weakref.ref(root)
        self.locked = False
        self.plan = plan

    @property
    def version(self) -> Schema:
        """The core Schema of the particle's version (nytorch's version kernel)."""
        return self.schema

    @property
    def root(self) -> nn.Module | None:
        """The root module, while it lives and still belongs to this handle."""
        root = self._root()
        if root is None:
            return None
        tag = TAGS.get(root)
        return root if tag is not None and tag[0] is self else None

    def __repr__(self) -> str:
        return f"ParticleHandle(species={self.schema.species.name!r}, version={self.schema.version})"

    def __copy__(self) -> "ParticleHandle":
        return self

    def __deepcopy__(self, memo: dict) -> "ParticleHandle":
        return self

    def __reduce__(self):
        raise TypeError("a ParticleHandle is not pickled: save the particle with "
                        "nf.save(path, module.to_particle())")


def tag_tree(module: nn.Module, h: ParticleHandle, prefix: str) -> None:
    """Tag every NytoModule under ``module`` (at ``prefix``) with ``h``; drop their records."""
    for path, m in module.named_modules(prefix=prefix):
        if isinstance(m, NytoModuleBase):
            tag = TAGS.get(m)
            if tag is None or tag[0] is not h or tag[1] != path:
                TAGS[m] = (h, path)
            BUILDING.pop(m, None)
