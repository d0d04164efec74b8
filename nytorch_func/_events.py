"""Events: frozen records of one metadata change, mapping schema version k to version k+1.

Each event knows ``apply(schema) -> schema`` (pure: builds the next version, validating
everything first, so a failing event changes nothing) and ``migrate(leaves, m) -> leaves`` (the
recipient side of the change: what another particle of the species gets when it is touched). The initiator side (an added parameter or module is *the object itself*) is
realised by the public event functions in ``_edit.py``, which hold the initiator's objects;
events keep only snapshots, so touching later never depends on what happened to the initiator.
"""

from __future__ import annotations

import copy

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from ._config import ParamConfig
from ._errors import SchemaError, frozen
from ._schema import Schema, TensorSpec, computable, copy_path, split_path, suggest, to_meta

__all__ = ["Event", "Migration", "AddParam", "DelParam", "AddBuffer", "DelBuffer", "AddModule",
           "DelModule", "SetNone", "broadcast",
           "recipient_copy", "drop_paths", "select_by_path", "module_paths_gone", "record",
           "NO_VALUES"]

Leaves = dict[str, torch.Tensor]


NO_VALUES: Mapping[str, torch.Tensor] = MappingProxyType({})


class Migration(NamedTuple):
    """What an event's ``migrate`` knows besides the leaves: where the particle goes.

    ``batch_shape``: the particle's batch dimensions (``()`` for one model). ``before`` and
    ``after``: the versions the event leads from and to. ``fill``: what entries that did not
    exist before start as, for events that map a recipient's own values (growth): ``"snapshot"``
    (the event's rule) or ``"zeros"`` (training state that mirrors a particle). ``own``: the
    initiator's own tensors for the entries the event adds, by path (the seed's rule: the
    initiator holds the object itself); empty for recipients, who get copies.
    """

    batch_shape: tuple[int, ...]
    before: Schema
    after: Schema
    fill: "str | Callable" = "snapshot"
    own: Mapping[str, torch.Tensor] = NO_VALUES


def broadcast(t: torch.Tensor, batch_shape: tuple[int, ...], *, copy: bool) -> torch.Tensor:
    """``t`` for a particle with ``batch_shape``: cloned (``copy``) or viewed along batch dims."""
    if batch_shape:
        t = t.expand(*batch_shape, *t.shape)
    return t.clone() if copy else t


def recipient_copy(t: torch.Tensor, batch_shape: tuple[int, ...],
                   requires_grad: bool) -> torch.Tensor:
    """What a recipient gets of a snapshot: its own detached copy, broadcast to its batch."""
    out = broadcast(t.detach(), batch_shape, copy=True)
    return out.requires_grad_(True) if requires_grad and computable(out.dtype) else out


_SLOTS = {"param": "_parameters", "buffer": "_buffers", "module": "_modules"}


def _check_free(schema: Schema, path: str, what: str,
                kind: str = "param") -> tuple[str, str, nn.Module]:
    """The parent path, name and skeleton parent for a new member at ``path``.

    A ``None`` entry of the same kind (left by :class:`SetNone`, like ``module.bias = None``)
    is free: the new member fills it, as assigning to ``module.bias`` does in torch.
    """
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise SchemaError(f"{what}: path must be a non-empty dotted name like 'encoder.weight', "
                          f"got {path!r}")
    parent_path, name = split_path(path)
    parent = schema._module_at(parent_path)
    if parent is None:
        raise SchemaError(f"{what}: no module {parent_path!r} to hold {name!r} in version "
                          f"{schema.version}; add the module first (nf.add_module)")
    slot = getattr(parent, _SLOTS[kind])
    if name in slot and slot[name] is None:
        return parent_path, name, parent
    if name in parent._parameters or name in parent._buffers or name in parent._modules:
        raise SchemaError(f"{what}: {path!r} already exists in version {schema.version}; delete it "
                          "first or choose another name")
    if name in parent.__dict__ or hasattr(type(parent), name):  # (members were checked above)
        raise SchemaError(f"{what}: {path!r} would hide the attribute {name!r} of "
                          f"{type(parent).__name__}; choose another name")
    return parent_path, name, parent


def drop_paths(schema: Schema, gone: set[str]
               ) -> tuple[set[str], dict[str, TensorSpec], dict[str, torch.Tensor]]:
    """Remove the paths ``gone``: ``(keys dropped, {old key: renamed spec}, shared tensors)``.

    A tied tensor that keeps another path stays, under its first remaining path.
    """
    drop: set[str] = set()
    replace: dict[str, TensorSpec] = {}
    shared = schema.shared
    affected = {schema.by_path[p].key: schema.by_path[p] for p in gone if p in schema.by_path}
    if any(spec.key in shared for spec in affected.values()):
        shared = dict(shared)
    for key, spec in affected.items():
        keep = tuple(p for p in spec.paths if p not in gone)
        if not keep:
            drop.add(key)
            if key in shared:
                del shared[key]  # type: ignore[attr-defined]
            continue
        replace[key] = dataclasses.replace(spec, key=keep[0], paths=keep)
        if key in shared:
            shared[keep[0]] = shared.pop(key)  # type: ignore[attr-defined]
    return drop, replace, shared


def select_by_path(before: Schema, after: Schema) -> tuple[int, ...]:
    """Indices into ``before``'s leaves that give ``after``'s, matching each leaf by a path.

    For events that only drop, keep or rename leaves: every leaf of ``after`` is a leaf of
    ``before`` reachable by its first path.
    """
    index = before.leaf_index
    try:
        return tuple([index[k] for k in after.leaf_keys])
    except KeyError:  # a tied tensor renamed after its first path went: find it by path
        by_path = before.by_path
        return tuple([index[by_path[k].key] for k in after.leaf_keys])


def record(cls: type) -> type:
    """Make ``cls`` a frozen dataclass whose assignments raise :class:`FrozenError`."""
    cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
    cls.__setattr__ = _frozen_setattr
    cls.__delattr__ = _frozen_delattr
    return cls


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise frozen(type(self).__name__, name, "events are records; make a new event instead")


def _frozen_delattr(self: object, name: str) -> None:
    _frozen_setattr(self, name, None)


@record
class Event:
    """Base class of the metadata events: frozen records, the same for every particle.

    ``apply(schema)`` builds the next version (validating first: a refused event changes
    nothing). ``migrate(leaves, m)`` gives a recipient's leaves at the next version from its
    leaves at this one (``m`` is a :class:`Migration`). ``selection(before, after)`` says, for
    events that only drop, keep or rename leaves, which of the old leaves make the new ones, so
    touch composes them as index selections (``None``: the event makes new values). Events never
    change after construction: everything ``migrate`` needs is a field or comes from ``m``.
    """

    kind: ClassVar[str] = "event"

    def apply(self, schema: Schema) -> Schema:  # pragma: no cover - abstract
        raise NotImplementedError

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...] | None:
        return None

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        sel = self.selection(m.before, m.after)
        if sel is None:  # pragma: no cover - every event that makes values overrides migrate
            raise NotImplementedError(f"{type(self).__name__}.migrate")
        keys = m.before.leaf_keys
        return {k: leaves[keys[i]] for k, i in zip(m.after.leaf_keys, sel)}

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@record
class AddParam(Event):
    """Add a parameter: initiator keeps its object, recipients get a clone of the snapshot."""

    path: str
    snapshot: torch.Tensor
    config: ParamConfig = ParamConfig()
    requires_grad: bool = True
    kind: ClassVar[str] = "add_param"

    def apply(self, schema: Schema) -> Schema:
        parent_path, name, _ = _check_free(schema, self.path, "add_param")
        skeleton, parent = copy_path(schema._skeleton, parent_path)
        parent._parameters[name] = nn.Parameter(to_meta(self.snapshot),  # name checked above
                                                requires_grad=self.requires_grad)
        spec = TensorSpec(key=self.path, kind="param", paths=(self.path,),
                          shape=tuple(self.snapshot.shape), dtype=self.snapshot.dtype,
                          device=self.snapshot.device, requires_grad=self.requires_grad,
                          pid=schema.next_pid, config=self.config)
        shared = None
        if self.config.shared:
            shared = {**schema.shared,
                      self.path: nn.Parameter(self.snapshot, requires_grad=self.requires_grad)}
        return schema.derive(skeleton=skeleton, add=(spec,), shared=shared,
                             next_pid=schema.next_pid + 1)

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        if self.config.shared:
            return leaves
        value = m.own.get(self.path)
        if value is None:
            value = recipient_copy(self.snapshot, m.batch_shape, self.requires_grad)
        leaves[self.path] = value
        return leaves

    def describe(self) -> str:
        return f"add_param {self.path} {_shape(self.snapshot)} {self.config}"


@record
class AddBuffer(Event):
    """Add a buffer: initiator and recipients hold the same tensor object (the seed's rule)."""

    path: str
    tensor: torch.Tensor
    state: bool = True
    persistent: bool = True
    kind: ClassVar[str] = "add_buffer"

    def apply(self, schema: Schema) -> Schema:
        parent_path, name, _ = _check_free(schema, self.path, "add_buffer", "buffer")
        skeleton, parent = copy_path(schema._skeleton, parent_path)
        parent.register_buffer(name, to_meta(self.tensor), persistent=self.persistent)
        spec = TensorSpec.of(self.path, "buffer", self.tensor, state=self.state,
                             persistent=self.persistent)
        shared = None if self.state else {**schema.shared, self.path: self.tensor}
        return schema.derive(skeleton=skeleton, add=(spec,), shared=shared)

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        if self.state:
            leaves[self.path] = broadcast(self.tensor, m.batch_shape, copy=False)
        return leaves

    def describe(self) -> str:
        how = "state" if self.state else "shared"
        return f"add_buffer {self.path} {_shape(self.tensor)} {how}"


@record
class _Removal(Event):
    path: str

    def _edit(self, parent: nn.Module, name: str) -> None:
        delattr(parent, name)

    def _gone(self, schema: Schema) -> set[str]:
        raise NotImplementedError

    def apply(self, schema: Schema) -> Schema:
        gone = self._gone(schema)
        parent_path, name = split_path(self.path)
        skeleton, parent = copy_path(schema._skeleton, parent_path)
        self._edit(parent, name)
        drop, replace, shared = drop_paths(schema, gone)
        return schema.derive(skeleton=skeleton, drop=drop, replace=replace,
                             shared=None if shared is schema.shared else shared)

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...]:
        return select_by_path(before, after)


@record
class DelParam(_Removal):
    kind: ClassVar[str] = "del_param"

    def _gone(self, schema: Schema) -> set[str]:
        if _none_slot(schema, self.path, "_parameters"):  # `del m.bias` after `m.bias = None`
            return set()
        schema.spec(self.path, kind="param", what="del_param")
        return {self.path}

    def describe(self) -> str:
        return f"del_param {self.path}"


@record
class DelBuffer(_Removal):
    kind: ClassVar[str] = "del_buffer"

    def _gone(self, schema: Schema) -> set[str]:
        schema.spec(self.path, kind="buffer", what="del_buffer")
        return {self.path}

    def describe(self) -> str:
        return f"del_buffer {self.path}"


def _none_slot(schema: Schema, path: str, slot: str) -> bool:
    """True when ``path`` is an entry set to ``None`` (a param or module slot, as torch keeps)."""
    parent_path, name = split_path(path)
    parent = schema._module_at(parent_path)
    entries = None if parent is None else getattr(parent, slot)
    return entries is not None and name in entries and entries[name] is None


def module_paths_gone(schema: Schema, path: str, what: str) -> set[str]:
    """Every tensor path under the submodule at ``path`` (a SchemaError if there is none)."""
    parent_path, name = split_path(path)
    parent = schema._module_at(parent_path)
    if parent is None or parent._modules.get(name) is None:
        known = [m for m in schema.module_paths() if m]
        raise SchemaError(f"{what}: no submodule at path {path!r} in version "
                          f"{schema.version}{suggest(path, known)}")
    prefix = path + "."
    return {p for p in schema.by_path if p.startswith(prefix)}


@record
class DelModule(_Removal):
    kind: ClassVar[str] = "del_module"

    def _gone(self, schema: Schema) -> set[str]:
        if _none_slot(schema, self.path, "_modules"):  # `del m.sub` after `m.sub = None`
            return set()
        return module_paths_gone(schema, self.path, "del_module")

    def describe(self) -> str:
        return f"del_module {self.path}"


@record
class SetNone(_Removal):
    """Set a parameter or submodule to ``None`` (e.g. drop a Linear's bias)."""

    kind: ClassVar[str] = "set_none"

    def _gone(self, schema: Schema) -> set[str]:
        spec = schema.by_path.get(self.path)
        if spec is not None:
            if spec.kind != "param":
                raise SchemaError(f"set_none: {self.path!r} is a buffer; use nf.del_buffer")
            return {self.path}
        return module_paths_gone(schema, self.path, "set_none")

    def _edit(self, parent: nn.Module, name: str) -> None:
        if name in parent._parameters:
            parent._parameters[name] = None
        else:
            parent._modules[name] = None

    def describe(self) -> str:
        return f"set_none {self.path}"


@record
class AddModule(Event):
    """Add a submodule: recipients get clones of the snapshot of its tensors."""

    path: str
    skeleton: nn.Module  # the added module on the meta device
    specs: tuple[TensorSpec, ...]  # relative paths, pids counted from 0
    values: tuple[torch.Tensor, ...]  # snapshots, in ``specs`` order
    kind: ClassVar[str] = "add_module"

    def apply(self, schema: Schema) -> Schema:
        parent_path, name, _ = _check_free(schema, self.path, "add_module", "module")
        skeleton, parent = copy_path(schema._skeleton, parent_path)
        # a copy: the event is reachable by anyone (p.schema.event), the version's tree must not be
        parent.add_module(name, copy.deepcopy(self.skeleton))
        new_specs, shared = [], None
        for spec, value in zip(self.specs, self.values):
            spec = self._absolute(spec, schema.next_pid)
            new_specs.append(spec)
            if not spec.leaf:
                shared = dict(schema.shared) if shared is None else shared
                shared[spec.key] = value
        n_params = sum(s.is_param for s in self.specs)
        return schema.derive(skeleton=skeleton, add=tuple(new_specs), shared=shared,
                             next_pid=schema.next_pid + n_params)

    def _absolute(self, spec: TensorSpec, base_pid: int) -> TensorSpec:
        paths = tuple(f"{self.path}.{p}" for p in spec.paths)
        pid = None if spec.pid is None else base_pid + spec.pid
        return dataclasses.replace(spec, key=paths[0], paths=paths, pid=pid)

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        for spec, value in zip(self.specs, self.values):
            if spec.leaf:
                key = f"{self.path}.{spec.key}"
                own = m.own.get(key)
                leaves[key] = (recipient_copy(value, m.batch_shape, spec.requires_grad)
                               if own is None else own)
        return leaves

    def describe(self) -> str:
        n = sum(s.is_param for s in self.specs)
        return f"add_module {self.path} ({type(self.skeleton).__name__}, {n} params)"


def _shape(t: torch.Tensor) -> str:
    return "[" + "x".join(map(str, t.shape)) + " " + str(t.dtype).replace("torch.", "") + "]"
