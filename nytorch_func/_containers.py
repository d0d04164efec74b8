"""Events on the children of a ``Sequential`` or ``ModuleList``: insert at an index and delete
an index, renumbering the later children as torch's ``insert`` and ``del seq[i]`` do.

Numbered keys stay contiguous (``"0"``, ``"1"``, ...), so ``nf.to_module`` gives an ordinary
container and ``m.blocks[0]`` works after a deletion; named children (an ``OrderedDict``
Sequential, a ``"head"`` added by name) keep their names and only their place changes. Parameter ids survive renumbering: a parameter that
moves from ``"3.weight"`` to ``"4.weight"`` keeps its id, its config and, in every particle, its
values (touch renames the leaf; it copies nothing).
"""

from __future__ import annotations

import copy
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
    module = schema._module_at(path)
    if not is_indexed(module):
        got = "nothing" if module is None else type(module).__name__
        raise SchemaError(f"{what}: {path!r} is {got} in version {schema.version}; only the "
                          "children of an nn.Sequential or nn.ModuleList are numbered (use "
                          "nf.add_module / nf.del_module for other modules)")
    return module  # type: ignore[return-value]


def _rekeyed(keys: list[str | None]) -> list[str]:
    """The keys of a container's children, in order, after an insertion or deletion.

    ``None`` marks an inserted child. Numbered children (and inserted ones) are keyed by their
    position, as torch's ``insert`` and ``del seq[i]`` renumber them; named children (an
    ``OrderedDict`` Sequential, ``add_module("head", ...)``) keep their names, so code that
    reaches them by name still works.
    """
    return [str(i) if k is None or k.isdigit() else k for i, k in enumerate(keys)]


def _moves(old: list[str], new: list[str]) -> dict[str, str]:
    """``{old key: new key}`` of the children that kept their place in order but not their key."""
    return {a: b for a, b in zip(old, new) if a != b}


def _moved(path: str, container: str, moves: dict[str, str]) -> str:
    """``path`` with its child key under ``container`` replaced as ``moves`` says."""
    prefix = f"{container}." if container else ""
    if not moves or not path.startswith(prefix):
        return path
    head, dot, rest = path[len(prefix):].partition(".")
    new = moves.get(head)
    return path if new is None else f"{prefix}{new}{dot}{rest}"


def _renamed(schema: Schema, container: str, moves: dict[str, str],
             skip: frozenset[str] = frozenset()) -> dict[str, TensorSpec]:
    """``{old key: spec with moved paths}`` for every spec with a path that moves."""
    out: dict[str, TensorSpec] = {}
    if not moves:
        return out
    for spec in schema.specs:
        if spec.key in skip:
            continue
        paths = tuple(_moved(p, container, moves) for p in spec.paths)
        if paths != spec.paths:
            out[spec.key] = dataclasses.replace(spec, key=paths[0], paths=paths)
    return out


def _keys(schema: Schema, container: str) -> list[str]:
    return list(schema._module_at(container)._modules)  # type: ignore[union-attr]


def _inserted(keys: list[str], index: int, n: int) -> tuple[list[str], dict[str, str]]:
    """``(new keys, moves)`` after inserting ``n`` children at position ``index``."""
    new = _rekeyed([*keys[:index], *([None] * n), *keys[index:]])
    return new, _moves(keys, [*new[:index], *new[index + n:]])


def _deleted(keys: list[str], name: str) -> tuple[list[str], dict[str, str]]:
    """``(new keys, moves)`` after deleting the child ``name``."""
    rest = [k for k in keys if k != name]
    new = _rekeyed(list(rest))
    return new, _moves(rest, new)


def _inverse(moves: dict[str, str]) -> dict[str, str]:
    return {b: a for a, b in moves.items()}


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
    label: str = ""  # what made it, for nf.history (e.g. "deepen 1")
    kind: ClassVar[str] = "insert_module"

    def apply(self, schema: Schema) -> Schema:
        parent = container_at(schema, self.container, "insert_module")
        n = len(parent._modules)
        if not 0 <= self.index <= n:
            raise SchemaError(f"insert_module: index {self.index} is outside 0..{n} for "
                              f"{self.container or '<root>'!r} ({type(parent).__name__} of {n})")
        keys = list(parent._modules)
        new_keys, moves = _inserted(keys, self.index, len(self.skeletons))
        skeleton, container = copy_path(schema._skeleton, self.container)
        children = list(container._modules.values())
        children[self.index:self.index] = copy.deepcopy(list(self.skeletons))  # (see AddModule)
        container.__dict__["_modules"] = dict(zip(new_keys, children))
        replace = _renamed(schema, self.container, moves)
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
        if replace:  # moved all at once: "1.w" -> "2.w" must not overwrite "2.w" before it moves
            shared = dict(schema.shared) if shared is None else shared
            shared.update({spec.key: shared.pop(old) for old, spec in replace.items()
                           if old in shared})
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
        back = self._back(before)
        index = before.leaf_index
        return tuple([index[_old_key(before, k, self.container, back)] for k in after.leaf_keys])

    def _back(self, before: Schema) -> dict[str, str]:
        """``{new child key: old child key}`` of the children that moved."""
        return _inverse(_inserted(_keys(before, self.container), self.index,
                                  len(self.skeletons))[1])

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        new = self._new()
        out = {}
        back = self._back(m.before)
        for key in m.after.leaf_keys:
            if key in new:
                spec, value = new[key]
                own = m.own.get(key)
                out[key] = (recipient_copy(value, m.batch_shape, spec.requires_grad)
                            if own is None else own)
            else:
                out[key] = leaves[_old_key(m.before, key, self.container, back)]
        return out

    def describe(self) -> str:
        names = ", ".join(type(s).__name__ for s in self.skeletons)
        n = sum(s.is_param for specs in self.specs for s in specs)
        where = f"{self.container or '<root>'}[{self.index}]"
        if self.label:
            return f"{self.label}: {names} at {where} ({n} params)"
        return f"insert_module {where} ({names}, {n} params)"


def _old_key(before: Schema, key: str, container: str, back: dict[str, str]) -> str:
    """The key in ``before`` of the leaf now at ``key`` (``back``: new child key -> old)."""
    return before.by_path[_moved(key, container, back)].key


@record
class DelChild(DelModule):
    """Delete the child ``path`` of a Sequential/ModuleList; the later children move down.

    As ``del seq[i]`` in torch: numbered keys stay contiguous, so ``seq[0]`` works after deleting
    ``"0"``; named children keep their names. Parameters of the moved children keep their ids
    and values.
    """

    kind: ClassVar[str] = "del_child"

    def apply(self, schema: Schema) -> Schema:
        container_path, name = split_path(self.path)
        container_at(schema, container_path, "del_module")
        gone = module_paths_gone(schema, self.path, "del_module")
        new_keys, moves = _deleted(_keys(schema, container_path), name)
        skeleton, container = copy_path(schema._skeleton, container_path)
        children = [c for k, c in container._modules.items() if k != name]
        container.__dict__["_modules"] = dict(zip(new_keys, children))
        drop, replace, shared = drop_paths(schema, gone)
        shifted = _renamed(schema, container_path, moves, skip=frozenset(drop))
        for old, spec in replace.items():  # tied aliases that stay may move as well
            paths = tuple(_moved(p, container_path, moves) for p in spec.paths)
            shifted[old] = dataclasses.replace(spec, key=paths[0], paths=paths)
        if shifted:  # moved all at once, as in InsertModules.apply
            shared = dict(shared)
            moved = {}
            for old, spec in shifted.items():
                renamed_from = replace[old].key if old in replace else old
                if renamed_from in shared:
                    moved[spec.key] = shared.pop(renamed_from)
            shared.update(moved)
        return schema.derive(skeleton=skeleton, drop=drop, replace=shifted,
                             shared=None if shared is schema.shared else shared)

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...]:
        container_path, name = split_path(self.path)
        back = _inverse(_deleted(_keys(before, container_path), name)[1])
        by_path = before.by_path
        leaf_index = before.leaf_index
        return tuple([leaf_index[by_path[_moved(spec.key, container_path, back)].key]
                      for spec in after.leaf_specs])
