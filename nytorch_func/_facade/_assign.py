"""Structural edits through a bound NytoModule's attributes, as core events.

Assigning, registering or deleting a parameter, buffer or submodule follows torch's rules for
what may replace what (and nytorch's warnings), then becomes exactly one core event: a
replacement is one ``Batch`` (removal and addition, validated together before anything is
committed), a second name for a tensor or module already in the particle is a ``Tie``. Only
after the event is committed does the tree change; then the new version is written back.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .. import _edit
from .._errors import SchemaError, VersionError
from .._events import DelBuffer, DelModule, DelParam, SetNone
from .._sharing import Tie
from ._handle import BUILDING, LOCKED, TAGS, NytoModuleBase
from ._sync import WHAT, commit_steps, current
from ._write import refresh_flat

__all__ = ["kind_at", "plain_set", "put", "remove", "set_none", "warn_if_circular", "warn_if_shared",
           "AttributeExistsError", "CannotAssignError", "CIRCULAR", "SHARED_MODULE"]

CIRCULAR = "circular references to the root module"
SHARED_MODULE = "modules from different particles refer to the same module"
_REMOVAL = {"param": DelParam, "buffer": DelBuffer, "module": DelModule,
            "param_none": DelParam, "module_none": DelModule}


class AttributeExistsError(SchemaError, KeyError):
    """A name holds a member of another kind that torch does not let this one replace
    (a ``KeyError`` there: ``register_buffer`` over a parameter or submodule)."""

    __str__ = Exception.__str__


class CannotAssignError(SchemaError, TypeError):
    """A value of the wrong kind for a name (a ``TypeError`` in torch: a module or tensor
    assigned to a parameter, a non-tensor to a buffer)."""


def kind_at(m: nn.Module, name: str) -> str | None:
    """``"param"``, ``"buffer"``, ``"module"`` (``..._none`` for a None entry) or None."""
    d = m.__dict__
    for kind, dn in (("param", "_parameters"), ("buffer", "_buffers"), ("module", "_modules")):
        entries = d[dn]
        if name in entries:
            return kind if entries[name] is not None else kind + "_none"
    return None


def plain_set(m: nn.Module, name: str, value: Any, kind: str, persistent: bool = True) -> None:
    """Put ``value`` at ``name`` as a param/buffer/module, bypassing every override."""
    d = m.__dict__
    for dn in ("_parameters", "_buffers", "_modules"):
        d[dn].pop(name, None)
    d.pop(name, None)
    d["_non_persistent_buffers_set"].discard(name)
    if kind == "param":
        d["_parameters"][name] = value
    elif kind == "buffer":
        d["_buffers"][name] = value
        if not persistent:
            d["_non_persistent_buffers_set"].add(name)
    else:
        d["_modules"][name] = value
    refresh_flat(m)


def _entry(m: nn.Module, name: str) -> Any:
    d = m.__dict__
    return d["_parameters"].get(name, d["_modules"].get(name))


def _refuse_kind_change(m: nn.Module, name: str, existing: str | None, kind: str) -> None:
    """torch's (and nytorch's) refusals: no parameter becomes a buffer or a module, no module a
    buffer, whether the old entry holds a value or None."""
    old = None if existing is None else existing.removesuffix("_none")
    if old == "param" and kind == "module":
        raise CannotAssignError(f"cannot assign a module as parameter {name!r} of "
                                f"{type(m).__name__} (torch.nn.Parameter or None expected); "
                                f"delete it first (del module.{name})")
    if (old == "param" and kind == "buffer") or (old == "module" and kind == "buffer"):
        noun = "parameter" if old == "param" else "submodule"
        raise AttributeExistsError(f"attribute {name!r} already exists as a {noun} of "
                                   f"{type(m).__name__}; delete it first (del module.{name}) "
                                   "to register a buffer under that name")


def warn_if_circular(m: nn.Module, name: str, value: nn.Module) -> bool:
    """Warn (as nytorch) and return True when ``value`` contains ``m``: registering it would
    put a module inside itself. The caller then keeps it as a plain attribute."""
    if not any(x is m for x in value.modules()):
        return False
    warnings.warn(f"{CIRCULAR}: {type(value).__name__} contains {type(m).__name__}, so "
                  f"{name!r} is kept as a plain attribute, not a submodule (a particle is a tree)",
                  UserWarning, stacklevel=4)
    return True


def _alias(value: Any, kind: str, p, root: nn.Module, h) -> str | None:
    """The path where ``value`` already sits in this particle, if it does (then: a Tie)."""
    if kind == "param":
        s = p._schema
        for spec, t in zip(s.leaf_specs, p._leaves):
            if t is value and spec.kind == "param":
                return spec.key
        return next((k for k, t in s.shared.items() if t is value and s.by_path[k].is_param), None)
    if kind == "module":
        for path, m in root.named_modules():
            if m is value:
                return path
    return None


def put(m: nn.Module, name: str, value: Any, kind: str, persistent: bool = True) -> None:
    """Put ``value`` (a param, buffer or module) at ``name`` of bound ``m``: one core event."""
    if not isinstance(name, str) or not name or "." in name:
        raise SchemaError(f"{WHAT}: attribute name must be a non-empty string without dots, got "
                          f"{name!r}")
    existing = kind_at(m, name)
    _refuse_kind_change(m, name, existing, kind)
    if existing == kind and kind != "buffer" and _entry(m, name) is value:
        return  # the very object again under its own name: nothing changes (as in nytorch)
    if kind == "module":
        if warn_if_circular(m, name, value):
            if existing in ("param", "buffer", "module", "param_none", "module_none"):
                remove(m, name)
            m.__dict__[name] = value
            return
        warn_if_shared(m, value)
    root, h, path, p, _ = current(m)
    if h.locked:
        raise VersionError(LOCKED)
    full = f"{path}.{name}" if path else name
    what = f"{WHAT}: setting {full!r}"
    if kind == "param" and value.requires_grad and not (value.is_floating_point()
                                                        or value.is_complex()):
        raise SchemaError(f"{what}: only floating point parameters can require grad")
    steps = []
    if existing is not None and existing != kind + "_none":
        steps.append((_REMOVAL[existing](full), {}))
    target = _alias(value, kind, p, root, h)
    if target is not None and target != full and not target.startswith(full + "."):
        steps.append((Tie(full, target), {}))
    elif kind == "param":
        steps.append(_edit.param_addition(full, value, what=what))
    elif kind == "buffer":
        steps.append(_edit.buffer_addition(full, value, persistent=persistent, what=what))
    else:
        steps.append(_edit.module_addition(full, value, share_buffers=True, what=what))
    commit_steps(root, h, p, steps, what, lambda: plain_set(m, name, value, kind, persistent))


def _top(m: nn.Module) -> nn.Module:
    """The outermost unbound NytoModule that ``m`` was put into (``m`` itself if none)."""
    seen = {id(m)}
    while True:
        record = BUILDING.get(m)
        parent = None if record is None or record.parent is None else record.parent()
        if (parent is None or id(parent) in seen
                or not any(c is m for c in parent._modules.values())):
            return m
        seen.add(id(parent))
        m = parent


def warn_if_shared(m: nn.Module, value: nn.Module) -> None:
    """nytorch's warning when a NytoModule inside another particle is put into this one."""
    if not isinstance(value, NytoModuleBase):
        return
    tag, mine = TAGS.get(value), TAGS.get(m)
    if tag is not None:
        foreign = bool(tag[1]) and (mine is None or tag[0] is not mine[0])
    else:
        top = _top(value)
        foreign = top is not value and (mine is not None or top is not _top(m))
    if foreign:
        warnings.warn(SHARED_MODULE, UserWarning, stacklevel=4)


def remove(m: nn.Module, name: str) -> None:
    """Delete the parameter, buffer or submodule ``name`` of bound ``m`` (a None slot too)."""
    existing = kind_at(m, name)
    root, h, path, p, _ = current(m)
    if h.locked:
        raise VersionError(LOCKED)
    full = f"{path}.{name}" if path else name
    commit_steps(root, h, p, [(_REMOVAL[existing](full), {})], f"{WHAT}: deleting {full!r}",
                 lambda: nn.Module.__delattr__(m, name))


def set_none(m: nn.Module, name: str) -> None:
    """``m.name = None`` for a parameter or submodule (a buffer is deleted, its entry None)."""
    existing = kind_at(m, name)
    if existing in ("param_none", "module_none"):
        return
    root, h, path, p, _ = current(m)
    if h.locked:
        raise VersionError(LOCKED)
    full = f"{path}.{name}" if path else name
    event = DelBuffer(full) if existing == "buffer" else SetNone(full)
    after = (lambda: plain_set(m, name, None, "buffer")) if existing == "buffer" else None
    commit_steps(root, h, p, [(event, {})], f"{WHAT}: setting {full!r} to None", after)
