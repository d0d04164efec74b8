"""NytoModule: the seed's mutable ``nn.Module`` facade, a thin shell over the pure core.

A NytoModule *is* an ordinary ``nn.Module`` whose tree holds one particle's tensors. Everything
version-related is delegated to the core: the module's version is a core :class:`Schema`, its
events are core events (``nytorch_func._edit``), its :meth:`NytoModule.touch` is core
:func:`touch` written back into the module tree, and its arithmetic is core particle
arithmetic on :meth:`NytoModule.to_particle`, written into a new module tree.

Bookkeeping lives outside the modules, in a weak-keyed side table ``module -> (handle, path)``:
a per-particle :class:`ParticleHandle` (the module's ``_particle_kernel``) holds the particle's
schema and a *weak* reference to its root module, so nothing here forms a reference cycle.
The species is made lazily (first particle operation, ``_version_kernel``, config call, ...):
assignments inside ``__init__`` are plain construction.
"""

from __future__ import annotations

import copy as _copy
import operator
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import _edit
from ._bridge import collect, to_module
from ._config import ParamConfig as _CoreConfig
from ._errors import NytorchFuncError, SchemaError, VersionError
from ._events import AddBuffer, AddModule, AddParam, DelBuffer, DelModule, DelParam, Event
from ._particle import Particle
from ._schema import Schema, make_skeleton
from ._species import Species
from ._migrate import events_between
from ._touch import touch as _core_touch

__all__ = ["NytoModule", "ParamProduct", "ParticleHandle", "MutableParamConfig"]

_MISSING = object()

class _TagTable:
    """``module -> value`` with weak keys, like ``weakref.WeakKeyDictionary``, but cheaper.

    Keys are weak references whose callback is the table dict's own ``pop`` (a C function):
    a module's death removes its entry without running Python code, which matters when every
    particle operation makes and frees a tree of modules. Entries are never deleted by hand
    (``discard`` stores ``None``), so every callback finds its key.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[weakref.ref, Any] = {}

    def get(self, module: nn.Module, default: Any = None) -> Any:
        value = self._data.get(weakref.ref(module))
        return default if value is None else value

    def __getitem__(self, module: nn.Module) -> Any:
        value = self._data.get(weakref.ref(module))
        if value is None:
            raise KeyError(module)
        return value

    def __setitem__(self, module: nn.Module, value: Any) -> None:
        self._data[weakref.ref(module, self._data.pop)] = value

    def discard(self, module: nn.Module) -> None:
        key = weakref.ref(module)
        if key in self._data:
            self._data[key] = None

    def __len__(self) -> int:
        return sum(v is not None for v in self._data.values())


# module -> (handle, path inside the handle's root). Weak keys: an entry lives as long as its
# module; the handle holds its root only weakly, so no entry keeps a tree alive.
_TAGS = _TagTable()

# child -> weakref(parent) for modules put into an unbound NytoModule, so that using a child
# first makes the species from its outermost NytoModule ancestor (weak both ways: no cycles).
_PARENTS: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()

_ORPHAN = ("this NytoModule's root module was freed (it came from a particle operation on a "
           "submodule, or its root was garbage collected); keep the root module alive and use "
           "root.<path>, or run particle operations on the root")
_LOCKED = ("version updates are locked for this particle (it is wrapped in a ParticleModule); "
           "use `with GetNytoModule(particle_module) as root: ...` to edit its structure")


class ParticleHandle:
    """The per-particle handle (nytorch's ``_particle_kernel``): the particle's version and root.

    One handle is shared by a particle's root module and every module in its tree; each
    particle has its own. It holds the root only by weak reference (no reference cycles).
    """

    __slots__ = ("schema", "_root", "locked", "plan", "__weakref__")

    def __init__(self, schema: Schema, root: nn.Module) -> None:
        self.schema = schema
        self._root = weakref.ref(root)
        self.locked = False
        self.plan = None

    @property
    def version(self) -> Schema:
        """The core Schema of the particle's version (nytorch's version kernel)."""
        return self.schema

    @property
    def root(self) -> nn.Module | None:
        root = self._root()
        if root is None:
            return None
        tag = _TAGS.get(root)
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


# ---------------------------------------------------------------------------------------------
# species creation, tagging, scanning and writing back
# ---------------------------------------------------------------------------------------------

def _tag_tree(module: nn.Module, h: ParticleHandle, prefix: str) -> None:
    for path, m in module.named_modules(prefix=prefix, remove_duplicate=False):
        _TAGS[m] = (h, path)


def _check_tree(root: nn.Module) -> None:
    """SchemaError if a module is inside one of its own submodules (the tree has a cycle)."""
    stack = [(root, frozenset((id(root),)))]
    while stack:
        m, above = stack.pop()
        for c in m._modules.values():
            if c is None:
                continue
            if id(c) in above:
                raise SchemaError(
                    f"{type(c).__name__} is inside one of its own submodules (the module tree "
                    f"of {type(root).__name__} has a cycle); a particle is a tree: keep "
                    "back-references out of it (store them without registering, e.g. in a "
                    "list or with object.__setattr__)")
            stack.append((c, above | {id(c)}))


def _new_species(root: nn.Module) -> ParticleHandle:
    """Make a species from ``root``'s tree (version 0) and bind the tree to a new handle.

    Configs that NytoModule children already set in species of their own carry over.
    """
    _check_tree(root)
    inherited: dict[int, _CoreConfig] = {}
    for m in root.modules():
        tag = _TAGS.get(m)
        if m is root or tag is None or tag[1] != "" or tag[0].root is not m:
            continue
        s = tag[0].schema
        for spec in s.params:
            if spec.config != _CoreConfig():
                inherited[id(m.get_parameter(spec.key))] = spec.config
    specs, values = collect(root)
    shared: dict[str, torch.Tensor] = {}
    if inherited:
        import dataclasses

        for i, (spec, value) in enumerate(zip(specs, values)):
            cfg = inherited.get(id(value))
            if spec.kind == "param" and cfg is not None:
                specs[i] = dataclasses.replace(spec, config=cfg)
                if cfg.shared:
                    shared[spec.key] = value
    try:
        skeleton = make_skeleton(root)
    except Exception as err:  # noqa: BLE001 - deepcopy failures mean "cannot copy"
        raise SchemaError(f"NytoModule: cannot copy the structure of {type(root).__name__} "
                          f"({type(err).__name__}: {err}); make the module deep-copyable") from err
    species = Species(type(root).__name__)
    schema = Schema(species, 0, skeleton, tuple(specs), shared,
                    sum(s.kind == "param" for s in specs))
    species._register(schema)
    h = ParticleHandle(schema, root)
    _tag_tree(root, h, "")
    return h


def _handle_of(module: nn.Module, *, bind: bool = True) -> tuple[ParticleHandle, str]:
    """``(handle, path)`` of ``module``; an unbound module becomes the root of a new species."""
    tag = _TAGS.get(module)
    if tag is None:
        if not bind:
            raise VersionError("this module is not part of any particle yet")
        top = module
        seen = {id(top)}
        while True:
            ref = _PARENTS.get(top)
            parent = None if ref is None else ref()
            if (parent is None or _TAGS.get(parent) is not None
                    or not any(c is top for c in parent._modules.values())):
                break
            if id(parent) in seen:
                raise SchemaError(
                    f"the modules containing {type(module).__name__} form a cycle "
                    f"({type(parent).__name__} is inside one of its own submodules); a particle "
                    "is a tree: keep back-references out of the module tree (store them "
                    "without registering, e.g. in a list or with object.__setattr__)")
            seen.add(id(parent))
            top = parent
        _new_species(top)
        return _TAGS[module]
    return tag


def _root_of(module: nn.Module) -> tuple[nn.Module, ParticleHandle, str]:
    h, path = _handle_of(module)
    if not path and h._root() is module:  # the common case: a root (its tag is h's)
        return module, h, path
    root = h.root
    if root is None:
        raise VersionError(_ORPHAN)
    if path:
        try:
            found = root.get_submodule(path)
        except AttributeError:
            found = None
        if found is not module:
            raise VersionError(f"this NytoModule is no longer at {path!r} in its root module; "
                               "work through the root module")
    return root, h, path


def _meta_like(spec) -> torch.Tensor:
    return torch.empty(spec.shape, dtype=spec.dtype, device="meta")


def _scan_tensors(live: dict, skel: dict, kind: str, none_event: str, del_event: str,
                  m: nn.Module, prefix: str, objs: dict[str, torch.Tensor], removals: list,
                  additions: list) -> None:
    """One module's parameters (or buffers) against the skeleton's: what changed, as events."""
    for name, t in live.items():
        s = skel.get(name, _MISSING)
        path = prefix + name
        if t is None:
            if s is not _MISSING and s is not None:
                removals.append((none_event, path))
        elif s is _MISSING or s is None:  # new, or filling a None slot
            additions.append((kind, path, t, m))
        elif t.shape != s.shape or t.dtype != s.dtype:
            removals.append((del_event, path))
            additions.append((kind, path, t, m))
        else:
            objs[path] = t
    for name, s in skel.items():
        if s is not None and name not in live:
            removals.append((del_event, prefix + name))


def _scan(h: ParticleHandle, m: nn.Module, sk: nn.Module, prefix: str,
          objs: dict[str, torch.Tensor], removals: list, additions: list) -> None:
    """Walk the tree against the skeleton: collect tensors and structural differences."""
    _scan_tensors(m._parameters, sk._parameters, "param", "set_none", "del_param", m, prefix,
                  objs, removals, additions)
    _scan_tensors(m._buffers, sk._buffers, "buffer", "del_buffer", "del_buffer", m, prefix,
                  objs, removals, additions)
    for name, c in m._modules.items():
        s = sk._modules.get(name, _MISSING)
        path = prefix + name
        if c is None:
            if s is not _MISSING and s is not None:
                removals.append(("set_none", path))
            continue
        if s is _MISSING or s is None:
            additions.append(("module", path, c, m))
            continue
        tag = _TAGS.get(c)
        if tag is None or tag[0] is not h:  # a new module object was put here: replace
            removals.append(("del_module", path))
            additions.append(("module", path, c, m))
            continue
        _scan(h, c, s, path + ".", objs, removals, additions)
    for name, s in sk._modules.items():
        if s is not None and name not in m._modules:
            removals.append(("del_module", prefix + name))


def _objects(q: Particle, *, fresh_from: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{path: tensor}`` to put into a module tree for ``q`` (params wrapped once per spec).

    ``fresh_from`` (ids of the source tree's tensors) makes leaves that are still those very
    objects into copies, so a new particle never shares per-particle storage with its source.
    """
    s = q._schema
    objs: dict[str, torch.Tensor] = {}
    for spec, t in zip(s.leaf_specs, q._leaves):
        if fresh_from is not None and id(t) in fresh_from:
            t = t.detach().clone()
        if spec.kind == "param" and type(t) is not nn.Parameter and not isinstance(t, nn.Parameter):
            t = _as_param(t, spec.requires_grad)
        for path in spec.paths:
            objs[path] = t
    for key, t in s.shared.items():
        for path in s.by_path[key].paths:
            objs[path] = t
    return objs


def _as_param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    """``nn.Parameter(t, requires_grad)`` for a plain tensor, sharing its storage."""
    if type(t) is torch.Tensor:
        return torch.Tensor._make_subclass(nn.Parameter, t.detach(), requires_grad)
    return nn.Parameter(t, requires_grad=requires_grad)


def _refresh_flat(m: nn.Module) -> None:
    if "_flat_weights_names" in m.__dict__:  # RNNs keep a list of their weights: refresh it
        m._init_flat_weights()


def _materialize(sk: nn.Module, prefix: str, objs: dict[str, torch.Tensor]) -> nn.Module:
    memo: dict[int, Any] = {}
    for rel, t in [*sk.named_parameters(remove_duplicate=False),
                   *sk.named_buffers(remove_duplicate=False)]:
        memo[id(t)] = objs[prefix + rel]
    memo[id(memo)] = []
    new = _copy.deepcopy(sk, memo)
    for m in new.modules():
        _refresh_flat(m)
    return new


def _reconcile(m: nn.Module, sk: nn.Module, prefix: str, objs: dict[str, torch.Tensor],
               fresh: set[str], h: ParticleHandle) -> None:
    """Make the tree under ``m`` match skeleton ``sk`` holding ``objs`` (in place)."""
    d = m.__dict__
    params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
    for name in [n for n, t in params.items() if n not in sk._parameters and t is not None]:
        del params[name]
    for name, s in sk._parameters.items():
        t = None if s is None else objs[prefix + name]
        if params.get(name, _MISSING) is not t:
            params[name] = t
    for name in [n for n, t in buffers.items() if n not in sk._buffers and t is not None]:
        del buffers[name]
        d["_non_persistent_buffers_set"].discard(name)
    for name, s in sk._buffers.items():
        t = None if s is None else objs[prefix + name]
        if buffers.get(name, _MISSING) is not t:
            buffers[name] = t
        if name in sk._non_persistent_buffers_set:
            d["_non_persistent_buffers_set"].add(name)
    for name in [n for n, c in modules.items() if n not in sk._modules and c is not None]:
        del modules[name]
    for name, s in sk._modules.items():
        path = prefix + name
        if s is None:
            modules[name] = None
            continue
        child = modules.get(name)
        if child is None or path in fresh:
            child = _materialize(s, path + ".", objs)
            modules[name] = child
            _tag_tree(child, h, path)
        else:
            _reconcile(child, s, path + ".", objs, fresh, h)
    _refresh_flat(m)


def _write_back(root: nn.Module, h: ParticleHandle, q: Particle, fresh: set[str] = frozenset()) -> None:
    _reconcile(root, q._schema.skeleton, "", _objects(q), set(fresh), h)
    h.schema = q._schema


def _view(root: nn.Module, h: ParticleHandle, objs: dict[str, torch.Tensor]) -> Particle:
    s = h.schema
    leaves = tuple(objs[k] if k in objs else _meta_like(spec)
                   for k, spec in zip(s.leaf_keys, s.leaf_specs))
    return Particle._make(s, leaves, root.training)


def _sync(root: nn.Module, h: ParticleHandle) -> Particle:
    """Record structural edits made to the tree behind the facade's back as core events.

    Returns the particle the tree holds, at the (possibly new) version.
    """
    objs: dict[str, torch.Tensor] = {}
    removals: list = []
    additions: list = []
    _scan(h, root, h.schema.skeleton, "", objs, removals, additions)
    p = _view(root, h, objs)
    if not removals and not additions:
        return p
    old = h.schema
    own: set[str] = set()
    for kind, path in removals:
        p = (_edit.remove_module if kind == "del_module" else getattr(_edit, kind))(p, path)
    for kind, path, value, parent in additions:
        if kind == "param":
            p = _edit.add_param(p, path, value)
        elif kind == "buffer":
            name = path.rpartition(".")[2]
            p = _edit.add_buffer(p, path, value,
                                 persistent=name not in parent._non_persistent_buffers_set)
        else:
            p = _edit.add_module(p, path, value)
            own.add(path)
            _tag_tree(value, h, path)
    fresh = {e.path for e in events_between(old, p._schema) if isinstance(e, AddModule)} - own
    _write_back(root, h, p, fresh)
    return p


def _touch_tree(root: nn.Module, h: ParticleHandle, p: Particle) -> Particle:
    if h.schema.is_newest:
        return p
    old = h.schema
    q = _core_touch(p)
    fresh = {e.path for e in events_between(old, q._schema) if isinstance(e, AddModule)}
    _write_back(root, h, q, fresh)
    return q


_P = nn.Parameter
_T = torch.Tensor
_make_subclass = torch.Tensor._make_subclass
_new_object = object.__new__
_set_dict = object.__setattr__
_grad_enabled = torch.is_grad_enabled
_set_grad = torch._C._set_grad_enabled
_NO_IDS: frozenset = frozenset()


class _Layout:
    """How one schema lies in a module tree of one shape, shared by every tree built from it.

    Everything here is names and indices (no modules, no tensors), so one layout serves the
    source tree and every result tree a particle operation builds from it.

    ``lens``: per module, the sizes of its ``_parameters``/``_buffers``/``_modules`` dicts;
    ``links``: ``(parent, name, child)`` module indices; ``nones``/``present``: the entries
    that must be ``None`` / must exist (kind 0 params, 1 buffers, 2 modules); ``slots``: where
    each leaf lives and its shape and dtype; ``puts``: where each tensor is written when
    building (``(module, is_param, name, value index)``, values being the leaves then the
    shared tensors of ``shared_keys``); ``leaf_info``: ``(is_param, requires_grad)`` per leaf;
    ``flat``: modules that keep a flat weight list (RNNs).

    Same sizes and every recorded name present means the same names (dict keys are unique),
    so checking a tree costs a few ``len`` calls and lookups, no key tuples.
    """

    __slots__ = ("paths", "lens", "links", "nones", "present", "slots", "shared_keys", "puts",
                 "mod_puts", "leaf_info", "grads", "flat")

    def __init__(self, mods: list[nn.Module], paths: list[str], links: list, schema: Schema,
                 puts: list, slot_of: dict) -> None:
        self.paths = tuple(paths)
        self.links = tuple(links)
        self.lens = tuple((len(m._parameters), len(m._buffers), len(m._modules)) for m in mods)
        nones, present = [], []
        leaf_places = {slot_of[k] for k in schema.leaf_keys}
        for i, m in enumerate(mods):
            for kind, d in enumerate((m._parameters, m._buffers, m._modules)):
                for name, v in d.items():
                    if v is None:
                        nones.append((i, kind, name))
                    elif kind < 2 and (i, kind == 0, name) not in leaf_places:
                        present.append((i, kind, name))
        self.nones, self.present = tuple(nones), tuple(present)
        self.slots = tuple(slot_of[k] + (spec.shape, spec.dtype)
                           for k, spec in zip(schema.leaf_keys, schema.leaf_specs))
        key_of = {p: spec.key for spec in schema.specs for p in spec.paths}
        # values are indexed: the leaves in leaf order, then the shared tensors in this order
        self.shared_keys = tuple(schema.shared)
        index = {k: i for i, k in enumerate((*schema.leaf_keys, *self.shared_keys))}
        self.puts = tuple((i, is_param, name, index[key_of[path]])
                          for i, is_param, name, path in puts)
        # per module: (param puts, buffer puts) as ((name, value index), ...) for build
        per = [([], []) for _ in mods]
        for i, is_param, name, at in self.puts:
            per[i][0 if is_param else 1].append((name, at))
        self.mod_puts = tuple((tuple(pp), tuple(bp)) for pp, bp in per)
        self.leaf_info = tuple((spec.kind == "param", spec.requires_grad)
                               for spec in schema.leaf_specs)
        self.grads = tuple(spec.requires_grad for spec in schema.leaf_specs)
        self.flat = tuple(i for i, m in enumerate(mods) if "_flat_weights_names" in m.__dict__)


class _Plan:
    """A tree's modules (by weak reference) and the :class:`_Layout` of its schema in them.

    Makes reading an unchanged tree and building a new tree of its shape cheap. Weak
    references only: a strong one would keep the tree alive through the weak-keyed tag table.
    ``read`` gives the modules and leaves if the tree still has exactly this structure;
    ``build`` makes a new tree (one shallow copy per module, tensors written straight into
    the copies' dicts) and gives it a plan of its own sharing this layout.
    """

    __slots__ = ("schema", "mods", "layout")

    def __init__(self, schema: Schema, mods: tuple, layout: _Layout) -> None:
        self.schema, self.mods, self.layout = schema, mods, layout

    @classmethod
    def of(cls, root: nn.Module, schema: Schema) -> "_Plan":
        mods: list[nn.Module] = []
        index: dict[int, int] = {}
        paths: list[str] = []
        links: list[tuple[int, str, int]] = []
        slot_of: dict[str, tuple[int, bool, str]] = {}
        puts: list[tuple[int, bool, str, str]] = []
        # iterative depth-first walk (a recursive closure would be a reference cycle)
        stack: list[tuple[nn.Module, str, int, str]] = [(root, "", -1, "")]
        while stack:
            m, prefix, parent, name = stack.pop()
            if id(m) in index:
                links.append((parent, name, index[id(m)]))
                continue
            idx = len(mods)
            index[id(m)] = idx
            mods.append(m)
            paths.append(prefix[:-1])
            if parent >= 0:
                links.append((parent, name, idx))
            for is_param, d in ((True, m._parameters), (False, m._buffers)):
                for tname, t in d.items():
                    if t is not None:
                        slot_of.setdefault(prefix + tname, (idx, is_param, tname))
                        puts.append((idx, is_param, tname, prefix + tname))
            for cname, c in reversed(m._modules.items()):
                if c is not None:
                    stack.append((c, prefix + cname + ".", idx, cname))
        layout = _Layout(mods, paths, links, schema, puts, slot_of)
        return cls(schema, tuple(weakref.ref(m) for m in mods), layout)

    def read(self) -> tuple[list[nn.Module], tuple] | None:
        """``(modules, leaves)`` if the tree still has exactly the planned structure, else None."""
        lay = self.layout
        mods = [ref() for ref in self.mods]
        try:
            for m, (n_p, n_b, n_m) in zip(mods, lay.lens):
                if len(m._parameters) != n_p or len(m._buffers) != n_b or len(m._modules) != n_m:
                    return None
        except AttributeError:  # a module was freed (None)
            return None
        for p, name, c in lay.links:  # every child is still the very module planned
            if mods[p]._modules.get(name) is not mods[c]:
                return None
        for i, kind, name in lay.nones:
            m = mods[i]
            d = m._parameters if kind == 0 else m._buffers if kind == 1 else m._modules
            if d.get(name, _MISSING) is not None:
                return None
        for i, kind, name in lay.present:
            m = mods[i]
            if (m._parameters if kind == 0 else m._buffers).get(name) is None:
                return None
        leaves = []
        for i, is_param, name, shape, dtype in lay.slots:
            m = mods[i]
            t = (m._parameters if is_param else m._buffers).get(name)
            if t is None or t.shape != shape or t.dtype != dtype:
                return None
            leaves.append(t)
        return mods, tuple(leaves)

    def build(self, mods: list[nn.Module], q: Particle, fresh_from: set[int],
              owned: bool = False) -> nn.Module:
        """A new tree shaped like ``mods`` holding ``q``'s tensors, tagged with a new handle.

        Leaves of ``q`` that are objects of the source tree (ids in ``fresh_from``) are copied,
        so the result never shares per-particle storage with its source. ``owned=True`` says
        that every other leaf of ``q`` is a fresh autograd leaf that nobody else holds (the
        output of an operation the facade ran without autograd): such a tensor becomes an
        ``nn.Parameter`` by a class change, as torch's own ``UninitializedParameter.
        materialize`` does, instead of a new wrapper (``_make_subclass``) per tensor.
        """
        s = q._schema
        lay = self.layout
        if owned and fresh_from is _NO_IDS:  # every leaf is a new operational parameter
            values = list(q._leaves)
            for i, (t, rg) in enumerate(zip(values, lay.grads)):
                if type(t) is _T:
                    t.__class__ = _P
                    if rg:
                        t.requires_grad_(True)
                elif not isinstance(t, _P):  # a tensor subclass: wrap it, keep its class
                    values[i] = nn.Parameter(t, requires_grad=rg)
        else:
            values = []
            for (is_param, rg), t in zip(lay.leaf_info, q._leaves):
                mine = owned
                if id(t) in fresh_from:
                    t = t.detach().clone()
                    mine = True
                if is_param and type(t) is not _P:
                    if mine and type(t) is _T:
                        t.__class__ = _P
                        if rg:
                            t.requires_grad_(True)
                    else:
                        t = (_make_subclass(_P, t, rg) if type(t) is _T
                             else t if isinstance(t, _P) else nn.Parameter(t, requires_grad=rg))
                values.append(t)
        if lay.shared_keys:
            shared = s.shared
            values.extend(shared[k] for k in lay.shared_keys)
        # one shallow copy per module (attributes shared, as nytorch's copy_module does), owning
        # its parameter/buffer/child dicts, with the new tensors written straight into them
        h = ParticleHandle.__new__(ParticleHandle)
        tags = _TAGS._data
        untag = tags.pop
        new, children, refs = [], [], []
        for m, (pputs, bputs), path in zip(mods, lay.mod_puts, lay.paths):
            src = m.__dict__
            d = src.copy()
            pd = d["_parameters"] = src["_parameters"].copy()
            for name, at in pputs:
                pd[name] = values[at]
            if bputs:
                bd = d["_buffers"] = src["_buffers"].copy()
                for name, at in bputs:
                    bd[name] = values[at]
            else:
                d["_buffers"] = src["_buffers"].copy()
            children.append(src["_modules"].copy())
            d["_modules"] = children[-1]
            d["_non_persistent_buffers_set"] = src["_non_persistent_buffers_set"].copy()
            n = _new_object(m.__class__)
            _set_dict(n, "__dict__", d)
            new.append(n)
            ref = weakref.ref(n, untag)
            refs.append(ref)
            tags[ref] = (h, path)
        for p, name, c in lay.links:
            children[p][name] = new[c]
        h.schema, h.locked, h._root = s, False, weakref.ref(new[0])
        for i in lay.flat:
            m = new[i]
            m.__dict__["_flat_weights"] = list(m._flat_weights)
            m._init_flat_weights()
        h.plan = _Plan(s, tuple(refs), lay)
        return new[0]


def _current(module: nn.Module, *, touch: bool = True) -> tuple[nn.Module, ParticleHandle, str, Particle]:
    """Root, handle, path and the particle its tree holds, synced (and touched to the head)."""
    out = _current_fast(module, touch)
    return out[:4]


def _current_fast(module: nn.Module, touch: bool = True):
    """:func:`_current` plus the tree's modules in plan order (for :meth:`_Plan.build`)."""
    root, h, path = _root_of(module)
    plan = h.plan
    if plan is not None and plan.schema is h.schema and (touch is False or h.schema.is_newest):
        got = plan.read()
        if got is not None:
            return root, h, path, Particle._make(h.schema, got[1], root.training), got[0]
    p = _sync(root, h)
    if touch:
        p = _touch_tree(root, h, p)
    h.plan = plan = _Plan.of(root, h.schema)
    got = plan.read()
    return root, h, path, p, None if got is None else got[0]


def _shallow(m: nn.Module) -> nn.Module:
    """A copy of ``m`` owning its parameter/buffer/child dicts (attributes shared, as nytorch)."""
    src = m.__dict__
    new = object.__new__(m.__class__)
    d = new.__dict__
    d.update(src)
    d["_parameters"] = dict(src["_parameters"])
    d["_buffers"] = dict(src["_buffers"])
    d["_modules"] = dict(src["_modules"])
    d["_non_persistent_buffers_set"] = set(src["_non_persistent_buffers_set"])
    if "_flat_weights" in d:
        d["_flat_weights"] = list(d["_flat_weights"])
    return new


def _rebuild(m: nn.Module, prefix: str, objs: dict[str, torch.Tensor], h: ParticleHandle,
             memo: dict[int, nn.Module]) -> nn.Module:
    done = memo.get(id(m))
    if done is not None:
        return done
    new = _shallow(m)
    memo[id(m)] = new
    _TAGS[new] = (h, prefix[:-1])
    params, buffers, modules = new._parameters, new._buffers, new._modules
    for name, t in params.items():
        if t is not None:
            params[name] = objs[prefix + name]
    for name, t in buffers.items():
        if t is not None:
            buffers[name] = objs[prefix + name]
    for name, c in modules.items():
        if c is not None:
            modules[name] = _rebuild(c, prefix + name + ".", objs, h, memo)
    _refresh_flat(new)
    return new


def _new_tree(root: nn.Module, q: Particle, source: Particle,
              mods: list[nn.Module] | None = None) -> nn.Module:
    """A new module tree shaped like ``root`` (at ``q``'s version) holding ``q``'s tensors.

    ``mods``: the tree's modules as its plan read them just before (skips a second check).
    """
    h0 = _TAGS.get(root)
    plan = None if h0 is None else h0[0].plan
    if plan is not None and plan.schema is q._schema:
        if mods is None:
            got = plan.read()
            mods = None if got is None else got[0]
        if mods is not None:
            return plan.build(mods, q, {id(t) for t in source._leaves})
    objs = _objects(q, fresh_from={id(t): t for t in source._leaves})
    h = ParticleHandle.__new__(ParticleHandle)
    h.schema, h.locked, h.plan = q._schema, False, None
    new_root = _rebuild(root, "", objs, h, {})
    h._root = weakref.ref(new_root)
    return new_root


def _at(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


# ---------------------------------------------------------------------------------------------
# mutable config view (nytorch's ParamConfig is a mutable dataclass)
# ---------------------------------------------------------------------------------------------

class MutableParamConfig:
    """A mutable view of one parameter's config, handed to ``apply_param_config`` callbacks.

    Set ``operational``, ``clone`` or any attribute; when the callback returns, every change
    becomes one core ``Configure`` event (one new version for the whole species).

    >>> c = MutableParamConfig(operational=False)
    >>> c.is_weight = True
    >>> c
    ParamConfig(operational=False, clone=True, is_weight=True)
    >>> c.freeze()
    ParamConfig(operational=False, clone=True, is_weight=True)
    """

    def __init__(self, operational: bool = True, clone: bool = True, **attrs: Any) -> None:
        self.operational = operational
        self.clone = clone
        self.__dict__.update(attrs)

    @classmethod
    def of(cls, config: _CoreConfig) -> "MutableParamConfig":
        return cls(**config.asdict())

    def freeze(self) -> _CoreConfig:
        """The frozen core ParamConfig with these settings (SchemaError if a value is invalid)."""
        return _CoreConfig(**self.__dict__)

    def copy(self) -> "MutableParamConfig":
        return MutableParamConfig(**self.__dict__)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MutableParamConfig):
            return self.__dict__ == other.__dict__
        if isinstance(other, _CoreConfig):
            return self.__dict__ == other.asdict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "ParamConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


# ---------------------------------------------------------------------------------------------
# ParamProduct: the particle as a value, with nytorch's product API
# ---------------------------------------------------------------------------------------------

def _check_fn_result(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise SchemaError(f"{what}: fn must return a tensor (nn.Parameter), got {type(value).__name__}")
    return value


class ParamProduct:
    """A NytoModule's particle as a value (nytorch's ``ParamProduct``).

    Chain arithmetic on products and turn the result into a module once with
    :meth:`module`, skipping the intermediate modules. ``particle`` is the core
    :class:`~nytorch_func.Particle`; ``path`` names the module :meth:`module` returns.

    >>> import torch, nytorch_func as nf
    >>> class Net(nf.NytoModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.tensor([0., 1., 2.]))
    >>> net = Net()
    >>> (2 * net.product() + 5).module().w
    Parameter containing:
    tensor([5., 7., 9.], requires_grad=True)
    """

    __slots__ = ("particle", "path", "_root")

    def __init__(self, particle: Particle, path: str = "", root: nn.Module | None = None) -> None:
        if not isinstance(particle, Particle):
            raise NytorchFuncError(f"ParamProduct: expected a Particle, got {type(particle).__name__}")
        self.particle = particle
        self.path = path
        self._root = None if root is None else weakref.ref(root)

    def _new(self, particle: Particle) -> "ParamProduct":
        out = ParamProduct(particle, self.path)
        out._root = self._root
        return out

    @property
    def params(self) -> "OrderedDict[int, torch.Tensor]":
        """``{param id: tensor}`` in parameter-id order (nytorch's ParamDict)."""
        p = self.particle
        named = p.params
        return OrderedDict((spec.pid, named[spec.key])
                           for spec in sorted(p.schema.params, key=lambda s: s.pid))

    def __repr__(self) -> str:
        return f"ParamProduct({self.particle!r}, path={self.path!r})"

    def module(self) -> "NytoModule":
        """A new NytoModule (of the same species and version) holding this product's values."""
        root = None if self._root is None else self._root()
        tag = None if root is None else _TAGS.get(root)
        if root is not None and tag is not None and tag[0].schema is self.particle._schema:
            source = _view(root, tag[0], _objs_of(root, tag[0]))
            new_root = _new_tree(root, self.particle, source)
        else:
            new_root = NytoModule.from_particle(self.particle, copy=True)
        return _at(new_root, self.path)  # type: ignore[return-value]

    particle_module = module

    def unary_operator(self, fn: Callable[[torch.Tensor, Any], torch.Tensor]) -> "ParamProduct":
        """``fn(param, config) -> new param`` over every per-particle parameter (no grad)."""
        with torch.no_grad():
            return self._new(_map(fn, self.particle))

    def binary_operator(self, other: "ParamProduct",
                        fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]) -> "ParamProduct":
        """``fn(mine, theirs, config) -> new param`` over matching parameters (no grad)."""
        if not isinstance(other, ParamProduct):
            raise NytorchFuncError(f"binary_operator: other must be a ParamProduct, got "
                                   f"{type(other).__name__}")
        with torch.no_grad():
            return self._new(_map(fn, self.particle, other.particle))

    def clone(self) -> "ParamProduct":
        return self._new(self.particle.clone())

    def randn(self) -> "ParamProduct":
        return self._new(self.particle.randn())

    def rand(self) -> "ParamProduct":
        return self._new(self.particle.rand())

    def __pos__(self) -> "ParamProduct":
        return self.clone()

    def __neg__(self) -> "ParamProduct":
        with torch.no_grad():
            return self._new(-self.particle)


def _map(fn: Callable, p: Particle, *others: Particle) -> Particle:
    from ._ops import map_params

    def call(*args: Any) -> torch.Tensor:
        return _check_fn_result(fn(*args[:-1], MutableParamConfig.of(args[-1])), "ParamProduct")

    return map_params(call, p, *others, operational_only=False)


def install_operators(cls: type, forward: Callable, reverse: Callable,
                      inplace: Callable | None = None) -> None:
    """Give ``cls`` nytorch's operator set: ``__op__``, ``__rop__`` (and ``__iop__``) for
    ``+ - * / **``, each calling ``forward/reverse/inplace(self, other, operator_function)``."""
    for name in ("add", "sub", "mul", "truediv", "pow"):
        op = getattr(operator, name)
        kinds = [("", forward), ("r", reverse)] + ([("i", inplace)] if inplace else [])
        for prefix, impl in kinds:
            def dunder(self, other, _impl=impl, _op=op):
                return _impl(self, other, _op)

            dunder.__name__ = f"__{prefix}{name}__"
            setattr(cls, dunder.__name__, dunder)


def _product_forward(self: "ParamProduct", other: Any, op: Callable) -> Any:
    if isinstance(other, ParamProduct):
        other = other.particle
    elif isinstance(other, (NytoModule, Particle)):
        return NotImplemented
    with torch.no_grad():
        out = op(self.particle, other)
    return NotImplemented if out is NotImplemented else self._new(out)


def _product_reverse(self: "ParamProduct", other: Any, op: Callable) -> Any:
    if isinstance(other, (NytoModule, Particle, ParamProduct)):
        return NotImplemented
    with torch.no_grad():
        return self._new(op(other, self.particle))


install_operators(ParamProduct, _product_forward, _product_reverse)


def _objs_of(root: nn.Module, h: ParticleHandle) -> dict[str, torch.Tensor]:
    objs: dict[str, torch.Tensor] = {}
    _scan(h, root, h.schema.skeleton, "", objs, [], [])
    return objs


# ---------------------------------------------------------------------------------------------
# NytoModule
# ---------------------------------------------------------------------------------------------

def _plain_set(m: nn.Module, name: str, value: Any, kind: str, persistent: bool = True) -> None:
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
    _refresh_flat(m)


def _kind_at(m: nn.Module, name: str) -> str | None:
    d = m.__dict__
    for kind, dn in (("param", "_parameters"), ("buffer", "_buffers"), ("module", "_modules")):
        if name in d[dn]:
            return kind if d[dn][name] is not None else kind + "_none"
    return None


def _dry_run(p: Particle, path: str, removal: Event, addition: Callable[[], Event]) -> None:
    """Check that ``removal`` then ``addition()`` apply to the head, without linking anything."""
    head = p._schema
    try:
        after = removal.apply(head)
        addition().apply(after)
    except NytorchFuncError:
        raise
    except Exception as err:  # noqa: BLE001
        raise SchemaError(f"replacing {path!r}: {type(err).__name__}: {err}") from err


def _addition_event(path: str, value: Any, kind: str, persistent: bool) -> Event:
    if kind == "param":
        return AddParam(path, value.detach(), _CoreConfig(), bool(value.requires_grad))
    if kind == "buffer":
        return AddBuffer(path, value, True, persistent)
    hook = getattr(value, "__nytorch_module__", None)
    plain = hook() if hook is not None else value
    specs, values = collect(plain)
    return AddModule(path, make_skeleton(plain), tuple(specs), tuple(values))


_REMOVAL = {"param": DelParam, "buffer": DelBuffer, "module": DelModule}


class NytoModule(nn.Module):
    """An ``nn.Module`` that is a particle: arithmetic between models and species-wide edits.

    Subclass it as you would ``nn.Module``. Particles derived from one module (``clone``,
    ``randn``, arithmetic) form a species; adding or deleting a parameter, buffer or submodule
    on one of them is an event for the whole species, which the others apply when touched
    (explicitly with :meth:`touch`, or implicitly by their next particle operation).

    >>> import torch, nytorch_func as nf
    >>> class Linear(nf.NytoModule):
    ...     def __init__(self, w, b):
    ...         super().__init__()
    ...         self.weight = torch.nn.Parameter(torch.tensor([w]))
    ...         self.bias = torch.nn.Parameter(torch.tensor([b]))
    >>> net1 = Linear(2., 1.)
    >>> (net1 + 10).weight
    Parameter containing:
    tensor([12.], requires_grad=True)
    >>> net2 = net1.randn()
    >>> del net1.weight
    >>> hasattr(net2, "weight"), hasattr(net2.touch(), "weight")
    (True, False)
    """

    # -- identity -------------------------------------------------------------------------------
    @property
    def _particle_kernel(self) -> ParticleHandle | None:
        """The per-particle handle shared by this particle's root and all its modules."""
        h, _ = _handle_of(self)
        return None if h.locked else h

    @property
    def _version_kernel(self) -> Schema:
        """The core Schema of this particle's version (``.is_newest`` tells if it is the head)."""
        root, h, _, _ = _current(self, touch=False)
        return h.schema

    @property
    def is_root(self) -> bool:
        return _handle_of(self)[1] == ""

    # -- bridges --------------------------------------------------------------------------------
    def to_particle(self) -> Particle:
        """The core particle this module's tree holds (its root's; same species and version).

        The particle views the module's own tensors (no copy).

        >>> import torch, nytorch_func as nf
        >>> class Net(nf.NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 1)
        >>> net = Net()
        >>> p = net.to_particle()
        >>> p.schema is net._version_kernel, p["lin.weight"] is net.lin.weight
        (True, True)
        >>> back = nf.NytoModule.from_particle(p * 2)
        >>> type(back).__name__, torch.equal(back.lin.weight, 2 * net.lin.weight)
        ('Net', True)
        """
        return _current(self, touch=False)[3]

    def __nytorch_particle__(self) -> Particle:
        return self.to_particle()

    def __nytorch_module__(self) -> nn.Module:
        if _TAGS.get(self) is not None and _TAGS[self][0].root is not None:
            _current(self, touch=True)
        return self

    @staticmethod
    def from_particle(p: Particle, *, copy: bool = False) -> "NytoModule":
        """A NytoModule holding ``p`` (same species and version).

        The species must come from a NytoModule (its skeleton's root class). With
        ``copy=False`` the module shares storage with ``p``.
        """
        if not isinstance(p, Particle):
            raise NytorchFuncError(f"from_particle: expected a Particle, got {type(p).__name__}")
        if not isinstance(p._schema.skeleton, NytoModule):
            raise SchemaError(f"from_particle: the species root is a "
                              f"{type(p._schema.skeleton).__name__}, not a NytoModule; use "
                              "nf.to_module(p) for a plain module")
        module = to_module(p, copy=copy)
        h = ParticleHandle(p._schema, module)
        _tag_tree(module, h, "")
        return module  # type: ignore[return-value]

    # -- versions -------------------------------------------------------------------------------
    def touch(self):
        """Bring this particle to the newest version of its species (in place); returns self."""
        root, h, _ = _root_of(self)
        if h.locked:
            raise VersionError(_LOCKED)
        _current(self, touch=True)
        return self

    # -- particle operations --------------------------------------------------------------------
    def product(self) -> ParamProduct:
        """This particle as a :class:`ParamProduct` (touched to the newest version first)."""
        root, h, path, p = _current(self)
        return ParamProduct(p, path, root)

    def product_(self, product: ParamProduct):
        """Copy ``product``'s values into this module's parameters in place; returns self."""
        root, h, path, p = _current(self)
        q = product.particle if isinstance(product, ParamProduct) else product
        if not isinstance(q, Particle):
            raise NytorchFuncError(f"product_: expected a ParamProduct, got {type(product).__name__}")
        if q._schema is not p._schema:
            from ._arith import align

            _, q = align(p, q, "product_")
        objs = _objs_of(root, h)
        with torch.no_grad():
            for spec, value in zip(q._schema.leaf_specs, q._leaves):
                if spec.kind == "param":
                    target = objs[spec.key]
                    if target is not value:
                        target.data = value.detach()
        return self

    def _unary(self, fn: Callable[[Particle], Particle]) -> "NytoModule":
        root, h, path, p, mods = _current_fast(self)
        with torch.no_grad():
            q = fn(p)
        return _at(_new_tree(root, q, p, mods), path)  # type: ignore[return-value]

    def _binary(self, other: Any, op: Callable, reverse: bool) -> Any:
        # the hot path of module arithmetic: read both trees through their plans, one core
        # operation without autograd, one build (see _Plan)
        if isinstance(other, NytoModule):
            root, h, path, p, mods = _current_fast(self)
            opath, other = _current_fast(other)[2:4]
            if opath != path:
                raise SchemaError(f"particle operation between modules at different paths "
                                  f"({path!r} and {opath!r}) of their particles")
            if other._schema is not p._schema:  # the other was older: self is current now
                root, h, path, p, mods = _current_fast(self)
        elif isinstance(other, (Particle, ParamProduct)):
            return NotImplemented
        else:
            root, h, path, p, mods = _current_fast(self)
        prev = _grad_enabled()
        _set_grad(False)
        try:
            q = op(other, p) if reverse else op(p, other)
        finally:
            _set_grad(prev)
        if q is NotImplemented:
            return NotImplemented
        plan = h.plan
        if mods is not None and plan.schema is q._schema:
            if q._schema.all_operational:  # every leaf is a new tensor of the operation
                new = plan.build(mods, q, _NO_IDS, True)
            else:
                fresh = {id(t) for t in p._leaves}
                if type(other) is Particle:
                    fresh.update(id(t) for t in other._leaves)
                new = plan.build(mods, q, fresh, True)
        else:
            new = _new_tree(root, q, p)
        return new if not path else _at(new, path)  # type: ignore[return-value]

    def _inplace(self, other: Any, op: Callable):
        if isinstance(other, NytoModule):
            other = other.product().particle
        with torch.no_grad():
            q = op(self.product().particle, other)
        return self.product_(ParamProduct(q))

    def clone(self):
        """A new particle of the same species with copied values."""
        return self._unary(lambda p: p.clone())

    def randn(self):
        """A new particle of the species with operational parameters drawn from N(0, 1)."""
        return self._unary(lambda p: p.randn())

    def rand(self):
        """A new particle of the species with operational parameters drawn from U[0, 1)."""
        return self._unary(lambda p: p.rand())

    def clone_from(self, source: nn.Module):
        """A particle of this species holding ``source``'s values (any species)."""
        out = self.clone()
        out.load_state_dict(source.state_dict())
        return out

    def detach(self):
        """A module with this particle's very tensors, as the root of a *new* species."""
        root, h, path, p = _current(self)
        h2 = ParticleHandle.__new__(ParticleHandle)
        h2.plan = None
        new_root = _rebuild(root, "", _objects(p), h2, {})
        for m in new_root.modules():
            _TAGS.discard(m)
        _new_species(new_root)
        return _at(new_root, path)

    def __pos__(self):
        return self.clone()

    def __neg__(self):
        return self._unary(lambda p: -p)

    # -- configs --------------------------------------------------------------------------------
    def _targets(self, root: nn.Module, h: ParticleHandle, path: str, name: str | None,
                 what: str) -> list:
        prefix = path + "." if path else ""
        if name is None:
            sub = path
        else:
            kind = _kind_at(self, name)
            if kind not in ("param", "module"):
                raise SchemaError(f"{what}: {name!r} is not a parameter or submodule of "
                                  f"{type(self).__name__} (or it is None)")
            sub = prefix + name
        specs = h.schema.specs_under(sub, kind="param")
        return sorted(specs, key=lambda s: s.pid)

    def apply_param_config(self, fn: Callable[[int, MutableParamConfig], None],
                           name: str | None = None) -> None:
        """Call ``fn(param_id, config)`` for each parameter (under ``name``); changes are one event.

        ``fn`` may set ``operational``, ``clone`` or any attribute on the config it gets.

        >>> import torch, nytorch_func as nf
        >>> class Net(nf.NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(2, 1)
        >>> net = Net()
        >>> def mark(pid, config):
        ...     config.is_weight = pid == 0
        >>> net.apply_param_config(mark)
        >>> net.apply_param_config(lambda pid, c: print(pid, c))
        0 ParamConfig(operational=True, clone=True, is_weight=True)
        1 ParamConfig(operational=True, clone=True, is_weight=False)
        """
        root, h, path, p = _current(self)
        if h.locked:
            raise VersionError(_LOCKED)
        targets = self._targets(root, h, path, name, "apply_param_config")
        changed = []
        for spec in targets:
            view = MutableParamConfig.of(spec.config)
            fn(spec.pid, view)
            new = view.freeze()
            if new != spec.config:
                changed.append((spec, new))
        if not changed:
            return
        where = (path + "." + name if path else name) if name else path

        def build(q: Particle) -> tuple[Event, dict]:
            changes = [(spec.key, new) for spec, new in changed]
            return _edit.configure_event(q, where, changes, "apply_param_config"), {}

        q = _edit.commit(p, build, "apply_param_config")
        _write_back(root, h, q)

    def set_param_config(self, operational: bool | None = None, clone: bool | None = None,
                         name: str | None = None) -> None:
        """Set ``operational`` / ``clone`` for every parameter (under ``name``): one event.

        >>> import torch, nytorch_func as nf
        >>> class Net(nf.NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a = torch.nn.Linear(1, 1)
        ...         self.b = torch.nn.Linear(1, 1)
        >>> net = Net()
        >>> net.set_param_config(operational=False, name="a")
        >>> new = 2 * net
        >>> torch.equal(new.a.weight, net.a.weight), torch.equal(new.b.weight, 2 * net.b.weight)
        (True, True)
        """
        for label, value in (("operational", operational), ("clone", clone)):
            if value is not None and not isinstance(value, bool):
                raise SchemaError(f"set_param_config: {label} must be True, False or None, got "
                                  f"{value!r}")

        def setter(pid: int, conf: MutableParamConfig) -> None:
            if operational is not None:
                conf.operational = operational
            if clone is not None:
                conf.clone = clone

        self.apply_param_config(setter, name)

    def get_param_id(self, param: torch.Tensor) -> int:
        """The stable id of ``param`` (one of this particle's parameter objects)."""
        root, h, path, p = _current(self, touch=False)
        objs = _objs_of(root, h)
        for spec in h.schema.params:
            if objs.get(spec.key) is param:
                return spec.pid  # type: ignore[return-value]
        raise SchemaError("get_param_id: the tensor given is not a parameter of this particle "
                          "(pass the Parameter object itself, e.g. net.layer.weight)")

    # -- structural events ----------------------------------------------------------------------
    def _bound(self) -> bool:
        return _TAGS.get(self) is not None

    def _event(self, name: str, value: Any, kind: str, persistent: bool = True) -> None:
        """Put ``value`` (kind param/buffer/module, or None) at ``name`` as species events."""
        if not isinstance(name, str) or not name or "." in name:
            raise SchemaError(f"attribute name must be a non-empty string without dots, got {name!r}")
        root, h, path, p = _current(self)
        if h.locked:
            raise VersionError(_LOCKED)
        full = f"{path}.{name}" if path else name
        existing = _kind_at(self, name)
        if kind == "param" and value is not None and value.requires_grad and not (
                value.is_floating_point() or value.is_complex()):
            raise SchemaError(f"{full!r}: only floating point parameters can require grad")
        if value is None:
            if existing in ("param", "module"):
                q = _edit.set_none(p, full)
            elif existing == "buffer":
                q = _edit.del_buffer(p, full)
            else:
                _plain_set(self, name, None, kind)
                return
        elif existing in ("param", "buffer", "module"):
            removal = _REMOVAL[existing](full)
            _dry_run(p, full, removal, lambda: _addition_event(full, value, kind, persistent))
            q = _edit.commit(p, lambda _: (removal, {}), f"replace {full}")
            q = self._add(q, full, value, kind, persistent)
        else:  # a new name, or a None entry filled again (the core's add events allow both)
            q = self._add(p, full, value, kind, persistent)
        _plain_set(self, name, value, kind, persistent)
        if kind == "module" and value is not None:
            _tag_tree(value, h, full)
        _write_back(root, h, q)

    @staticmethod
    def _add(p: Particle, full: str, value: Any, kind: str, persistent: bool) -> Particle:
        if kind == "param":
            return _edit.add_param(p, full, value)
        if kind == "buffer":
            return _edit.add_buffer(p, full, value, persistent=persistent)
        return _edit.add_module(p, full, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__") or not self._bound():
            if isinstance(value, nn.Module):
                _PARENTS[value] = weakref.ref(self)
            return super().__setattr__(name, value)
        existing = _kind_at(self, name)
        if isinstance(value, nn.Parameter):
            return self._event(name, value, "param")
        if isinstance(value, nn.Module):
            return self._event(name, value, "module")
        if value is None and existing in ("param", "buffer", "module"):
            return self._event(name, None, existing)
        if existing == "buffer" and isinstance(value, torch.Tensor):
            persistent = name not in self._non_persistent_buffers_set
            return self._event(name, value, "buffer", persistent)
        if existing == "buffer" and value is not None:
            raise SchemaError(f"cannot assign {type(value).__name__} as buffer {name!r} "
                              "(torch.Tensor or None expected)")
        if existing == "param" and value is not None:
            raise SchemaError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                              "(torch.nn.Parameter or None expected)")
        return super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        existing = _kind_at(self, name) if self._bound() else None
        if existing not in ("param", "buffer", "module"):
            return super().__delattr__(name)
        root, h, path, p = _current(self)
        if h.locked:
            raise VersionError(_LOCKED)
        full = f"{path}.{name}" if path else name
        q = {"param": _edit.del_param, "buffer": _edit.del_buffer,
             "module": _edit.remove_module}[existing](p, full)
        nn.Module.__delattr__(self, name)
        _write_back(root, h, q)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        if not self._bound():
            return super().register_parameter(name, param)
        return self._register("register_parameter", name, param, nn.Parameter, "param",
                              super().register_parameter)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        if not self._bound():
            if isinstance(module, nn.Module):
                _PARENTS[module] = weakref.ref(self)
            return super().add_module(name, module)
        return self._register("add_module", name, module, nn.Module, "module", super().add_module)

    def _register(self, what: str, name: str, value: Any, cls: type, kind: str,
                  plain: Callable[[str, None], None]) -> None:
        """register_parameter/add_module on a bound module: an event, or a plain None slot."""
        if value is not None and not isinstance(value, cls):
            raise SchemaError(f"{what}: {name!r} must be an nn.{cls.__name__} or None, got "
                              f"{type(value).__name__}")
        existing = _kind_at(self, name)
        if value is None and existing not in ("param", "module", "buffer"):
            return plain(name, None)
        return self._event(name, value, kind if value is not None else existing)

    register_module = add_module

    def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        """Register a buffer; on an existing buffer this updates *this particle's* value only.

        A new buffer (or one of another shape or dtype) is a species event; re-registering an
        existing buffer with a tensor of its shape and dtype is per-particle state, no event
        (the seed's Solution 2). Assigning ``self.name = tensor`` stays a species event.
        """
        if not self._bound():
            return super().register_buffer(name, tensor, persistent)
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise SchemaError(f"register_buffer: {name!r} must be a tensor or None, got "
                              f"{type(tensor).__name__}")
        existing = _kind_at(self, name)
        if existing == "buffer" and tensor is not None:
            old = self._buffers[name]
            same_persistence = persistent == (name not in self._non_persistent_buffers_set)
            h, path = _handle_of(self)
            full = f"{path}.{name}" if path else name
            spec = h.schema.by_path.get(full)
            if (same_persistence and spec is not None and spec.leaf and old is not None
                    and tensor.shape == old.shape and tensor.dtype == old.dtype):
                self._buffers[name] = tensor
                return None
        if tensor is None and existing != "buffer":
            return super().register_buffer(name, None, persistent)
        return self._event(name, tensor, "buffer", persistent)


install_operators(NytoModule,
                  lambda self, other, op: self._binary(other, op, False),
                  lambda self, other, op: self._binary(other, op, True),
                  lambda self, other, op: self._inplace(other, op))
