"""The layout cache: reading an unchanged module tree and building result trees, fast.

A :class:`Layout` says how one schema lies in a module tree of one shape: per module, the sizes
of its ``_parameters``/``_buffers``/``_modules`` dicts and which value sits under which name;
which child sits under which name; what the tree holds that is ``None``. It holds names and
indices only (no modules, no tensors), so the source tree and every tree built from it share it.
A :class:`Plan` is a layout plus one tree's modules, by weak reference.

``Plan.read`` gives the tree's modules and leaves if the tree still has exactly this structure
(a few ``len`` calls, dict lookups and identity checks per module; shapes and dtypes per leaf),
else ``None``: then the slow path (``_sync``) turns the changes into events. ``Plan.build``
makes a new tree of the same shape holding a particle's tensors: one shallow copy per module
(attributes shared, as nytorch's ``copy_module`` does), the new tensors written straight into
the copies' dicts.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .._particle import Particle
from .._schema import Schema
from ._config import carried_copy
from ._handle import TAGS, NytoModuleBase, ParticleHandle

__all__ = ["Layout", "Plan", "OP", "CLONE", "AS_IS", "as_param"]

OP, CLONE, AS_IS = 0, 1, 2  # build modes: after an operation, for clone(), values as they are
_NEW, _COPY, _SAME = 0, 1, 2  # per leaf, after an operation: computed, carried copy, carried

_P = nn.Parameter
_T = torch.Tensor
_make_subclass = torch.Tensor._make_subclass
_new_object = object.__new__
_set_dict = object.__setattr__
_MISSING = object()
_DICTS = ("_parameters", "_buffers", "_modules")


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

    ``lens``: per module, the sizes of its three dicts. ``first``: per leaf, in leaf order,
    ``(module, is_param, name, shape, dtype, device)`` of its first place; ``again``: places
    that must hold the same object as an earlier one (a tied tensor) or a shared tensor,
    ``(module, is_param, name, value index)``; ``nones``: ``(module, dict name, name)``
    entries that must be ``None``; ``links``: ``(parent, name, child)`` module indices; ``puts``:
    per module, ``(name, value index)`` for its parameters and its buffers (values are the
    leaves, then the shared tensors of ``shared_keys``). ``acts``/``grads``: per leaf, what an
    operation's result holds (computed, a copy, the very tensor) and whether it requires grad.
    ``nyto``: the modules to tag; ``flat``: RNNs (flat weight lists).
    """

    __slots__ = ("paths", "lens", "first", "again", "nones", "links", "n_leaves", "shared_keys",
                 "puts", "acts", "grads", "is_param", "all_new", "nyto", "flat")

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
        first: dict[int, tuple] = {}
        again, nones, lens, puts = [], [], [], []
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
            mod_puts: list[list] = [[], []]
            for kind, dn in ((0, "_parameters"), (1, "_buffers")):
                for tname, t in d[dn].items():
                    if t is None:
                        nones.append((i, dn, tname))
                        continue
                    spec = schema.by_path.get(prefix + tname)
                    if spec is None or spec.kind != ("param", "buffer")[kind]:
                        return None
                    at = leaf_index[spec.key] if spec.key in leaf_index else shared_at[spec.key]
                    if at < n and at not in first:
                        first[at] = (i, kind == 0, tname, torch.Size(spec.shape), spec.dtype,
                                     spec.device)
                    else:
                        again.append((i, kind == 0, tname, at))
                    mod_puts[kind].append((tname, at))
            for cname, c in d["_modules"].items():
                if c is None:
                    nones.append((i, "_modules", cname))
            lens.append((len(d["_parameters"]), len(d["_buffers"]), len(d["_modules"])))
            puts.append((tuple(mod_puts[0]), tuple(mod_puts[1])))
            for cname, c in reversed(d["_modules"].items()):
                if c is not None:
                    stack.append((c, prefix + cname + ".", i, cname))
        if len(first) != n:  # a leaf of the schema is not in the tree
            return None
        lay.paths, lay.lens, lay.links = tuple(paths), tuple(lens), tuple(links)
        lay.first = tuple(first[at] for at in range(n))
        lay.again, lay.nones = tuple(again), tuple(nones)
        lay.n_leaves, lay.shared_keys, lay.puts = n, shared_keys, tuple(puts)
        ops = set(schema.op_index)
        lay.acts = tuple(_NEW if i in ops else
                         (_COPY if spec.kind == "param" and carried_copy(spec.config) else _SAME)
                         for i, spec in enumerate(specs))
        lay.grads = tuple(spec.requires_grad for spec in specs)
        lay.is_param = tuple(spec.kind == "param" for spec in specs)
        lay.all_new = schema.all_operational
        lay.nyto = tuple(i for i, m in enumerate(mods) if isinstance(m, NytoModuleBase))
        lay.flat = tuple(i for i, m in enumerate(mods) if "_flat_weights_names" in m.__dict__)
        return lay, mods


class Plan:
    """A tree's modules (by weak reference) and the :class:`Layout` of its schema in them.

    Weak references only: a strong one would keep the tree alive through the handle, which the
    tag table holds.
    """

    __slots__ = ("schema", "mods", "layout")

    def __init__(self, schema: Schema, mods: tuple, layout: Layout) -> None:
        self.schema, self.mods, self.layout = schema, mods, layout

    @classmethod
    def of(cls, root: nn.Module, schema: Schema) -> "Plan | None":
        """The plan of ``root``'s tree for ``schema``, or None where the tree does not fit it."""
        got = Layout.of(root, schema)
        if got is None:
            return None
        lay, mods = got
        return cls(schema, tuple(weakref.ref(m) for m in mods), lay)

    def read(self) -> "tuple[list[nn.Module], tuple] | None":
        """``(modules, leaves)`` if the tree still has exactly the planned structure, else None."""
        lay = self.layout
        mods = [ref() for ref in self.mods]
        pds, bds = [], []
        try:
            for m, (n_p, n_b, n_m) in zip(mods, lay.lens):
                d = m.__dict__
                ps, bs = d["_parameters"], d["_buffers"]
                if len(ps) != n_p or len(bs) != n_b or len(d["_modules"]) != n_m:
                    return None
                pds.append(ps)
                bds.append(bs)
        except AttributeError:  # a module was freed (None)
            return None
        values = []
        for i, is_param, name, shape, dtype, device in lay.first:
            t = (pds if is_param else bds)[i].get(name)
            if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
                return None
            values.append(t)
        if lay.again:
            shared, n = self.schema.shared, lay.n_leaves
            for i, is_param, name, at in lay.again:
                want = values[at] if at < n else shared[lay.shared_keys[at - n]]
                if (pds if is_param else bds)[i].get(name) is not want:
                    return None
        for i, dn, name in lay.nones:
            if mods[i].__dict__[dn].get(name, _MISSING) is not None:
                return None
        for p, name, c in lay.links:  # every child is still the very module planned
            if mods[p]._modules.get(name) is not mods[c]:
                return None
        return mods, tuple(values)

    def build(self, mods: list[nn.Module], q: Particle, mode: int = OP) -> nn.Module:
        """A new tree shaped like ``mods`` holding ``q``'s tensors, tagged with a new handle.

        ``mode=OP``: ``q`` is an operation's result on this tree's particle: computed leaves
        are fresh tensors nobody else holds (made parameters in place); parameters it carried
        over are copied unless nytorch's ``clone=False`` says to keep the very tensor; buffers
        stay the very tensors (nytorch shares them between particles). ``CLONE``: the same for
        ``+p`` (computed leaves are the source's and are copied). ``AS_IS``: every value as
        ``q`` holds it (a ParamProduct's result).
        """
        lay = self.layout
        leaves = q._leaves
        if mode == OP and lay.all_new:  # the hot path: every leaf a new operational parameter
            values = list(leaves)
            for i, (t, rg) in enumerate(zip(values, lay.grads)):
                if type(t) is _T:
                    t.__class__ = _P
                    if rg:
                        t.requires_grad_(True)
                elif not isinstance(t, _P):
                    values[i] = nn.Parameter(t, requires_grad=rg)
        else:
            values = [_value(t, act, rg, param, mode)
                      for t, act, rg, param in zip(leaves, lay.acts, lay.grads, lay.is_param)]
        if lay.shared_keys:
            shared = q._schema.shared
            values.extend(shared[k] for k in lay.shared_keys)
        new: list[nn.Module] = []
        children = []
        for m, (pputs, bputs) in zip(mods, lay.puts):
            src = m.__dict__
            d = src.copy()
            pd = d["_parameters"] = src["_parameters"].copy()
            for name, at in pputs:
                pd[name] = values[at]
            bd = d["_buffers"] = src["_buffers"].copy()
            for name, at in bputs:
                bd[name] = values[at]
            children.append(src["_modules"].copy())
            d["_modules"] = children[-1]
            d["_non_persistent_buffers_set"] = src["_non_persistent_buffers_set"].copy()
            n = _new_object(m.__class__)
            _set_dict(n, "__dict__", d)
            new.append(n)
        for p, name, c in lay.links:
            children[p][name] = new[c]
        for i in lay.flat:
            m = new[i]
            m.__dict__["_flat_weights"] = list(m._flat_weights)
            m._init_flat_weights()
        h = ParticleHandle(q._schema, new[0], Plan(q._schema, tuple(map(weakref.ref, new)), lay))
        for i in lay.nyto:
            TAGS[new[i]] = (h, lay.paths[i])
        return new[0]


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
