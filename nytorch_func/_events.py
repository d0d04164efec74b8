"""Events: frozen records of one metadata change, mapping schema version k to version k+1.

Each event knows ``apply(schema) -> schema`` (pure: builds the next version, validating
everything first, so a failing event changes nothing) and ``migrate(leaves, batch_shape) ->
leaves`` (the recipient side of the change: what another particle of the species gets when it
is touched). The initiator side (an added parameter or module is *the object itself*) is
realised by the public event functions in ``_edit.py``, which hold the initiator's objects;
events keep only snapshots, so touching later never depends on what happened to the initiator.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ._config import ParamConfig
from ._errors import SchemaError
from ._schema import Schema, TensorSpec, copy_path, split_path, to_meta

__all__ = ["Event", "AddParam", "DelParam", "AddBuffer", "DelBuffer", "AddModule", "DelModule",
           "SetNone", "Configure", "ConfigureBuffer", "ResetSpec", "BUFFER_POLICIES"]

BUFFER_POLICIES = ("keep", "mean", "reset")

Leaves = dict[str, torch.Tensor]


def broadcast(t: torch.Tensor, batch_shape: tuple[int, ...], *, copy: bool) -> torch.Tensor:
    """``t`` for a particle with ``batch_shape``: cloned (``copy``) or viewed along batch dims."""
    if batch_shape:
        t = t.expand(*batch_shape, *t.shape)
        return t.clone() if copy else t
    return t.clone() if copy else t


def fresh_copy(t: torch.Tensor, batch_shape: tuple[int, ...], requires_grad: bool) -> torch.Tensor:
    out = broadcast(t.detach(), batch_shape, copy=True)
    return out.requires_grad_(True) if requires_grad and out.is_floating_point() else out


def _next_schema(schema: Schema, *, skeleton: nn.Module | None = None,
                 specs: tuple[TensorSpec, ...] | None = None,
                 shared: dict[str, torch.Tensor] | None = None,
                 next_pid: int | None = None) -> Schema:
    return Schema(schema.species, schema.version + 1,
                  schema.skeleton if skeleton is None else skeleton,
                  schema.specs if specs is None else specs,
                  schema.shared if shared is None else shared,
                  schema.next_pid if next_pid is None else next_pid)


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
    parent = schema.module_at(parent_path)
    if parent is None:
        raise SchemaError(f"{what}: no module {parent_path!r} to hold {name!r} in version "
                          f"{schema.version}; add the module first (nf.add_module)")
    slot = getattr(parent, _SLOTS[kind])
    if name in slot and slot[name] is None:
        return parent_path, name, parent
    if name in parent._parameters or name in parent._buffers or name in parent._modules:
        raise SchemaError(f"{what}: {path!r} already exists in version {schema.version}; delete it "
                          "first or choose another name")
    if hasattr(parent, name):
        raise SchemaError(f"{what}: {path!r} would hide the attribute {name!r} of "
                          f"{type(parent).__name__}; choose another name")
    return parent_path, name, parent


# removal shared by delete / set-None ------------------------------------------------------------

def _drop_paths(schema: Schema, gone: set[str]) -> tuple[tuple[TensorSpec, ...], dict, dict[str, str | None]]:
    """Specs and shared tensors without ``gone`` paths, plus ``{old_key: new_key or None}``."""
    specs, shared, moves = [], dict(schema.shared), {}
    for spec in schema.specs:
        keep = tuple(p for p in spec.paths if p not in gone)
        if keep == spec.paths:
            specs.append(spec)
            continue
        if not keep:
            moves[spec.key] = None
            shared.pop(spec.key, None)
            continue
        specs.append(dataclasses.replace(spec, key=keep[0], paths=keep))
        moves[spec.key] = keep[0]
        if spec.key in shared:
            shared[keep[0]] = shared.pop(spec.key)
    return tuple(specs), shared, moves


def _apply_moves(leaves: Leaves, moves: dict[str, str | None]) -> Leaves:
    out = dict(leaves)
    for old, new in moves.items():
        if old in out:
            value = out.pop(old)
            if new is not None:
                out[new] = value
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Event:
    """Base class of the metadata events."""

    kind: ClassVar[str] = "event"

    def apply(self, schema: Schema) -> Schema:  # pragma: no cover - abstract
        raise NotImplementedError

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind(self, schema: Schema) -> "Event":
        """Record what ``migrate`` needs to know of the version this event follows."""
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class AddParam(Event):
    """Add a parameter: initiator keeps its object, recipients get a clone of the snapshot."""

    path: str
    snapshot: torch.Tensor
    config: ParamConfig = ParamConfig()
    requires_grad: bool = True
    kind: ClassVar[str] = "add_param"

    def apply(self, schema: Schema) -> Schema:
        parent_path, name, _ = _check_free(schema, self.path, "add_param")
        skeleton, parent = copy_path(schema.skeleton, parent_path)
        parent.register_parameter(name, nn.Parameter(to_meta(self.snapshot),
                                                     requires_grad=self.requires_grad))
        spec = dataclasses.replace(TensorSpec.of(self.path, "param", self.snapshot, pid=schema.next_pid,
                                                 config=self.config), requires_grad=self.requires_grad)
        shared = dict(schema.shared)
        if self.config.shared:
            shared[self.path] = nn.Parameter(self.snapshot, requires_grad=self.requires_grad)
        return _next_schema(schema, skeleton=skeleton, specs=schema.specs + (spec,),
                            shared=shared, next_pid=schema.next_pid + 1)

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:
        if self.config.shared:
            return leaves
        return {**leaves, self.path: fresh_copy(self.snapshot, batch_shape, self.requires_grad)}

    def describe(self) -> str:
        return f"add_param {self.path} {_shape(self.snapshot)} {self.config}"


@dataclasses.dataclass(frozen=True, eq=False)
class AddBuffer(Event):
    """Add a buffer: initiator and recipients hold the same tensor object (the seed's rule)."""

    path: str
    tensor: torch.Tensor
    state: bool = True
    persistent: bool = True
    kind: ClassVar[str] = "add_buffer"

    def apply(self, schema: Schema) -> Schema:
        parent_path, name, _ = _check_free(schema, self.path, "add_buffer", "buffer")
        skeleton, parent = copy_path(schema.skeleton, parent_path)
        parent.register_buffer(name, to_meta(self.tensor), persistent=self.persistent)
        spec = TensorSpec.of(self.path, "buffer", self.tensor, state=self.state,
                             persistent=self.persistent)
        shared = dict(schema.shared)
        if not self.state:
            shared[self.path] = self.tensor
        return _next_schema(schema, skeleton=skeleton, specs=schema.specs + (spec,), shared=shared)

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:
        if not self.state:
            return leaves
        return {**leaves, self.path: broadcast(self.tensor, batch_shape, copy=False)}

    def describe(self) -> str:
        how = "state" if self.state else "shared"
        return f"add_buffer {self.path} {_shape(self.tensor)} {how}"


@dataclasses.dataclass(frozen=True, eq=False)
class _Removal(Event):
    path: str

    def _target(self, schema: Schema) -> tuple[str, nn.Module]:
        raise NotImplementedError

    def _edit(self, parent: nn.Module, name: str) -> None:
        raise NotImplementedError

    def _gone(self, schema: Schema) -> set[str]:
        raise NotImplementedError

    def apply(self, schema: Schema) -> Schema:
        gone = self._gone(schema)
        parent_path, name = split_path(self.path)
        skeleton, parent = copy_path(schema.skeleton, parent_path)
        self._edit(parent, name)
        specs, shared, _ = _drop_paths(schema, gone)
        return _next_schema(schema, skeleton=skeleton, specs=specs, shared=shared)

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:
        return _apply_moves(leaves, self._moves)

    def bind(self, schema: Schema) -> "_Removal":
        """Record the key moves of this removal (computed against the version it applies to)."""
        _, _, moves = _drop_paths(schema, self._gone(schema))
        object.__setattr__(self, "_moves", moves)
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class DelParam(_Removal):
    kind: ClassVar[str] = "del_param"

    def _gone(self, schema: Schema) -> set[str]:
        schema.spec(self.path, kind="param", what="del_param")
        return {self.path}

    def _edit(self, parent: nn.Module, name: str) -> None:
        delattr(parent, name)

    def describe(self) -> str:
        return f"del_param {self.path}"


@dataclasses.dataclass(frozen=True, eq=False)
class DelBuffer(_Removal):
    kind: ClassVar[str] = "del_buffer"

    def _gone(self, schema: Schema) -> set[str]:
        schema.spec(self.path, kind="buffer", what="del_buffer")
        return {self.path}

    def _edit(self, parent: nn.Module, name: str) -> None:
        delattr(parent, name)

    def describe(self) -> str:
        return f"del_buffer {self.path}"


def _module_paths_gone(schema: Schema, path: str, what: str) -> set[str]:
    parent_path, name = split_path(path)
    parent = schema.module_at(parent_path)
    if parent is None or parent._modules.get(name) is None:
        known = [m for m in schema.module_paths() if m]
        from ._schema import _suggest

        raise SchemaError(f"{what}: no submodule at path {path!r} in version "
                          f"{schema.version}{_suggest(path, known)}")
    prefix = path + "."
    return {p for s in schema.specs for p in s.paths if p.startswith(prefix)}


@dataclasses.dataclass(frozen=True, eq=False)
class DelModule(_Removal):
    kind: ClassVar[str] = "del_module"

    def _gone(self, schema: Schema) -> set[str]:
        return _module_paths_gone(schema, self.path, "del_module")

    def _edit(self, parent: nn.Module, name: str) -> None:
        delattr(parent, name)

    def describe(self) -> str:
        return f"del_module {self.path}"


@dataclasses.dataclass(frozen=True, eq=False)
class SetNone(_Removal):
    """Set a parameter or submodule to ``None`` (e.g. drop a Linear's bias)."""

    kind: ClassVar[str] = "set_none"

    def _gone(self, schema: Schema) -> set[str]:
        spec = schema.by_path.get(self.path)
        if spec is not None:
            if spec.kind != "param":
                raise SchemaError(f"set_none: {self.path!r} is a buffer; use nf.del_buffer")
            return {self.path}
        return _module_paths_gone(schema, self.path, "set_none")

    def _edit(self, parent: nn.Module, name: str) -> None:
        if name in parent._parameters:
            parent._parameters[name] = None
        else:
            parent._modules[name] = None

    def describe(self) -> str:
        return f"set_none {self.path}"


@dataclasses.dataclass(frozen=True, eq=False)
class AddModule(Event):
    """Add a submodule: recipients get clones of the snapshot of its tensors."""

    path: str
    skeleton: nn.Module  # the added module on the meta device
    specs: tuple[TensorSpec, ...]  # relative paths, pids counted from 0
    values: tuple[torch.Tensor, ...]  # snapshots, in ``specs`` order
    kind: ClassVar[str] = "add_module"

    def apply(self, schema: Schema) -> Schema:
        parent_path, name, _ = _check_free(schema, self.path, "add_module", "module")
        skeleton, parent = copy_path(schema.skeleton, parent_path)
        parent.add_module(name, self.skeleton)
        new_specs, shared = [], dict(schema.shared)
        for spec, value in zip(self.specs, self.values):
            spec = self._absolute(spec, schema.next_pid)
            new_specs.append(spec)
            if not spec.leaf:
                shared[spec.key] = value
        n_params = sum(s.is_param for s in self.specs)
        return _next_schema(schema, skeleton=skeleton, specs=schema.specs + tuple(new_specs),
                            shared=shared, next_pid=schema.next_pid + n_params)

    def _absolute(self, spec: TensorSpec, base_pid: int) -> TensorSpec:
        paths = tuple(f"{self.path}.{p}" for p in spec.paths)
        pid = None if spec.pid is None else base_pid + spec.pid
        return dataclasses.replace(spec, key=paths[0], paths=paths, pid=pid)

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:
        out = dict(leaves)
        for spec, value in zip(self.specs, self.values):
            if spec.leaf:
                out[f"{self.path}.{spec.key}"] = fresh_copy(value, batch_shape, spec.requires_grad)
        return out

    def describe(self) -> str:
        n = sum(s.is_param for s in self.specs)
        return f"add_module {self.path} ({type(self.skeleton).__name__}, {n} params)"


@dataclasses.dataclass(frozen=True, eq=False)
class Configure(Event):
    """Change the configs of the parameters under a path (operational, clone, attributes)."""

    path: str
    configs: tuple[tuple[str, ParamConfig], ...]  # key -> new config
    to_shared: tuple[tuple[str, torch.Tensor], ...] = ()  # leaf -> shared: initiator snapshots
    kind: ClassVar[str] = "configure"

    def apply(self, schema: Schema) -> Schema:
        new = dict(self.configs)
        shared = dict(schema.shared)
        to_shared = dict(self.to_shared)
        specs = []
        for spec in schema.specs:
            if spec.key in new:
                before, spec = spec, dataclasses.replace(spec, config=new[spec.key])
                if before.leaf and not spec.leaf:
                    shared[spec.key] = to_shared[spec.key]
            specs.append(spec)
        return _next_schema(schema, specs=tuple(specs), shared=shared)

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:
        out = dict(leaves)
        for key, _ in self.to_shared:
            out.pop(key, None)
        for key, value in self._to_leaf:
            out[key] = fresh_copy(value, batch_shape, value.requires_grad)
        return out

    def bind(self, schema: Schema) -> "Configure":
        """Record which shared parameters become per-particle, with a snapshot of their value.

        A snapshot, not the shared tensor itself: that tensor may still change in place after
        the event (it is the old versions' shared value), and touch must not depend on when it
        runs.
        """
        new = dict(self.configs)
        to_leaf = tuple((s.key, _snapshot(schema.shared[s.key])) for s in schema.specs
                        if s.key in new and not s.leaf and not new[s.key].shared)
        object.__setattr__(self, "_to_leaf", to_leaf)
        return self

    def describe(self) -> str:
        changed = ", ".join(f"{k}: {c}" for k, c in self.configs)
        return f"configure {self.path or '<all>'} -> {changed}"


@dataclasses.dataclass(frozen=True, slots=True)
class ResetSpec(TensorSpec):
    """The spec of a buffer with policy ``"reset"``: it also carries the value to reset to."""

    reset: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True, eq=False)
class ConfigureBuffer(Event):
    """Change what reductions over particles (``nf.mean``, soups, crossover) do with a buffer.

    ``policy``: ``"keep"`` takes the first operand's value, ``"mean"`` averages floating-point
    values, ``"reset"`` gives ``value``, the snapshot recorded when the policy was set (the
    buffer's spec then becomes a :class:`ResetSpec` carrying it, so every later version has it).
    Leaves are untouched: only the schema changes.
    """

    path: str
    policy: str
    value: torch.Tensor | None = None  # "reset" only: the value reductions give the buffer
    kind: ClassVar[str] = "configure_buffer"

    def apply(self, schema: Schema) -> Schema:
        spec = schema.spec(self.path, kind="buffer", what="configure_buffer")
        if self.policy not in BUFFER_POLICIES:
            raise SchemaError(f"configure_buffer: policy for {self.path!r} must be one of "
                              f"{BUFFER_POLICIES}, got {self.policy!r}")
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(TensorSpec)}
        fields["policy"] = self.policy
        if self.policy == "reset":
            v = self.value
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != spec.shape or v.dtype != spec.dtype:
                raise SchemaError(
                    f"configure_buffer: policy 'reset' needs a value for {self.path!r} of shape "
                    f"{spec.shape} and dtype {spec.dtype}, got "
                    f"{_shape(v) if isinstance(v, torch.Tensor) else type(v).__name__}")
            new_spec: TensorSpec = ResetSpec(**fields, reset=v)
        else:
            new_spec = TensorSpec(**fields)
        specs = tuple(new_spec if s is spec else s for s in schema.specs)
        return _next_schema(schema, specs=specs)

    def migrate(self, leaves: Leaves, batch_shape: tuple[int, ...] = ()) -> Leaves:
        return leaves

    def describe(self) -> str:
        return f"configure_buffer {self.path} policy={self.policy}"


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t`` that keeps its requires_grad flag (fresh_copy reads it)."""
    return t.detach().clone().requires_grad_(t.requires_grad)


def _shape(t: torch.Tensor) -> str:
    return "[" + "x".join(map(str, t.shape)) + " " + str(t.dtype).replace("torch.", "") + "]"
