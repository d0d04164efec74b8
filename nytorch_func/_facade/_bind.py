"""Making a species from a module tree, and finding the particle (handle) of any NytoModule.

The species is made lazily, the first time a NytoModule needs one (a particle operation,
``_version_kernel``, a config call, ...): assignments inside ``__init__`` are plain
construction. It is made from the outermost NytoModule the module was put into, with
:func:`nytorch_func._bridge.new_species` (``from_module``'s steps) given

* the order nytorch gives parameter ids in: a parameter's id follows the moment it joined the
  root's tree (its own registration, or the registration of the module holding it, whichever
  came last), parameters that joined together in ``named_parameters`` order;
* the configs that NytoModule children already set in species of their own.
"""

from __future__ import annotations

from torch import nn

from .._bridge import new_species
from .._config import ParamConfig as CoreConfig
from .._errors import SchemaError, VersionError
from ._handle import BUILDING, ORPHAN, TAGS, NytoModuleBase, ParticleHandle, tag_tree
from ._plan import Plan

__all__ = ["bind", "handle_of", "root_of", "check_tree", "registration_order"]

_DEFAULT = CoreConfig()


def cycle_error(module: nn.Module, root: nn.Module) -> SchemaError:
    return SchemaError(
        f"{type(module).__name__} is inside one of its own submodules (the module tree of "
        f"{type(root).__name__} has a cycle); a particle is a tree: keep back-references out of "
        "it (store them without registering, e.g. in a list or with object.__setattr__)")


def check_tree(root: nn.Module) -> None:
    """SchemaError if a module is inside one of its own submodules (the tree has a cycle)."""
    stack = [(root, frozenset((id(root),)))]
    while stack:
        m, above = stack.pop()
        for c in m._modules.values():
            if c is None:
                continue
            if id(c) in above:
                raise cycle_error(c, root)
            stack.append((c, above | {id(c)}))


def registration_order(root: nn.Module) -> list[str]:
    """Parameter paths of ``root``'s tree in the order nytorch would have given them ids.

    A parameter joined the tree when the last link on its path was registered (links of plain
    modules count as older than any); ties keep ``named_parameters`` order. Empty when nothing
    was recorded (then ids follow ``named_parameters`` order anyway).
    """
    first: dict[int, tuple[tuple[int, int], str]] = {}
    recorded = False
    index = 0
    stack: list[tuple[nn.Module, str, int]] = [(root, "", -1)]
    while stack:
        m, prefix, joined = stack.pop()
        record = BUILDING.get(m) if isinstance(m, NytoModuleBase) else None
        times = {} if record is None else record.times
        recorded = recorded or bool(times)
        for name, p in m._parameters.items():
            if p is not None:
                key = (max(joined, times.get(name, -1)), index)
                index += 1
                if id(p) not in first or key < first[id(p)][0]:
                    first[id(p)] = (key, prefix + name)
        for name, c in reversed(m._modules.items()):
            if c is not None:
                stack.append((c, prefix + name + ".", max(joined, times.get(name, -1))))
    if not recorded:
        return []
    return [path for _, path in sorted(first.values())]


def inherited_configs(root: nn.Module) -> dict[str, CoreConfig]:
    """``{path: config}`` that NytoModules inside ``root`` carry from particles of their own."""
    configs: dict[str, CoreConfig] = {}
    for path, m in root.named_modules():
        tag = TAGS.get(m) if m is not root and isinstance(m, NytoModuleBase) else None
        if tag is None:
            continue
        h, at = tag
        cut = len(at) + 1 if at else 0
        for spec in h.schema.specs_under(at, kind="param"):
            if spec.config != _DEFAULT:
                for p in spec.paths:
                    if not at or p.startswith(at + "."):
                        configs[(path + "." if path else "") + p[cut:]] = spec.config
    return configs


def bind(root: nn.Module, order: list[str] | None = None,
         configs: dict[str, CoreConfig] | None = None) -> ParticleHandle:
    """Make a species (version 0) from ``root``'s tree and bind the tree to a new handle.

    ``order``/``configs`` default to the registration order and the configs inherited from
    NytoModule children (see the module docstring).
    """
    check_tree(root)
    p = new_species(root, name=type(root).__name__,
                    order=registration_order(root) if order is None else order,
                    configs=inherited_configs(root) if configs is None else configs,
                    what="NytoModule")
    h = ParticleHandle(p._schema, root)
    tag_tree(root, h, "")
    h.plan = Plan.of(root, p._schema)
    return h


def handle_of(module: nn.Module, *, make: bool = True) -> tuple[ParticleHandle, str]:
    """``(handle, path)`` of ``module``; an unbound one first makes its species (see module doc)."""
    tag = TAGS.get(module)
    if tag is not None:
        return tag
    if not make:
        raise VersionError("this module is not part of any particle yet")
    top = module
    seen = {id(top)}
    while True:
        record = BUILDING.get(top)
        parent = None if record is None or record.parent is None else record.parent()
        if (parent is None or TAGS.get(parent) is not None
                or not any(c is top for c in parent._modules.values())):
            break
        if id(parent) in seen:
            raise cycle_error(parent, module)
        seen.add(id(parent))
        top = parent
    bind(top)
    tag = TAGS.get(module)
    if tag is None:  # (not reachable from ``top`` after all)
        bind(module)
        tag = TAGS.get(module)
    return tag


def root_of(module: nn.Module) -> tuple[nn.Module, ParticleHandle, str]:
    """``(root, handle, path)`` of a NytoModule; VersionError if its root is gone or moved."""
    h, path = handle_of(module)
    if not path and h._root() is module:  # the common case: a root (its tag is h's)
        return module, h, path
    root = h.root
    if root is None:
        raise VersionError(ORPHAN)
    if path:
        try:
            found = root.get_submodule(path)
        except AttributeError:
            found = None
        if found is not module:
            raise VersionError(f"this NytoModule is no longer at {path!r} in its root module; "
                               "work through the root module")
    return root, h, path
