"""Writing a core particle into a module tree: after an event, a touch, or to build a module.

``write_back`` makes a live tree match a particle's schema (its skeleton) holding the particle's
tensors, in place: entries the schema dropped are removed, entries it added are put in, and
submodules the tree lacks (or that an event added anew) are materialised from the skeleton.
Entries already holding the right tensor object are left alone, so a touch changes only what
the events between the two versions changed. ``from_skeleton`` builds a whole tree.
"""

from __future__ import annotations

import copy as _copy
from typing import Any

import torch
from torch import nn

from .._batch import Batch
from .._migrate import events_between
from .._particle import Particle
from .._resize import Resize
from .._schema import Schema
from ._handle import BUILDING, TAGS, NytoModuleBase, ParticleHandle, tag_tree
from ._plan import DEFERRED, Plan, as_param, materialize

__all__ = ["write_back", "from_skeleton", "from_particle", "tensors_by_path", "refresh_flat"]

_MISSING = object()


def tensors_by_path(q: Particle) -> dict[str, torch.Tensor]:
    """``{path: tensor}`` for every path of ``q`` (parameters as ``nn.Parameter``)."""
    s = q._schema
    objs: dict[str, torch.Tensor] = {}
    for spec, t in zip(s.leaf_specs, q._leaves):
        if spec.kind == "param":
            t = as_param(t, spec.requires_grad)
        for path in spec.paths:
            objs[path] = t
    for key, t in s.shared.items():
        for path in s.by_path[key].paths:
            objs[path] = t
    return objs


def refresh_flat(m: nn.Module) -> None:
    if "_flat_weights_names" in m.__dict__:  # RNNs keep a list of their weights: refresh it
        m._init_flat_weights()


def from_skeleton(sk: nn.Module, prefix: str, objs: dict[str, torch.Tensor],
                memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of skeleton module ``sk`` (at ``prefix``) holding ``objs``' tensors.

    ``memo`` is shared across calls of one write, so a skeleton module that sits at several
    paths (an alias) becomes one live module. The caller holds the species' call lock: no
    forward pass may have tensors swapped into the skeleton meanwhile.
    """
    memo = {} if memo is None else memo
    for rel, t in [*sk.named_parameters(remove_duplicate=False),
                   *sk.named_buffers(remove_duplicate=False)]:
        memo.setdefault(id(t), objs[prefix + rel])
    memo.setdefault(id(memo), [])
    new = _copy.deepcopy(sk, memo)
    for m in new.modules():
        refresh_flat(m)
    return new


def write_back(root: nn.Module, h: ParticleHandle, q: Particle, fresh: set[str] = frozenset()) -> None:
    """Make ``root``'s tree hold ``q`` (in place); ``h`` then is at ``q``'s version.

    ``fresh``: paths of submodules to materialise anew even if the tree has a module there (a
    module an event added for recipients replaces whatever the tree held).
    """
    if DEFERRED in root.__dict__:
        materialize(root)
    s = q._schema
    objs = tensors_by_path(q)
    w = _Write(objs, fresh, h)
    plan = h.plan
    if plan is not None and not plan.deferred and plan.schema is h.schema:
        # the module each skeleton module of the tree's version had: a module the new version
        # keeps under another name (del seq[i] renumbers) is moved there, not rebuilt
        had = plan.modules_by_path()
        for path, sk in h.schema._skeleton.named_modules(remove_duplicate=False):
            m = had.get(path)
            if m is not None:
                w.moved.setdefault(id(sk), m)
        w.claimed = {id(w.moved[id(sk)]) for _, sk in s._skeleton.named_modules()
                     if id(sk) in w.moved}
    with s.species._call_lock:
        _reconcile(w, root, s._skeleton, "")
        for modules, name, sk, path in w.pending:  # submodules the tree lacks, after the walk
            child = w.done.get(id(sk))
            if child is None:
                child = w.done[id(sk)] = from_skeleton(sk, path + ".", objs, w.memo)
                tag_tree(child, h, path)
            modules[name] = child
        _resized_attributes(w, h.schema, s)
    h.schema = s
    h.plan = Plan.of(root, s)


def _resized_attributes(w: _Write, old: Schema, new: Schema) -> None:
    """Copy the module attributes growth events record (``out_features``, ``num_features``,
    ``normalized_shape``, ...) from the new version's skeleton into the tree's modules."""
    if old is new or old.species is not new.species or old.version >= new.version:
        return
    names = {attr for event in _flat(events_between(old, new)) if isinstance(event, Resize)
             for _, attr, _ in event.attrs}
    if not names:
        return
    for sk in new._skeleton.modules():
        m = w.done.get(id(sk))
        if m is not None:
            for name in names & sk.__dict__.keys():
                m.__dict__[name] = sk.__dict__[name]


def _flat(events: list) -> list:
    """``events`` with the steps of every Batch in place of the batch."""
    out = []
    for e in events:
        out.extend(_flat(list(e.events)) if isinstance(e, Batch) else [e])
    return out


class _Write:
    """The state of one write: skeleton module -> live module (aliases become one module)."""

    __slots__ = ("objs", "fresh", "h", "done", "live", "pending", "memo", "moved", "claimed")

    def __init__(self, objs: dict, fresh: set[str], h: ParticleHandle) -> None:
        self.objs, self.fresh, self.h = objs, fresh, h
        self.moved: dict[int, nn.Module] = {}  # id(skeleton module) -> the tree's module
        self.claimed: set[int] = set()  # the tree's modules that the new version keeps
        self.done: dict[int, nn.Module] = {}
        self.live: set[int] = set()
        self.pending: list = []
        self.memo: dict[int, Any] = {}


def _reconcile(w: _Write, m: nn.Module, sk: nn.Module, prefix: str) -> None:
    """Make the tree under ``m`` match skeleton ``sk`` holding ``w.objs`` (in place)."""
    w.done[id(sk)] = w.memo[id(sk)] = m
    w.live.add(id(m))
    if isinstance(m, NytoModuleBase) and (TAGS.get(m) or (None, None))[0] is not w.h:
        TAGS[m] = (w.h, prefix[:-1])
        BUILDING.pop(m, None)
    objs = w.objs
    d = m.__dict__
    params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
    for name in [n for n in params if n not in sk._parameters]:
        del params[name]
    for name, s in sk._parameters.items():
        t = None if s is None else objs[prefix + name]
        if params.get(name, _MISSING) is not t:
            params[name] = t
            d.pop(name, None)
    for name in [n for n, t in buffers.items() if n not in sk._buffers and t is not None]:
        del buffers[name]
        d["_non_persistent_buffers_set"].discard(name)
    for name, s in sk._buffers.items():
        t = None if s is None else objs[prefix + name]
        if buffers.get(name, _MISSING) is not t:
            buffers[name] = t
            d.pop(name, None)
        if name in sk._non_persistent_buffers_set:
            d["_non_persistent_buffers_set"].add(name)
    for name in [n for n in modules if n not in sk._modules]:
        del modules[name]
    for name, s in sk._modules.items():
        path = prefix + name
        if s is None:
            modules[name] = None
            continue
        if id(s) in w.done:  # the skeleton holds this module at another path too: one module
            modules[name] = w.done[id(s)]
            continue
        child = modules.get(name)
        moved = w.moved.get(id(s))
        if moved is not None:
            if moved is not child and id(moved) not in w.live:
                child = modules[name] = moved  # a module of the tree under its new name
        elif child is not None and id(child) in w.claimed:
            child = None  # (it moved elsewhere: a module new in this version goes here)
        if child is None or path in w.fresh or id(child) in w.live:
            w.pending.append((modules, name, s, path))
            d.pop(name, None)
            continue
        _reconcile(w, child, s, path + ".")
    refresh_flat(m)


def from_particle(p: Particle, *, copy: bool = False) -> nn.Module:
    """A module tree holding ``p`` (same species and version), bound to a new handle."""
    s = p._schema
    objs = tensors_by_path(p.clone() if copy else p)
    with s.species._call_lock:
        root = from_skeleton(s._skeleton, "", objs)
    if p._training is not None:
        root.train(p._training)
    h = ParticleHandle(s, root)
    tag_tree(root, h, "")
    h.plan = Plan.of(root, s)
    return root
