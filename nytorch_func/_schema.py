"""Schema: one immutable version of a species' structure.

A schema holds the module skeleton (the module tree with every tensor moved to the ``meta``
device: how to run the forward pass, no data), one :class:`TensorSpec` per parameter and buffer,
and the species-wide shared tensors (``clone=False`` parameters and shared buffers). Particles
hold a schema plus their per-particle tensors, the *leaves*, in ``schema.leaf_keys`` order.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from ._config import ParamConfig
from ._errors import ArgumentTypeError, SchemaError, frozen
from ._module_view import ModuleView, live
from ._skeleton import (copy_path, copy_paths, make_skeleton, shallow_module,  # noqa: F401
                        split_path, to_meta)  # (re-exported: the core imports them from here)

if TYPE_CHECKING:
    from ._events import Event
    from ._species import Species

__all__ = ["Schema", "TensorSpec", "Link", "computable", "copy_path", "copy_paths"]


@dataclasses.dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a schema knows of one parameter or buffer.

    ``key`` is its canonical path (the first of ``paths``; tied tensors have several paths).
    ``pid`` is the stable parameter id (``None`` for buffers). A spec is a *leaf* when every
    particle holds its own value; otherwise the one tensor lives in ``Schema.shared``.
    """

    key: str
    kind: str  # "param" | "buffer"
    paths: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool = False
    pid: int | None = None
    config: ParamConfig | None = None
    state: bool = True  # buffers: per-particle state (True) or shared by the species (False)
    persistent: bool = True  # buffers: part of state_dict
    # buffers: what reductions over particles do ("mean": floating values averaged, integer
    # counters their maximum; "keep": the first operand's; "reset": the recorded ``reset``)
    policy: str = "mean"
    # buffers with policy "reset": the value reductions give them (recorded by configure_buffer)
    reset: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def is_param(self) -> bool:
        return self.kind == "param"

    @property
    def leaf(self) -> bool:
        if self.kind == "param":
            return not self.config.shared  # type: ignore[union-attr]
        return self.state

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        dtype = str(self.dtype).replace("torch.", "")
        if self.kind == "param":
            return f"param {self.key} [{shape} {dtype}] id={self.pid} {self.config}"
        how = "state" if self.state else "shared"
        policy = "" if self.policy == "mean" else f" policy={self.policy}"
        return f"buffer {self.key} [{shape} {dtype}] {how}{policy}"

    @classmethod
    def of(cls, key: str, kind: str, tensor: torch.Tensor, **fields: Any) -> "TensorSpec":
        return cls(key=key, kind=kind, paths=fields.pop("paths", (key,)), shape=tuple(tensor.shape),
                   dtype=tensor.dtype, device=tensor.device,
                   requires_grad=bool(tensor.requires_grad), **fields)

    def matches(self, t: torch.Tensor, batch_shape: tuple[int, ...] = ()) -> bool:
        """Whether ``t`` can be this spec's leaf in a particle of ``batch_shape``."""
        return (t.dtype == self.dtype and t.shape == (*batch_shape, *self.shape)
                and t.device == self.device)


def _spec_setattr(self: TensorSpec, name: str, value: Any) -> None:
    raise frozen("TensorSpec", name, "use dataclasses.replace(spec, ...)")


# Set after the dataclass decorator, which makes its own: the typed error instead of the bare one.
TensorSpec.__setattr__ = _spec_setattr  # type: ignore[method-assign]
TensorSpec.__delattr__ = lambda self, name: _spec_setattr(self, name, None)  # type: ignore[method-assign]


class Link(NamedTuple):
    """The forward link from one version to the next, written once under the species' lock.

    ``selection``: when the event only drops, keeps or renames leaves (deletions, set_none,
    config changes that keep every leaf per-particle), the indices into the older version's
    leaves that give the newer one's, so touch composes such events as index selections;
    ``None`` when the event makes new values.
    """

    event: "Event"
    schema: "Schema"
    selection: "tuple[int, ...] | None"


class Schema:
    """One version of a species: skeleton, specs and shared tensors. Immutable.

    Schemas compare and hash by ``(species, version)``; never by tensor values. Assigning to any
    attribute raises :class:`~nytorch_func.FrozenError`; the one field written after
    construction is the forward link to the next version, set once by the species under its
    lock. ``shared`` and the indexes are read-only mappings, and ``skeleton``/``module_at``
    hand out read-only views of the module tree every particle of the species runs (changing
    one raises FrozenError too).

    >>> import torch, nytorch_func as nf
    >>> s = nf.from_module(torch.nn.Linear(2, 1)).schema
    >>> s.version = 7
    Traceback (most recent call last):
    ...
    nytorch_func._errors.FrozenError: Schema is immutable (cannot set 'version'): ...
    >>> s.skeleton.out_features = 3
    Traceback (most recent call last):
    ...
    nytorch_func._errors.FrozenError: the skeleton's Linear is immutable (cannot set 'out_features'): ...
    """

    __slots__ = ("species", "version", "_skeleton", "specs", "shared", "next_pid", "training",
                 "by_path", "leaf_keys", "leaf_specs", "leaf_index", "op_index",
                 "all_operational", "_next", "__weakref__")

    def __init__(self, species: "Species", version: int, skeleton: nn.Module,
                 specs: tuple[TensorSpec, ...], shared: Mapping[str, torch.Tensor],
                 next_pid: int) -> None:
        by_path = {p: s for s in specs for p in s.paths}
        if len(by_path) != sum(len(s.paths) for s in specs):
            raise SchemaError(f"schema: two specs share a path in version {version}")
        self._fill(species, version, skeleton, tuple(specs), MappingProxyType(dict(shared)),
                   next_pid, by_path, *_leaf_indexes(tuple(s for s in specs if s.leaf)))

    def _fill(self, species: "Species", version: int, skeleton: nn.Module,
              specs: tuple[TensorSpec, ...], shared: MappingProxyType, next_pid: int,
              by_path: Mapping, leaf_specs: tuple[TensorSpec, ...],
              leaf_keys: tuple[str, ...], leaf_index: Mapping[str, int],
              op_index: tuple[int, ...]) -> None:
        put = object.__setattr__
        if type(skeleton) is ModuleView:  # (a caller that read schema.skeleton)
            skeleton = live(skeleton)
        put(self, "species", species)
        put(self, "version", version)
        put(self, "_skeleton", skeleton)
        put(self, "specs", specs)
        put(self, "shared", shared)
        put(self, "next_pid", next_pid)
        put(self, "training", skeleton.training)
        put(self, "by_path", _read_only(by_path))
        put(self, "leaf_specs", leaf_specs)
        put(self, "leaf_keys", leaf_keys)
        put(self, "leaf_index", _read_only(leaf_index))
        put(self, "op_index", op_index)
        # True only when there is something to compute: the fast path hands every leaf to one
        # torch._foreach_* call, which refuses an empty list.
        put(self, "all_operational", 0 < len(op_index) == len(leaf_specs))
        put(self, "_next", None)

    def derive(self, *, skeleton: nn.Module | None = None, add: tuple[TensorSpec, ...] = (),
               drop: Collection[str] = (), replace: Mapping[str, TensorSpec] | None = None,
               shared: Mapping[str, torch.Tensor] | None = None,
               next_pid: int | None = None) -> "Schema":
        """The next version: this one with specs dropped (by key), replaced and added.

        The indexes are derived from this version's, not rebuilt: most events change one spec.
        An addition appends to every index; a removal shifts the leaves after the removed ones;
        a replacement that keeps keys and leaves (a config or policy change) shares this
        version's index mappings (they are never written after construction). ``replace`` maps
        an old key to its new spec (which may have a new key, when the canonical path of a
        tied tensor is deleted). Added specs go last, in order.
        """
        if not replace and not drop and len(add) == 1:  # the common event: one new tensor
            return self._plus(add[0], skeleton, shared, next_pid)
        if not replace and not add and len(drop) == 1:  # and its inverse
            return self._minus(next(iter(drop)), skeleton, shared)
        replace = replace or {}
        by_path: Mapping[str, TensorSpec] = self.by_path
        renamed = any(new.paths != by_path[key].paths for key, new in replace.items())
        if drop or add or renamed:
            by_path = by_path.copy()
            for key in (*drop, *replace):
                for p in self.by_path[key].paths:
                    del by_path[p]  # type: ignore[attr-defined]
            for spec in (*replace.values(), *add):
                if any(p in by_path for p in spec.paths):
                    raise SchemaError(f"schema: {spec.key!r} already exists in version "
                                      f"{self.version}")
                for p in spec.paths:
                    by_path[p] = spec  # type: ignore[index]
        elif replace:
            by_path = {**by_path, **{p: new for new in replace.values() for p in new.paths}}
        leaf_specs, leaf_keys, index, op = (self.leaf_specs, self.leaf_keys, self.leaf_index,
                                            self.op_index)
        if not drop and not replace:  # an addition: every index only grows
            specs = self.specs + add
            new_leaves = tuple([s for s in add if s.leaf])
            if new_leaves:
                index = index.copy()
                op_list = list(op)
                for i, spec in enumerate(new_leaves, len(leaf_specs)):
                    index[spec.key] = i  # type: ignore[index]
                    if _computed(spec):
                        op_list.append(i)
                leaf_specs = leaf_specs + new_leaves
                leaf_keys = leaf_keys + tuple([s.key for s in new_leaves])
                op = tuple(op_list)
        elif not replace and not add:  # a removal: leaves keep their order, some go
            specs = tuple([s for s in self.specs if s.key not in drop])
            gone = sorted(index[k] for k in drop if k in index)
            if len(gone) == 1:  # the common case: one leaf goes, the ones after it shift
                j = gone[0]
                leaf_specs = leaf_specs[:j] + leaf_specs[j + 1:]
                leaf_keys = leaf_keys[:j] + leaf_keys[j + 1:]
                index = dict(zip(leaf_keys, range(len(leaf_keys))))
                op = tuple([i if i < j else i - 1 for i in op if i != j])
            elif gone:
                dropped = set(gone)
                keep = [i for i in range(len(leaf_keys)) if i not in dropped]
                leaf_specs = tuple([leaf_specs[i] for i in keep])
                leaf_keys = tuple([leaf_keys[i] for i in keep])
                index = dict(zip(leaf_keys, range(len(leaf_keys))))
                op = tuple([i - sum(g < i for g in gone) for i in op if i not in dropped])
        elif not drop and not add and not renamed and all(
                new.leaf == self.by_path[key].leaf for key, new in replace.items()):
            # settings changed, keys and leaves did not: positions stay
            specs = tuple([replace.get(s.key, s) for s in self.specs])
            leaf_specs = tuple([replace.get(s.key, s) for s in leaf_specs])
            op = tuple([i for i, s in enumerate(leaf_specs) if _computed(s)])
        else:
            specs = tuple([replace.get(s.key, s) for s in self.specs if s.key not in drop]) + add
            leaf_specs, leaf_keys, index, op = _leaf_indexes(tuple([s for s in specs if s.leaf]))
        new = Schema.__new__(Schema)
        new._fill(self.species, self.version + 1,
                  self._skeleton if skeleton is None else skeleton, specs,
                  self.shared if shared is None else MappingProxyType(dict(shared)),
                  self.next_pid if next_pid is None else next_pid, by_path, leaf_specs,
                  leaf_keys, index, op)
        return new

    def _plus(self, spec: TensorSpec, skeleton: nn.Module | None,
              shared: Mapping[str, torch.Tensor] | None, next_pid: int | None) -> "Schema":
        """:meth:`derive` adding one spec: every index grows by at most one entry."""
        by_path = self.by_path.copy()
        for p in spec.paths:
            if p in by_path:
                raise SchemaError(f"schema: {spec.key!r} already exists in version "
                                  f"{self.version}")
            by_path[p] = spec
        leaf_specs, leaf_keys, index, op = (self.leaf_specs, self.leaf_keys, self.leaf_index,
                                            self.op_index)
        if spec.leaf:
            n = len(leaf_specs)
            index = index.copy()
            index[spec.key] = n  # type: ignore[index]
            leaf_specs, leaf_keys = leaf_specs + (spec,), leaf_keys + (spec.key,)
            if _computed(spec):
                op = op + (n,)
        new = Schema.__new__(Schema)
        new._fill(self.species, self.version + 1,
                  self._skeleton if skeleton is None else skeleton, self.specs + (spec,),
                  self.shared if shared is None else MappingProxyType(dict(shared)),
                  self.next_pid if next_pid is None else next_pid, by_path, leaf_specs,
                  leaf_keys, index, op)
        return new

    def _minus(self, key: str, skeleton: nn.Module | None,
               shared: Mapping[str, torch.Tensor] | None) -> "Schema":
        """:meth:`derive` dropping one spec: the leaves after it shift down by one."""
        by_path = self.by_path.copy()
        gone = by_path[key]
        for p in gone.paths:
            del by_path[p]
        specs = tuple([s for s in self.specs if s is not gone])
        leaf_specs, leaf_keys, index, op = (self.leaf_specs, self.leaf_keys, self.leaf_index,
                                            self.op_index)
        j = index.get(key)
        if j is not None:
            leaf_specs = leaf_specs[:j] + leaf_specs[j + 1:]
            leaf_keys = leaf_keys[:j] + leaf_keys[j + 1:]
            index = dict(zip(leaf_keys, range(len(leaf_keys))))
            op = tuple([i if i < j else i - 1 for i in op if i != j])
        new = Schema.__new__(Schema)
        new._fill(self.species, self.version + 1,
                  self._skeleton if skeleton is None else skeleton, specs,
                  self.shared if shared is None else MappingProxyType(dict(shared)),
                  self.next_pid, by_path, leaf_specs, leaf_keys, index, op)
        return new

    def __setattr__(self, name: str, value: object) -> None:
        raise frozen("Schema", name, "events make new versions (nf.add_param, nf.configure, "
                     "nf.to, ...)")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    # identity -------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return self.species is other.species and self.version == other.version

    def __hash__(self) -> int:
        return hash((id(self.species), self.version))

    def __repr__(self) -> str:
        return (f"Schema(species={self.species.name!r}, version={self.version}, "
                f"params={sum(s.is_param for s in self.specs)}, "
                f"buffers={sum(not s.is_param for s in self.specs)})")

    def __deepcopy__(self, memo: dict) -> "Schema":
        return self  # immutable; shared by every copy of a particle

    def __copy__(self) -> "Schema":
        return self

    # reading ---------------------------------------------------------------------------------
    @property
    def is_newest(self) -> bool:
        """True while no event has followed this version."""
        return self._next is None

    @property
    def next(self) -> "Schema | None":
        return None if self._next is None else self._next.schema

    @property
    def event(self) -> "Event | None":
        """The event that leads from this version to the next one, if any."""
        return None if self._next is None else self._next.event

    @property
    def by_key(self) -> Mapping[str, TensorSpec]:
        """Every spec by its canonical path (``by_path`` also has the aliases of tied tensors)."""
        return MappingProxyType({s.key: s for s in self.specs})

    @property
    def params(self) -> tuple[TensorSpec, ...]:
        return tuple(s for s in self.specs if s.kind == "param")

    @property
    def buffers(self) -> tuple[TensorSpec, ...]:
        return tuple(s for s in self.specs if s.kind == "buffer")

    def spec(self, path: str, *, kind: str | None = None, what: str = "") -> TensorSpec:
        """The spec at ``path`` (any alias), or a SchemaError that names close matches.

        A ``path`` that is not a string is an :class:`ArgumentTypeError` naming ``what``.
        """
        if not isinstance(path, str):
            raise ArgumentTypeError(f"{what or 'schema'}: path must be a dotted name like "
                                    f"'encoder.weight', got {path!r:.60} ({type(path).__name__})")
        spec = self.by_path.get(path)
        if spec is None or (kind is not None and spec.kind != kind):
            noun = {"param": "parameter", "buffer": "buffer", None: "parameter or buffer"}[kind]
            names = [p for s in self.specs if kind in (None, s.kind) for p in s.paths]
            raise SchemaError(f"{what or 'schema'}: no {noun} at path {path!r} in version "
                              f"{self.version}{suggest(path, names)}")
        return spec

    def specs_under(self, prefix: str, *, kind: str | None = "param") -> list[TensorSpec]:
        """Specs whose path is ``prefix`` or lies under module ``prefix`` ('' = all)."""
        out = []
        for s in self.specs:
            if kind is not None and s.kind != kind:
                continue
            if not prefix or any(p == prefix or p.startswith(prefix + ".") for p in s.paths):
                out.append(s)
        return out

    @property
    def skeleton(self) -> ModuleView:
        """The module tree of this version (``meta`` tensors) as a read-only view (``ModuleView``).

        Every particle of the species runs its forward pass on this one tree, so it cannot
        change: assigning to it, or to any module in it, raises FrozenError (see
        :class:`~nytorch_func._module_view.ModuleView` for what a view does).
        ``copy.deepcopy(schema.skeleton)`` gives a module of your own.
        """
        return ModuleView(self._skeleton, self.species._call_lock)

    def module_at(self, path: str) -> ModuleView | None:
        """The skeleton submodule at ``path`` ('' is the root) as a read-only view, or None."""
        m = self._module_at(path)
        return None if m is None else ModuleView(m, self.species._call_lock)

    def _module_at(self, path: str) -> nn.Module | None:
        """:meth:`module_at` for the library's own code: the live module every particle runs.

        Never hand it to a user, never change it: events copy the path to a change
        (:func:`copy_path`) and build the next version from the copies.
        """
        try:
            return self._skeleton.get_submodule(path) if path else self._skeleton
        except AttributeError:
            return None

    def module_paths(self) -> list[str]:
        """The dotted path of every module of the skeleton ('' is the root)."""
        return [name for name, _ in self._skeleton.named_modules(remove_duplicate=False)]

    def describe(self) -> str:
        head = f"version {self.version} of species {self.species.name!r}"
        return "\n".join([head] + ["  " + s.describe() for s in self.specs])


def _read_only(m: Mapping) -> MappingProxyType:
    """``m`` as a read-only mapping (a proxy is shared as is: its dict is never written)."""
    return m if type(m) is MappingProxyType else MappingProxyType(m)  # type: ignore[arg-type]


def _computed(s: TensorSpec) -> bool:
    """Whether particle arithmetic computes the leaf of ``s``: operational parameters of a
    floating or complex dtype. Integer parameters never are (``p / 2`` would turn them into
    floats); the public API refuses to make them operational, and this keeps schemas built
    otherwise (the facade, old files) from changing a leaf's dtype."""
    return s.kind == "param" and s.config.operational and computable(s.dtype)  # type: ignore[union-attr]


def _leaf_indexes(leaf_specs: tuple[TensorSpec, ...]
                  ) -> tuple[tuple[TensorSpec, ...], tuple[str, ...], dict[str, int], tuple[int, ...]]:
    """``(leaf_specs, leaf_keys, leaf_index, op_index)`` of a schema whose leaves are these."""
    keys = tuple(s.key for s in leaf_specs)
    return (leaf_specs, keys, {k: i for i, k in enumerate(keys)},
            tuple(i for i, s in enumerate(leaf_specs) if _computed(s)))


def computable(dtype: torch.dtype) -> bool:
    """Whether particle arithmetic can compute a parameter of ``dtype`` (floating or complex)."""
    return dtype.is_floating_point or dtype.is_complex


def suggest(path: str, names: list[str]) -> str:
    close = difflib.get_close_matches(path, names, n=3)
    if close:
        return "; did you mean " + " or ".join(map(repr, close)) + "?"
    if names:
        shown = ", ".join(map(repr, names[:6])) + (", ..." if len(names) > 6 else "")
        return f"; known paths: {shown}"
    return ""
