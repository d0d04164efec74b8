"""Reading a NytoModule's tree as a core particle: the fast path, edits made behind the facade's
back (in plain ``nn.Module`` children) turned into core events, and touch written back.

``current`` is what every facade call starts with: the tree's particle (at the species head
when asked), read through the tree's plan when nothing changed. When the plan no longer fits,
``sync`` compares the tree with its version's skeleton and commits what changed as one core
event (a ``Batch`` when there are several), then ``touch_tree`` brings the tree to the head.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .. import _edit
from .._containers import DelChild, InsertModules, is_indexed
from .._convert import Convert
from .._errors import SchemaError
from .._batch import Batch
from .._events import AddModule, DelBuffer, DelModule, DelParam, Event, SetNone
from .._sharing import Tie
from .._particle import Particle
from .._schema import Schema, computable, split_path
from .._migrate import events_between
from .._touch import touch as core_touch
from ._bind import cycle_error, root_of
from ._handle import ParticleHandle
from ._plan import DEFERRED, Plan, materialize
from ._write import write_back

__all__ = ["current", "sync", "touch_tree", "commit_steps", "added_modules", "WHAT"]

WHAT = "NytoModule"  # how errors of facade events name the caller
_MISSING = object()


def current(module: nn.Module, touch: bool = True):
    """``(root, handle, path, particle, modules)`` of the tree ``module`` belongs to.

    The particle views the tree's own tensors, at the tree's version after any edits made
    behind the facade's back were committed, and at the species head when ``touch``.
    ``modules``: the tree's modules in plan order (for :meth:`Plan.build`), or None.
    """
    root, h, path = root_of(module)
    plan, s = h.plan, h.schema
    if plan is not None and plan.schema is s and (not touch or s._next is None):
        if plan.deferred:  # a result never used: its tensors are all there is to read
            return root, h, path, plan.particle, None
        got = plan.read()
        if got is not None:
            p = plan.particle
            if p is None or p._leaves is not got[1] or p._training != root.training:
                p = plan.particle = Particle._make(s, got[1], root.training)
            return root, h, path, p, got[0]
    if DEFERRED in root.__dict__:
        materialize(root)
    sync(root, h)
    if touch:
        touch_tree(root, h)
    plan = h.plan
    if plan is None or plan.schema is not h.schema:
        plan = h.plan = Plan.of(root, h.schema)
    got = None if plan is None else plan.read()
    if got is None:  # a tree the plan cannot describe: read it the slow way
        return root, h, path, _read_by_path(root, h), None
    return root, h, path, Particle._make(h.schema, got[1], root.training), got[0]


def touch_tree(root: nn.Module, h: ParticleHandle) -> None:
    """Bring the tree to the species head: core touch, written back into the tree."""
    old = h.schema
    if old.is_newest:
        return
    plan = h.plan
    got = None if plan is None or plan.schema is not old else plan.read()
    p = Particle._make(old, got[1], root.training) if got is not None else _read_by_path(root, h)
    q = core_touch(p)
    write_back(root, h, q, added_modules(events_between(old, q._schema)))


def added_modules(events: Iterable[Event]) -> set[str]:
    """Paths of the submodules ``events`` add (inside batches too)."""
    out: set[str] = set()
    for e in events:
        if isinstance(e, Batch):
            out |= added_modules(e.events)
        elif isinstance(e, AddModule):
            out.add(e.path)
    return out


def commit_steps(root: nn.Module, h: ParticleHandle, p: Particle, steps: list,
                 what: str = WHAT, change_tree: Callable[[], None] | None = None) -> Particle:
    """Commit ``steps`` (``(event, own tensors)``) as one event on ``p``; write it back.

    One step is committed as itself, several as one ``Batch``: all of them or none. Only then
    ``change_tree()`` puts the initiator's own objects into the tree, and the new version is
    written back; modules that other threads' events added meanwhile are materialised.
    """
    own: dict[str, torch.Tensor] = {}
    for _, mine in steps:
        own.update(mine)
    event = steps[0][0] if len(steps) == 1 else Batch(tuple(e for e, _ in steps))
    start = p._schema
    q = _edit.commit(p, lambda _: (event, own), what)
    if change_tree is not None:
        change_tree()
    write_back(root, h, q, added_modules(events_between(start, q._schema)[:-1]))
    return q


# ---------------------------------------------------------------------------------------------
# edits behind the facade's back
# ---------------------------------------------------------------------------------------------

class _Scan:
    """What one walk of a tree against its skeleton found."""

    __slots__ = ("schema", "known", "tensors", "modules", "steps", "under")

    def __init__(self, schema: Schema, known: dict[str, nn.Module]) -> None:
        self.schema = schema
        self.known = known  # path -> the module the tree had there when last written
        self.tensors: dict[int, tuple] = {}  # tensor id -> (first path seen, in the version)
        self.modules: dict[int, tuple[str, nn.Module]] = {}  # module id -> (path, skeleton)
        self.steps: list[tuple[Event, dict]] = []
        self.under: list[str] = []  # paths of the steps, to see edits under an aliased module

    def add(self, step: tuple[Event, dict], path: str) -> None:
        self.steps.append(step)
        self.under.append(path)


def _known(plan: Plan | None) -> dict[str, nn.Module]:
    return {} if plan is None else plan.modules_by_path()


def sync(root: nn.Module, h: ParticleHandle) -> None:
    """Commit the structural edits made to the tree since it was last written (one event).

    A conversion of the whole particle in place (``net.double()``, ``net.to(device)``) is the
    core's conversion event, one version before any other edit: every particle converts its
    own values when touched.
    """
    converted = _conversion(root, h.schema)
    if converted is not None:
        commit_steps(root, h, converted[1], [(converted[0], {})], f"{WHAT}: converting")
    s = h.schema
    known = _known(h.plan if h.plan is not None and h.plan.schema is s else None)
    scan = _Scan(s, known)
    _scan(scan, root, s._skeleton, "", frozenset((id(root),)), root)
    if not scan.steps:
        return
    p = _read_by_path(root, h, known)
    commit_steps(root, h, p, scan.steps)


def _conversion(root: nn.Module, s: Schema) -> "tuple[Convert, Particle] | None":
    """``(event, particle)`` when the tree's tensors were all converted in place to one dtype
    and/or device (as ``nn.Module.to`` does: floating-point ones take the dtype, the others keep
    theirs), with nothing else changed; else None."""
    if s.shared:
        return None
    live = dict(root.named_parameters())  # first paths only (and no endless walk of a cycle)
    live.update(root.named_buffers())
    dtypes, devices, leaves, changed = set(), set(), [], False
    for spec in s.leaf_specs:
        t = live.get(spec.key)
        if t is None or tuple(t.shape) != spec.shape:
            return None
        if computable(spec.dtype):
            dtypes.add(t.dtype)
        elif t.dtype != spec.dtype:
            return None
        devices.add(t.device)
        changed = changed or t.dtype != spec.dtype or t.device != spec.device
        leaves.append(t)
    if not changed or len(dtypes) > 1 or len(devices) != 1:
        return None
    dtype = next(iter(dtypes), None)
    device = next(iter(devices))
    event = Convert(None if all(x.dtype == dtype for x in s.leaf_specs if computable(x.dtype))
                    else dtype,
                    None if all(x.device == device for x in s.leaf_specs) else device)
    return event, Particle._make(s, tuple(leaves), root.training)


def _read_by_path(root: nn.Module, h: ParticleHandle,
                  known: dict[str, nn.Module] | None = None) -> Particle:
    """The particle the tree holds at its version, read the slow way: each leaf from the module
    that held it when the tree was last written (``known``, by path; it may have moved, as the
    later children of a Sequential do after ``del seq[i]``), else by its path.

    A leaf no module holds any more with its shape, dtype and device (replaced or removed
    behind the facade's back, so an event drops it) reads as an empty meta tensor.
    """
    s = h.schema
    known = known or {}
    live = None
    leaves = []
    for spec in s.leaf_specs:
        t = None
        module_path, name = split_path(spec.key)
        m = known.get(module_path)
        if m is not None:
            t = m.__dict__["_parameters" if spec.kind == "param" else "_buffers"].get(name)
        else:
            if live is None:
                live = dict(root.named_parameters(remove_duplicate=False))
                live.update(root.named_buffers(remove_duplicate=False))
            t = next((live[x] for x in spec.paths if x in live), None)
        if t is None or tuple(t.shape) != spec.shape or t.dtype != spec.dtype or (
                t.device != spec.device):
            t = torch.empty(spec.shape, dtype=spec.dtype, device="meta")
        leaves.append(t)
    return Particle._make(s, tuple(leaves), root.training)


def _scan(st: _Scan, m: nn.Module, sk: nn.Module, prefix: str, above: frozenset,
          root: nn.Module, old: str | None = None) -> None:
    """Walk ``m`` against skeleton ``sk``: record every structural difference as a step.

    ``prefix``: the module's path for the events (after any renumbering recorded before);
    ``old``: its path in the tree's version (the schema and the known modules), if another.
    """
    s = st.schema
    old = prefix if old is None else old
    renumbered = _renumbering(st, m, sk, prefix, old)
    if renumbered is None:
        for name in sk._modules:  # submodules gone first: the name may hold a tensor now
            if name not in m._modules:
                st.add((DelModule(prefix + name), {}), prefix + name)
    else:  # del seq[i] / seq.insert(i, ...): the core's container events, renumbering
        st.add(renumbered[0], prefix[:-1])
    for kind, live, skel in (("param", m._parameters, sk._parameters),
                             ("buffer", m._buffers, sk._buffers)):
        for name, t in live.items():
            path = prefix + name
            was = skel.get(name, _MISSING)
            if t is None:
                if was is not _MISSING and was is not None:
                    st.add(((SetNone if kind == "param" else DelBuffer)(path), {}), path)
                continue
            first = st.tensors.get(id(t))
            if was is _MISSING or was is None:  # new here (or filling a None slot)
                if first is not None and kind == "param":
                    st.add((Tie(path, first[0]), {}), path)
                else:
                    st.add(_addition(kind, path, t, m, name), path)
                    st.tensors.setdefault(id(t), (path, None))
                continue
            spec = s.by_path[old + name]
            if (tuple(t.shape) != spec.shape or t.dtype != spec.dtype
                    or t.device != spec.device):  # another kind of tensor: a replacement
                st.add(((DelParam if kind == "param" else DelBuffer)(path), {}), path)
                st.add(_addition(kind, path, t, m, name), path)
            elif first is None and old + name != spec.key and kind == "param":  # untied
                st.add((DelParam(path), {}), path)
                st.add(_addition(kind, path, t, m, name), path)
            elif first is not None and s.by_path.get(first[1]) is not spec:  # tied to another
                st.add((DelParam(path), {}), path)
                st.add((Tie(path, first[0]), {}), path)
            st.tensors.setdefault(id(t), (path, old + name))
        for name in skel:
            if name not in live:  # deleted (a None slot too: `del m.bias` after m.bias = None)
                st.add(((DelParam if kind == "param" else DelBuffer)(prefix + name), {}),
                       prefix + name)
    if renumbered is not None:
        for name, c, was_name in renumbered[1]:
            if was_name is not None:  # (the inserted module's tensors are in the step)
                was = sk._modules[was_name]
                st.modules[id(c)] = (prefix + name, was)
                _scan(st, c, was, prefix + name + ".", above | {id(c)}, root,
                      old + was_name + ".")
        return
    for name, c in m._modules.items():
        path = prefix + name
        was = sk._modules.get(name, _MISSING)
        if c is None:
            if was is not _MISSING and was is not None:
                st.add((SetNone(path), {}), path)
            continue
        if id(c) in above:
            raise cycle_error(c, root)
        seen = st.modules.get(id(c))
        if seen is not None:  # this module sits at another path too: an alias
            first, first_sk = seen
            edited = any(x.startswith(first + ".") for x in st.under)
            if was is _MISSING or was is None:
                st.add((Tie(path, first), {}), path)
            elif was is not first_sk or edited:  # the skeleton's alias broke: tie it again
                st.add((DelModule(path), {}), path)
                st.add((Tie(path, first), {}), path)
            continue
        if was is _MISSING or was is None or (st.known and st.known.get(old + name) is not c):
            if was is not _MISSING and was is not None:  # a new module object was put here
                st.add((DelModule(path), {}), path)
            st.add(_edit.module_addition(path, c, share_buffers=True, what=WHAT), path)
            st.modules[id(c)] = (path, None)
            continue
        st.modules[id(c)] = (path, was)
        _scan(st, c, was, path + ".", above | {id(c)}, root, old + name + ".")


def _renumbering(st: _Scan, m: nn.Module, sk: nn.Module, prefix: str, old: str):
    """``(step, [(name, live child, skeleton child's name or None)])`` when the children of a
    Sequential or ModuleList were deleted or inserted in the middle and the others renumbered
    (as ``del seq[i]`` and ``seq.insert(i, module)`` do): one step of the core's container
    events (a ``Batch`` when there are several), from the last change to the first so every
    index is still right when its event applies. None when nothing moved (appends and pops at
    the end are ordinary additions and deletions)."""
    if not is_indexed(m) or not st.known:
        return None
    keys = list(sk._modules)
    live = list(m._modules.values())
    if (keys != [str(i) for i in range(len(keys))] or any(x is None for x in live)
            or list(m._modules) != [str(i) for i in range(len(live))]):
        return None
    had = [st.known.get(old + k) for k in keys]  # (a child deleted and freed reads as None)
    ops = difflib.SequenceMatcher(None, [id(x) for x in had], [id(x) for x in live],
                                  autojunk=False).get_opcodes()
    changes = [op for op in ops if op[0] != "equal"]
    if not changes or all(op[1] == len(keys) or op[0] == "delete" and op[2] == len(keys)
                          for op in changes):
        return None  # nothing moved: only the tail changed
    container = prefix[:-1]
    events: list = []
    own: dict[str, torch.Tensor] = {}
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag in ("delete", "replace"):
            events += [DelChild(f"{prefix}{i}") for i in reversed(range(i1, i2))]
        if tag in ("insert", "replace"):
            parts = [_edit.module_parts(live[j], f"{prefix}{i1 + k}", WHAT)
                     for k, j in enumerate(range(j1, j2))]
            events.append(InsertModules(container, i1, tuple(x[0] for x in parts),
                                        tuple(x[1] for x in parts), tuple(x[3] for x in parts)))
            for k, (_, specs, values, _) in enumerate(parts):
                own.update({f"{prefix}{j1 + k}.{spec.key}": v for spec, v in zip(specs, values)})
    kept = {j1 + k: str(i1 + k) for tag, i1, i2, j1, j2 in ops if tag == "equal"
            for k in range(i2 - i1)}
    step = (events[0] if len(events) == 1 else Batch(tuple(events)), own)
    return step, [(str(j), c, kept.get(j)) for j, c in enumerate(live)]


def _addition(kind: str, path: str, t: torch.Tensor, parent: nn.Module, name: str):
    if kind == "param":
        if not isinstance(t, nn.Parameter):
            raise SchemaError(f"{WHAT}: {path!r} holds a {type(t).__name__} in _parameters; "
                              "parameters must be nn.Parameter objects")
        return _edit.param_addition(path, t, what=WHAT)
    return _edit.buffer_addition(path, t, persistent=name not in parent._non_persistent_buffers_set,
                                 what=WHAT)
