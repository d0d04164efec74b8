"""Events on the children of a ``Sequential`` or ``ModuleList``: insert at an index and delete
an index, renumbering the later children as torch's ``insert`` and ``del seq[i]`` do.

Keys stay contiguous (``"0"``, ``"1"``, ...), so ``nf.to_module`` gives an ordinary container and
``m.blocks[0]`` works after a deletion. Parameter ids survive renumbering: a parameter that
moves from ``"3.weight"`` to ``"4.weight"`` keeps its id, its config and, in every particle, its
values (touch renames the leaf; it copies nothing).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ._errors import SchemaError
from ._events import (DelModule, Event, Leaves, Migration, drop_paths, module_paths_gone,
                      recipient_copy, record)
from ._schema import Schema, TensorSpec, copy_path, split_path

__all__ = ["InsertModules", "DelChild", "is_indexed", "container_at"]

_INDEXED = (nn.Sequential, nn.ModuleList)


def is_indexed(module: nn.Module | None) -> bool:
    """Whether ``module`` numbers its children (``Sequential``, ``ModuleList``)."""
    return isinstance(module, _INDEXED)


def container_at(schema: Schema, path: str, what: str) -> nn.Module:
    """The ``Sequential``/``ModuleList`` at ``path`` in ``schema``, or a SchemaError."""
    module = schema.module_at(path)
    if not is_indexed(module):
        got = "nothing" if module is None else type(module).__name__
        raise SchemaError(f"{what}: {path!r} is {got} in version {schema.version}; only the "
                          "children of an nn.Sequential or nn.ModuleList are numbered (use "
                          "nf.add_module / nf.del_module for other modules)")
    return module  # type: ignore[return-value]


def _shift(path: str, container: str, start: int, by: int) -> str:
    """``path`` with the child index under ``container`` shifted by ``by`` if it is >= start."""
    prefix = f"{container}." if container else ""
    if not path.startswith(prefix):
        return path
    head, dot, rest = path[len(prefix):].partition(".")
    if not head.isdigit() or int(head) < start:
        return path
    return f"{prefix}{int(head) + by}{dot}{rest}"


def _renamed(schema: Schema, container: str, start: int, by: int,
             skip: frozenset[str] = frozenset()) -> dict[str, TensorSpec]:
    """``{old key: spec with shifted paths}`` for every spec with a path that moves."""
    out = {}
    for spec in schema.specs:
        if spec.key in skip:
            continue
        paths = tuple(_shift(p, container, start, by) for p in spec.paths)
        if paths != spec.paths:
            out[spec.key] = dataclasses.replace(spec, key=paths[0], paths=paths)
    return out


def _renumbered(container: nn.Module, children: list[nn.Module]) -> None:
    """Give ``container`` (a fresh shallow copy) exactly ``children``, keyed 0..n-1."""
    container.__dict__["_modules"] = {str(i): child for i, child in enumerate(children)}


@record
class InsertModules(Event):
    """Insert modules into a Sequential/ModuleList at ``index``; later children move up.

    Recipients get copies of the snapshots of the inserted modules' tensors, as with
    :class:`~nytorch_func._events.AddModule`; every other leaf is renamed, not copied.
    """

    container: str
    index: int
    skeletons: tuple[nn.Module, ...]  # the inserted modules on the meta device
    specs: tuple[tuple[TensorSpec, ...], ...]  # per module: relative paths, pids from 0
    values: tuple[tuple[torch.Tensor, ...], ...]  # per module: snapshots in specs order
    kind: ClassVar[str] = "insert_module"

    def apply(self, schema: Schema) -> Schema:
        parent = container_at(schema, self.container, "insert_module")
        n = len(parent._modules)
        if not 0 <= self.index <= n:
            raise SchemaError(f"insert_module: index {self.index} is outside 0..{n} for "
                              f"{self.container or '<root>'!r} ({type(parent).__name__} of {n})")
        skeleton, container = copy_path(schema.skeleton, self.container)
        children = list(container._modules.values())
        children[self.index:self.index] = list(self.skeletons)
        _renumbered(container, children)
        replace = _renamed(schema, self.container, self.index, len(self.skeletons))
        add, shared, pid = [], None, schema.next_pid
        for k, (specs, values) in enumerate(zip(self.specs, self.values)):
            where = self._path(k)
            for spec, value in zip(specs, values):
                paths = tuple(f"{where}.{p}" for p in spec.paths)
                spec = dataclasses.replace(spec, key=paths[0], paths=paths,
                                           pid=None if spec.pid is None else pid + spec.pid)
                add.append(spec)
                if not spec.leaf:
                    shared = dict(schema.shared) if shared is None else shared
                    shared[spec.key] = value
            pid += sum(s.is_param for s in specs)
        if replace:
            shared = dict(schema.shared) if shared is None else shared
            for old, spec in replace.items():
                if old in shared:
                    shared[spec.key] = shared.pop(old)
        return schema.derive(skeleton=skeleton, replace=replace, add=tuple(add), shared=shared,
                             next_pid=pid)

    def _path(self, k: int) -> str:
        i = self.index + k
        return f"{self.container}.{i}" if self.container else str(i)

    def _new(self) -> dict[str, tuple[TensorSpec, torch.Tensor]]:
        out = {}
        for k, (specs, values) in enumerate(zip(self.specs, self.values)):
            for spec, value in zip(specs, values):
                if spec.leaf:
                    out[f"{self._path(k)}.{spec.key}"] = (spec, value)
        return out

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...] | None:
        if self._new():
            return None
        return _select_shifted(before, after, self.container, self.index + len(self.skeletons),
                               -len(self.skeletons))

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        new = self._new()
        out = {}
        shift = -len(self.skeletons)
        start = self.index + len(self.skeletons)
        for key in m.after.leaf_keys:
            if key in new:
                spec, value = new[key]
                own = m.own.get(key)
                out[key] = (recipient_copy(value, m.batch_shape, spec.requires_grad)
                            if own is None else own)
            else:
                out[key] = leaves[_old_key(m.before, key, self.container, start, shift)]
        return out

    def describe(self) -> str:
        names = ", ".join(type(s).__name__ for s in self.skeletons)
        n = sum(s.is_param for specs in self.specs for s in specs)
        return (f"insert_module {self.container or '<root>'}[{self.index}] ({names}, "
                f"{n} params)")


def _old_key(before: Schema, key: str, container: str, start: int, shift: int) -> str:
    """The key in ``before`` of the leaf now at ``key`` (children from ``start`` moved)."""
    return before.by_path[_shift(key, container, start, shift)].key


def _select_shifted(before: Schema, after: Schema, container: str, start: int,
                    shift: int) -> tuple[int, ...]:
    index = before.leaf_index
    return tuple([index[_old_key(before, k, container, start, shift)] for k in after.leaf_keys])


@record
class DelChild(DelModule):
    """Delete the child ``path`` of a Sequential/ModuleList; the later children move down.

    As ``del seq[i]`` in torch: keys stay contiguous, so ``seq[0]`` works after deleting
    ``"0"``. Parameters of the moved children keep their ids and values.
    """

    kind: ClassVar[str] = "del_child"

    def _parts(self) -> tuple[str, int]:
        container, name = split_path(self.path)
        return container, int(name)

    def apply(self, schema: Schema) -> Schema:
        container_path, index = self._parts()
        container_at(schema, container_path, "del_module")
        gone = module_paths_gone(schema, self.path, "del_module")
        skeleton, container = copy_path(schema.skeleton, container_path)
        children = list(container._modules.values())
        del children[index]
        _renumbered(container, children)
        drop, replace, shared = drop_paths(schema, gone)
        shifted = _renamed(schema, container_path, index + 1, -1, skip=frozenset(drop))
        for old, spec in replace.items():  # tied aliases that stay may move as well
            paths = tuple(_shift(p, container_path, index + 1, -1) for p in spec.paths)
            shifted[old] = dataclasses.replace(spec, key=paths[0], paths=paths)
        if shifted:
            shared = dict(shared)
            for old, spec in shifted.items():
                renamed_from = replace[old].key if old in replace else old
                if renamed_from in shared:
                    shared[spec.key] = shared.pop(renamed_from)
        return schema.derive(skeleton=skeleton, drop=drop, replace=shifted,
                             shared=None if shared is schema.shared else shared)

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...]:
        container_path, index = self._parts()
        by_path = before.by_path
        leaf_index = before.leaf_index
        out = []
        for spec in after.leaf_specs:
            old = _shift(spec.key, container_path, index, 1)
            out.append(leaf_index[by_path[old].key])
        return tuple(out)
