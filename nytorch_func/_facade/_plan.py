"""The layout cache: reading an unchanged module tree, and result trees built when first used.

A :class:`Layout` says how one schema lies in a module tree of one shape: per module, the sizes
of its ``_parameters``/``_buffers``/``_modules`` dicts, which value sits under which name, which
child sits under which name, what is ``None``. It holds names and indices only (no modules, no
tensors), so the source tree and every tree built from it share it.

A :class:`Plan` is a layout plus one tree's modules (by weak reference) and the leaves it held
when last read. ``Plan.read`` gives the tree's modules and leaves if the tree still has exactly
this structure (per module a few ``len`` calls and identity checks; per leaf its dtype, and its
shape and device where the tensor object changed), else ``None``: then ``_sync`` turns the
changes into events.

A particle operation's result is a :class:`Deferred` tree: its root module exists at once (of
the source's class, tagged with its own handle), but its modules are made when it is first
used: any attribute of the root (``out.net``, ``out(x)``, ``out.training``, ...), an edit, a
copy. Until then the root holds a snapshot of the source modules' attributes (shallow copies
of their ``__dict__``, taken now, as nytorch's ``copy_module`` does) and the result's tensors;
an operation on a result that was never used reads it for free. Materialising makes one module
per source module, the new tensors written straight into the copies' dicts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._particle import Particle
from .._schema import Schema
from ._config import carried_copy
from ._handle import TAGS, NytoModuleBase, ParticleHandle

__all__ = ["Layout", "Plan", "Deferred", "OP", "CLONE", "AS_IS", "as_param", "materialize",
           "DEFERRED", "deferrable"]

OP, CLONE, AS_IS = 0, 1, 2  # build modes: after an operation, for clone(), values as they are
_NEW, _COPY, _SAME = 0, 1, 2  # per leaf, after an operation: computed, carried copy, carried
DEFERRED = "_nytorch_func_deferred"  # the key of a deferred root's record in its __dict__

_P = nn.Parameter
_T = torch.Tensor
_make_subclass = torch.Tensor._make_subclass
_new_object = object.__new__
_set_dict = object.__setattr__
_MISSING = object()

# The classes whose roots may be deferred: those whose attribute hooks materialise (set by
# _module to NytoModule's hooks; a subclass overriding them is built at once instead).
deferrable: dict[str, Any] = {}


def as_param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    """``t`` as an ``nn.Parameter`` (itself if it is one; else a new one sharing its storage)."""
    if isinstance(t, _P):
        return t
    if type(t) is _T:
        return _make_subclass(_P, t.detach(), requires_grad)
    return nn.Parameter(t, requires_grad=requires_grad)


def _own_param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    """A tensor nobody else holds (an operation's output) made an ``nn.Parameter`` in place,
    as torch's ``UninitializedParameter.materialize`` does, instead of a new wrapper."""
    if type(t) is _T:
        t.__class__ = _P
        if requires_grad:
            t.requires_grad_(True)
        return t  # type: ignore[return-value]
    return as_param(t, requires_grad)


class Layout:
    """How one schema lies in a module tree of one shape (see the module docstring).

    ``reads``: per module ``(n_params, n_buffers, n_modules, param checks, buffer checks,
    children)``, a check being ``(name, slot, shape, dtype, on_cpu, device)`` of a leaf's first
    place (slots count leaves in module order; ``perm`` puts them in leaf order), a child
    ``(name, module index)``. ``again``: places that must hold the same object as an earlier one
    (a tied tensor) or a shared tensor, ``(module, is_param, name, value index)``; ``nones``:
    ``(module, dict name, name)`` entries that must be ``None``. ``makes``: per module its
    parameters, buffers and children in order as ``(name, value or module index, -1 for None)``.
    Values are the leaves, then the shared tensors of ``shared_keys``. ``acts``/``grads``: per
    leaf, what an operation's result holds (computed, a copy, the very tensor) and whether it
    requires grad. ``nyto``/``flat``/``npb``: modules to tag, RNNs (flat weight lists), modules
    with non-persistent buffers.
    """

    __slots__ = ("paths", "links", "reads", "perm", "again", "nones", "makes", "order", "n_leaves",
                 "shared_keys", "acts", "grads", "is_param", "all_new", "nyto", "flat", "npb",
                 "classes", "defer", "unchanged")

    @classmethod
    def of(cls, root: nn.Module, schema: Schema) -> "tuple[Layout, list[nn.Module]] | None":
        """The layout of ``root``'s tree for ``schema`` and its modules; None if it does not fit."""
        lay = cls.__new__(cls)
        mods: list[nn.Module] = []
        index: dict[int, int] = {}
        paths: list[str] = []
        links: list[tuple[int, str, int]] = []
        leaf_index = schema.leaf_index
        specs = schema.leaf_specs
        n = len(specs)
        shared_keys = tuple(schema.shared)
        shared_at = {k: n + i for i, k in enumerate(shared_keys)}
        first: dict[int, int] = {}  # leaf index -> slot
        checks: list[tuple[list, list]] = []
        place: list[int] = []
        again, nones, makes = [], [], []
        # iterative depth-first walk in named_modules order (a recursive closure would be a cycle)
        stack: list[tuple[nn.Module, str, int, str]] = [(root, "", -1, "")]
        while stack:
            m, prefix, parent, name = stack.pop()
            if id(m) in index:
                links.append((parent, name, index[id(m)]))
                continue
            i = len(mods)
            index[id(m)] = i
            mods.append(m)
            paths.append(prefix[:-1])
            if parent >= 0:
                links.append((parent, name, i))
            d = m.__dict__
            mine: tuple[list, list] = ([], [])
            entries: tuple[list, list] = ([], [])
            for kind, dn in ((0, "_parameters"), (1, "_buffers")):
                for tname, t in d[dn].items():
                    if t is None:
                        nones.append((i, dn, tname))
                        entries[kind].append((tname, -1))
                        continue
                    spec = schema.by_path.get(prefix + tname)
                    if spec is None or spec.kind != ("param", "buffer")[kind]:
                        return None
                    at = leaf_index[spec.key] if spec.key in leaf_index else shared_at[spec.key]
                    entries[kind].append((tname, at))
                    if at < n and at not in first:
                        first[at] = len(place)
                        place.append(at)
                        mine[kind].append((tname, torch.Size(spec.shape), spec.dtype,
                                           spec.device.type == "cpu", spec.device))
                    else:
                        again.append((i, kind == 0, tname, at))
            for cname, c in d["_modules"].items():
                if c is None:
                    nones.append((i, "_modules", cname))
            checks.append(mine)
            makes.append([tuple(entries[0]), tuple(entries[1]), None,
                          len(d["_parameters"]), len(d["_buffers"]), len(d["_modules"])])
            for cname, c in reversed(d["_modules"].items()):
                if c is not None:
                    stack.append((c, prefix + cname + ".", i, cname))
        if len(first) != n:  # a leaf of the schema is not in the tree
            return None
        kids: list[dict] = [{} for _ in mods]
        for p, name, c in links:
            kids[p][name] = c
        reads = []
        slot = 0
        for i, m in enumerate(mods):
            rec = makes[i]
            children = tuple((name, kids[i].get(name, -1)) for name in m.__dict__["_modules"])
            rec[2] = children
            pc, bc = checks[i]
            pcs = tuple((name, slot + k, *rest) for k, (name, *rest) in enumerate(pc))
            slot += len(pc)
            bcs = tuple((name, slot + k, *rest) for k, (name, *rest) in enumerate(bc))
            slot += len(bc)
            reads.append((rec[3], rec[4], rec[5], pcs, bcs,
                          tuple(x for x in children if x[1] >= 0)))
        lay.paths, lay.links, lay.reads = tuple(paths), tuple(links), tuple(reads)
        lay.again, lay.nones = tuple(again), tuple(nones)
        lay.perm = None if place == list(range(n)) else tuple(
            sorted(range(n), key=place.__getitem__))
        lay.makes = tuple((p, b, c) for p, b, c, *_ in makes)
        # children before parents when no module sits at two paths (then one pass builds all)
        lay.order = (None if any(c <= p for p, _, c in links)
                     else tuple(reversed(range(len(mods)))))
        lay.n_leaves, lay.shared_keys = n, shared_keys
        ops = set(schema.op_index)
        lay.acts = tuple(_NEW if i in ops else
                         (_COPY if spec.kind == "param" and carried_copy(spec.config) else _SAME)
                         for i, spec in enumerate(specs))
        lay.grads = tuple(spec.requires_grad for spec in specs)
        lay.is_param = tuple(spec.kind == "param" for spec in specs)
        lay.all_new = schema.all_operational
        lay.nyto = tuple(i for i, m in enumerate(mods) if isinstance(m, NytoModuleBase))
        lay.flat = tuple(i for i, m in enumerate(mods) if "_flat_weights_names" in m.__dict__)
        lay.npb = tuple(i for i, m in enumerate(mods) if m.__dict__["_non_persistent_buffers_set"])
        lay.classes = tuple(type(m) for m in mods)
        lay.defer = deferrable.get("getattr") is getattr(lay.classes[0], "__getattr__", None)
        lay.unchanged = None if lay.again or lay.nones else _compile_unchanged(lay)
        return lay, mods

    def values(self, q: Particle, mode: int) -> list:
        """The tensors a tree built from ``q`` holds: leaves (see :meth:`Plan.build`), shared."""
        leaves = q._leaves
        if mode == OP and self.all_new:  # the hot path: every leaf a new operational parameter
            values = list(leaves)
            for i, (t, rg) in enumerate(zip(values, self.grads)):
                if type(t) is _T:
                    t.__class__ = _P
                    if rg:
                        t.requires_grad_(True)
                elif not isinstance(t, _P):
                    values[i] = nn.Parameter(t, requires_grad=rg)
        else:
            values = [_value(t, act, rg, param, mode)
                      for t, act, rg, param in zip(leaves, self.acts, self.grads, self.is_param)]
        if self.shared_keys:
            shared = q._schema.shared
            values.extend(shared[k] for k in self.shared_keys)
        return values


class Plan:
    """A tree's modules (by weak reference), the :class:`Layout` of its schema in them, and the
    leaves the tree held when last read (``known``, in module order).

    Weak references to modules: a strong one would keep the tree alive through the handle,
    which the tag table holds.
    """

    __slots__ = ("schema", "mods", "layout", "known", "leaves", "particle")
    deferred = False

    def __init__(self, schema: Schema, mods: tuple, layout: Layout, known: tuple = (),
                 leaves: tuple = ()) -> None:
        self.schema, self.mods, self.layout, self.known = schema, mods, layout, known
        self.leaves = leaves
        self.particle: Particle | None = None  # the last particle made of ``leaves``

    @classmethod
    def of(cls, root: nn.Module, schema: Schema) -> "Plan | None":
        """The plan of ``root``'s tree for ``schema``, or None where the tree does not fit it."""
        got = Layout.of(root, schema)
        if got is None:
            return None
        lay, mods = got
        return cls(schema, tuple(weakref.ref(m) for m in mods), lay)

    def modules_by_path(self) -> dict[str, nn.Module | None]:
        """``{path: module}`` the tree had when planned (None where a module was freed since),
        every path of a module that sits at several."""
        lay = self.layout
        mods = [ref() for ref in self.mods]
        out = {"": mods[0]}
        for p, name, c in lay.links:
            parent = lay.paths[p]
            out[f"{parent}.{name}" if parent else name] = mods[c]
        return out

    def read(self) -> "tuple[list[nn.Module], tuple] | None":
        """``(modules, leaves)`` if the tree still has exactly the planned structure, else None.

        While every leaf is the object the last read found, the same leaves tuple comes back
        (so the caller may keep the particle it made of it).
        """
        lay = self.layout
        mods = [ref() for ref in self.mods]
        known = self.known
        if known and lay.unchanged is not None and lay.unchanged(mods, known):
            return mods, self.leaves
        values = []
        same = bool(known)
        try:
            for m, (n_p, n_b, n_m, pc, bc, kids) in zip(mods, lay.reads):
                d = m.__dict__
                ps = d["_parameters"]
                bs = d["_buffers"]
                ms = d["_modules"]
                if len(ps) != n_p or len(bs) != n_b or len(ms) != n_m:
                    return None
                for name, c in kids:  # every child is still the very module planned
                    if ms.get(name) is not mods[c]:
                        return None
                for name, k, shape, dtype, cpu, device in pc:
                    t = ps.get(name)
                    if t is None or t.dtype is not dtype:
                        return None
                    if not same or t is not known[k]:  # a new object: check it all
                        same = False
                        if t.shape != shape or (not t.is_cpu if cpu else t.device != device):
                            return None
                    values.append(t)
                for name, k, shape, dtype, cpu, device in bc:
                    t = bs.get(name)
                    if t is None or t.dtype is not dtype:
                        return None
                    if not same or t is not known[k]:
                        same = False
                        if t.shape != shape or (not t.is_cpu if cpu else t.device != device):
                            return None
                    values.append(t)
        except AttributeError:  # a module was freed (None)
            return None
        if lay.again:
            shared, n = self.schema.shared, lay.n_leaves
            ordered = values if lay.perm is None else [values[i] for i in lay.perm]
            for i, is_param, name, at in lay.again:
                want = ordered[at] if at < n else shared[lay.shared_keys[at - n]]
                if mods[i].__dict__["_parameters" if is_param else "_buffers"].get(name) is not want:
                    return None
        for i, dn, name in lay.nones:
            if mods[i].__dict__[dn].get(name, _MISSING) is not None:
                return None
        if same:
            return mods, self.leaves
        self.known = tuple(values)
        self.leaves = tuple(values) if lay.perm is None else tuple(values[i] for i in lay.perm)
        return mods, self.leaves

    def build(self, mods: list[nn.Module] | None, q: Particle, mode: int = OP) -> nn.Module:
        """A new tree shaped like this one holding ``q``'s tensors (a :class:`Deferred` root).

        ``mode=OP``: ``q`` is an operation's result on this tree's particle: computed leaves
        are fresh tensors nobody else holds (made parameters in place); parameters it carried
        over are copied unless nytorch's ``clone=False`` says to keep the very tensor; buffers
        stay the very tensors (nytorch shares them between particles). ``CLONE``: the same for
        ``+p`` (computed leaves are the source's and are copied). ``AS_IS``: every value as
        ``q`` holds it (a ParamProduct's result).
        """
        snaps = []
        for m in mods:  # type: ignore[union-attr]
            snap = m.__dict__.copy()  # attributes as they are now; no hold on the tensors
            snap["_parameters"] = snap["_buffers"] = snap["_modules"] = None
            snaps.append(snap)
        for i in self.layout.flat:
            snaps[i]["_flat_weights"] = None
        return Deferred.make(self.layout, snaps, q, mode)


class Deferred:
    """The record of a result tree not yet built (see the module docstring).

    Stands in for a :class:`Plan` on the root's handle (``handle.plan``) and in the root's
    ``__dict__`` until :func:`materialize` builds the tree.
    """

    __slots__ = ("schema", "layout", "snaps", "values", "_particle", "alone")
    deferred = True

    @property
    def particle(self) -> Particle:
        """The result's particle: its tensors, as the tree will hold them."""
        p = self._particle
        if p is None:
            p = self._particle = Particle._make(self.schema, tuple(self.values[:self.layout.n_leaves]),
                                                self.snaps[0].get("training", True))
        return p

    @classmethod
    def make(cls, lay: Layout, snaps: list[dict], q: Particle, mode: int,
             alone: bool = True) -> nn.Module:
        d = cls.__new__(cls)
        d.schema, d.layout, d.snaps, d._particle, d.alone = q._schema, lay, snaps, None, alone
        d.values = lay.values(q, mode)
        root = _new_object(lay.classes[0])
        h = ParticleHandle(q._schema, root, d)
        TAGS[root] = (h, "")
        if lay.defer:
            root.__dict__[DEFERRED] = d
        else:  # a class with attribute hooks of its own: build it now
            materialize(root, d, h)
        return root

    def build(self, mods: None, q: Particle, mode: int = OP) -> nn.Module:
        """A result of this (never used) tree: the same snapshot, other tensors."""
        self.alone = False  # the snapshot is shared now: each tree built copies it
        return Deferred.make(self.layout, self.snaps, q, mode, alone=False)

    def read(self) -> None:
        return None


def materialize(root: nn.Module, d: Deferred | None = None, h: ParticleHandle | None = None) -> None:
    """Build the modules of a deferred tree (in place: ``root`` stays the root)."""
    rd = root.__dict__
    if d is None:
        d = rd.pop(DEFERRED, None)
        if d is None:
            return
        h = TAGS.get(root)[0]
    lay, snaps, values = d.layout, d.snaps, d.values
    n = len(snaps)
    new: list = [None] * n
    new[0] = root
    children: list = [None] * n
    alone = d.alone
    npbs = {i: set(snaps[i]["_non_persistent_buffers_set"]) for i in lay.npb}
    for i in (lay.order or range(n)):
        d_i = snaps[i] if alone else snaps[i].copy()
        pputs, bputs, kids = lay.makes[i]
        entries = d_i["_parameters"] = {}
        for name, at in pputs:
            entries[name] = None if at < 0 else values[at]
        entries = d_i["_buffers"] = {}
        for name, at in bputs:
            entries[name] = None if at < 0 else values[at]
        entries = d_i["_modules"] = {}
        children[i] = (entries, kids)
        d_i["_non_persistent_buffers_set"] = set()
        if i:
            m = new[i] = _new_object(lay.classes[i])
            _set_dict(m, "__dict__", d_i)
        else:
            rd.update(d_i)
        if lay.order is not None:
            for name, c in kids:
                entries[name] = None if c < 0 else new[c]
    if lay.order is None:  # a module at two paths: link after all exist
        for entries, kids in children:
            for name, c in kids:
                entries[name] = None if c < 0 else new[c]
    for i, names in npbs.items():  # each tree its own set (the snapshot holds the source's)
        new[i].__dict__["_non_persistent_buffers_set"] = names
    for i in lay.flat:
        new[i]._init_flat_weights()
    leaves = tuple(d.values[:lay.n_leaves])
    h.plan = Plan(d.schema, tuple(weakref.ref(m) for m in new), lay, _module_order(lay, leaves),
                  leaves)
    for i in lay.nyto[1:] if lay.nyto and lay.nyto[0] == 0 else lay.nyto:
        TAGS[new[i]] = (h, lay.paths[i])


def _compile_unchanged(lay: Layout) -> Callable[[list, tuple], bool]:
    """``unchanged(modules, known)``: whether the tree is exactly as last read (the same module
    and tensor objects under the same names, dict sizes, dtypes), as straight-line code for this
    layout. The general loop of :meth:`Plan.read` does the same checks; this is its fast path
    (no loops or tuple unpacking per module: about half the time on a small model)."""
    consts: dict[str, Any] = {}
    lines = ["def unchanged(mods, known):", "    try:",
             "        " + "".join(f"m{i}, " for i in range(len(lay.reads))) + "= mods"]
    for i, (n_p, n_b, n_m, pc, bc, kids) in enumerate(lay.reads):
        lines.append(f"        d = m{i}.__dict__")
        for dn, n, checks in (("_parameters", n_p, pc), ("_buffers", n_b, bc)):
            lines.append(f"        e = d[{dn!r}]")
            lines.append(f"        if len(e) != {n}: return False")
            for name, k, _, dtype, _, _ in checks:
                consts[f"D{k}"] = dtype
                lines.append(f"        t = e.get({name!r})")
                lines.append(f"        if t is not known[{k}] or t.dtype is not D{k}: return False")
        lines.append("        e = d['_modules']")
        lines.append(f"        if len(e) != {n_m}: return False")
        for name, c in kids:
            lines.append(f"        if e.get({name!r}) is not m{c}: return False")
    lines += ["    except (AttributeError, ValueError):  # a module freed", "        return False",
              "    return True"]
    exec(compile("\n".join(lines), f"<nytorch_func layout check of {len(lay.reads)} modules>",
                 "exec"), consts)
    return consts.pop("unchanged")  # (kept in its own globals it would be a reference cycle)


def _module_order(lay: Layout, leaves: tuple) -> tuple:
    """The leaves in the order :meth:`Plan.read` meets them (module order)."""
    if lay.perm is None:
        return tuple(leaves)
    out: list = [None] * len(leaves)
    for at, slot in enumerate(lay.perm):
        out[slot] = leaves[at]
    return tuple(out)


def _value(t: torch.Tensor, act: int, rg: bool, param: bool, mode: int) -> torch.Tensor:
    if not param:
        return t  # buffers: the very tensors
    if mode == AS_IS:
        return as_param(t, rg)
    if act == _SAME:
        return as_param(t, rg)
    if act == _COPY or mode == CLONE:
        return _own_param(t.detach().clone(), rg)
    return _own_param(t, rg)
