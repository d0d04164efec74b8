"""Events that share objects between names or particles, as nytorch does.

:class:`Tie` gives an existing parameter or submodule a second name (``n.w2 = n.l.weight``):
every particle keeps one tensor under both. :class:`AddModuleSharingBuffers` adds a module whose
buffers every particle holds by reference, as an added buffer is (nytorch gives the recipients
of an added module a shallow copy of it).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ._errors import SchemaError
from ._events import (AddModule, Event, Leaves, Migration, _check_free, broadcast,
                      recipient_copy, record, select_by_path)
from ._schema import Schema, copy_path, split_path

__all__ = ["Tie", "AddModuleSharingBuffers"]


@record
class AddModuleSharingBuffers(AddModule):
    """:class:`AddModule` whose buffers reach recipients by reference, as an added buffer does.

    ``values`` holds snapshots of the parameters and the buffer tensors themselves: every
    particle gets a clone of each parameter and the very buffer objects (nytorch's rule for an
    added module, whose recipients get a shallow copy of it).
    """

    kind: ClassVar[str] = "add_module_sharing_buffers"

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        for spec, value in zip(self.specs, self.values):
            if spec.leaf:
                key = f"{self.path}.{spec.key}"
                own = m.own.get(key)
                if own is not None:
                    leaves[key] = own
                elif spec.kind == "param":
                    leaves[key] = recipient_copy(value, m.batch_shape, spec.requires_grad)
                else:
                    leaves[key] = broadcast(value, m.batch_shape, copy=False)
        return leaves



@record
class Tie(Event):
    """A second name for a parameter or submodule that already exists (weight tying).

    Every particle keeps one tensor under both names (the spec gains a path, the skeleton holds
    the same meta object twice); leaves do not change.
    """

    path: str
    target: str
    kind: ClassVar[str] = "tie"

    def apply(self, schema: Schema) -> Schema:
        spec = schema.by_path.get(self.target)
        prefix = self.target + "."
        if spec is not None:
            if spec.kind != "param":
                raise SchemaError(f"tie: {self.target!r} is a buffer; only parameters and "
                                  "submodules are tied")
            kind = "param"
        else:
            parent_path, name = split_path(self.target)
            parent = schema._module_at(parent_path)
            if parent is None or parent._modules.get(name) is None:
                raise SchemaError(f"tie: no parameter or submodule at {self.target!r} in version "
                                  f"{schema.version}")
            if self.path.startswith(prefix):
                raise SchemaError(f"tie: {self.path!r} would put {self.target!r} inside itself")
            kind = "module"
        parent_path, name, _ = _check_free(schema, self.path, "tie", kind)
        skeleton, parent = copy_path(schema._skeleton, parent_path)
        if kind == "param":
            parent._parameters[name] = skeleton.get_parameter(self.target)
            replace = {spec.key: dataclasses.replace(spec, paths=spec.paths + (self.path,))}
        else:
            parent._modules[name] = skeleton.get_submodule(self.target)
            replace = {s.key: dataclasses.replace(s, paths=s.paths + tuple(
                self.path + p[len(self.target):] for p in s.paths if p.startswith(prefix)))
                for s in schema.specs if any(p.startswith(prefix) for p in s.paths)}
        return schema.derive(skeleton=skeleton, replace=replace)

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...]:
        return select_by_path(before, after)

    def describe(self) -> str:
        return f"tie {self.path} -> {self.target}"
