"""The public event functions: each appends one version to the species and returns the initiator.

Every function first brings its particle to the species head (touch), builds the event and the
next schema without changing anything, and only then links the new version, under the species'
lock. An error at any step leaves the chain, the initiator and every other particle as they were.

Arguments are checked before anything else: a path that is not a string is an
:class:`ArgumentTypeError` naming the function (``add_param``, ``add_buffer``, ``add_module``,
``del_*``, ``set_none``, ``configure*``), an empty one (where a name is needed) a SchemaError.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ._arith import at_head
from ._bridge import collect, default_config
from ._config import ParamConfig
from ._config_events import Configure, ConfigureBuffer, ConfigureBuffers
from ._convert import Convert, converted_dtype
from ._errors import ArgumentTypeError, NytorchFuncError, SchemaError
from ._events import (NO_VALUES, AddBuffer, AddModule, AddParam, DelBuffer, DelModule, DelParam,
                      Event, Migration, SetNone)
from ._sharing import AddModuleSharingBuffers
from ._particle import Particle, expect_particle
from ._containers import DelChild, is_indexed
from ._schema import computable, make_skeleton, split_path, suggest
from ._species import StaleHead

__all__ = ["add_param", "del_param", "add_buffer", "del_buffer", "add_module", "del_module",
           "set_none", "configure", "configure_buffer", "to", "commit", "configure_event", "module_parts",
           "remove_module", "param_addition", "buffer_addition", "module_addition"]

Build = Callable[[Particle], tuple[Event, dict[str, torch.Tensor]]]


def commit(p: Particle, build: Build, what: str) -> Particle:
    """Append the event ``build(p_at_head)`` makes; the initiator at the new version.

    ``build`` returns the event and the initiator's own tensors for the entries it adds (its
    role: "the object itself"), which ``migrate`` uses instead of recipient copies (for a single
    particle; a population's members get copies, as recipients do). An event that only selects
    leaves (deletions, set_none, most config changes) is one index selection, computed once and
    stored in the chain's link for every later touch.
    """
    if type(p) is not Particle:
        expect_particle(p, what)
    species = p._schema.species
    while True:
        q = p if p._schema._next is None else at_head(p)
        head = q._schema
        event, own = build(q)
        try:
            with species._call_lock:  # the skeleton is copied: no forward may be swapped in
                new = event.apply(head)
        except NytorchFuncError:
            raise
        except Exception as err:  # torch's own refusals (bad names, ...) become typed errors
            raise SchemaError(f"{what}: {type(err).__name__}: {err}") from err
        selection = event.selection(head, new)
        if selection is not None:
            old = q._leaves
            leaves = tuple([old[i] for i in selection])
            batch = None if leaves else tuple(q.batch_shape)
        else:
            batch = tuple(q.batch_shape)
            m = Migration(batch, head, new, "snapshot", NO_VALUES if batch else own)
            current = event.migrate(dict(zip(head.leaf_keys, q._leaves)), m)
            leaves = tuple([current[k] for k in new.leaf_keys])
        result = Particle(new, leaves, q._training, None if leaves else batch)
        try:
            species._link(head, event, new, selection)
        except StaleHead:
            continue  # another thread appended first: replay on the new head
        return result


def _path(path: object, what: str) -> str:
    if not isinstance(path, str):
        raise ArgumentTypeError(f"{what}: path must be a dotted name like 'encoder.weight', got "
                                f"{path!r} ({type(path).__name__})")
    if not path:
        raise SchemaError(f"{what}: path must be a non-empty dotted name like 'encoder.weight', "
                          f"got {path!r}")
    return path


def _tensor(value: object, what: str, path: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{what}: the value for {path!r} must be a torch.Tensor, got "
                                f"{type(value).__name__}")
    if value.is_meta:
        raise SchemaError(f"{what}: the tensor for {path!r} is on the meta device and holds no "
                          "data; particles hold values, so create it on a real device "
                          "(e.g. torch.empty(..., device='cpu')) first")
    return value


def _operational_int(path: str, dtype: torch.dtype, what: str) -> SchemaError:
    return SchemaError(f"{what}: {path!r} is {str(dtype).replace('torch.', '')}; integer "
                       "parameters cannot be operational, because particle arithmetic would "
                       "change their dtype (p / 2, 0.5 * p); give it operational=False")


def add_param(p: Particle, path: str, tensor: torch.Tensor,
              config: ParamConfig | None = None) -> Particle:
    """Add a parameter at ``path``; the initiator holds ``tensor`` itself.

    Every other particle of the species gets a clone of ``tensor`` as it was now (a snapshot)
    when it is touched. ``config`` defaults to ``ParamConfig()``, or to
    ``ParamConfig(operational=False)`` for an integer tensor (integer parameters are never
    operational: arithmetic would change their dtype).

    >>> import torch, nytorch_func as nf
    >>> net1 = nf.from_module(torch.nn.Linear(1, 1))
    >>> net2 = net1.randn()
    >>> w = torch.nn.Parameter(torch.randn(1))
    >>> net1 = nf.add_param(net1, "scale", w)
    >>> net2 = nf.touch(net2)
    >>> net1["scale"] is w, net2["scale"] is w, torch.equal(net2["scale"], w)
    (True, False, True)
    """
    event, own = param_addition(path, tensor, config)
    return commit(p, lambda q: (event, own), "add_param")


def param_addition(path: str, tensor: torch.Tensor, config: ParamConfig | None = None,
                   what: str = "add_param") -> tuple[Event, dict[str, torch.Tensor]]:
    """:func:`add_param`'s event and the initiator's own tensor, validated, nothing committed."""
    path = _path(path, what)
    tensor = _tensor(tensor, what, path)
    if config is not None and not isinstance(config, ParamConfig):
        raise ArgumentTypeError(f"{what}: config for {path!r} must be a ParamConfig, got "
                                f"{type(config).__name__}")
    cfg = config or default_config(tensor)
    if cfg.operational and not computable(tensor.dtype):
        raise _operational_int(path, tensor.dtype, what)
    if tensor.requires_grad and not (tensor.is_floating_point() or tensor.is_complex()):
        raise SchemaError(f"{what}: {path!r} must be floating point to require grad")
    snapshot = tensor.detach().clone()
    return AddParam(path, snapshot, cfg, bool(tensor.requires_grad)), {path: tensor}


def del_param(p: Particle, path: str) -> Particle:
    """Delete the parameter at ``path`` (one alias of a tied parameter deletes only that name)."""
    _path(path, "del_param")
    return commit(p, lambda q: (DelParam(path), {}), "del_param")


def set_none(p: Particle, path: str) -> Particle:
    """Set the parameter or submodule at ``path`` to ``None``, as ``module.bias = None`` does.

    >>> import torch, nytorch_func as nf
    >>> p = nf.set_none(nf.from_module(torch.nn.Linear(2, 1)), "bias")
    >>> list(p.params), nf.apply(p, torch.ones(1, 2)).shape
    (['weight'], torch.Size([1, 1]))
    """
    _path(path, "set_none")
    return commit(p, lambda q: (SetNone(path), {}), "set_none")


def add_buffer(p: Particle, path: str, tensor: torch.Tensor, *, state: bool = True,
               persistent: bool = True) -> Particle:
    """Add a buffer at ``path``; initiator and recipients hold this very tensor object.

    ``state=True`` makes it per-particle state (each particle may later hold its own value, e.g.
    through :func:`apply_with_state`); ``state=False`` makes it one tensor shared by the species.
    """
    event, own = buffer_addition(path, tensor, state=state, persistent=persistent)
    return commit(p, lambda q: (event, own), "add_buffer")


def buffer_addition(path: str, tensor: torch.Tensor, *, state: bool = True,
                    persistent: bool = True,
                    what: str = "add_buffer") -> tuple[Event, dict[str, torch.Tensor]]:
    """:func:`add_buffer`'s event and the initiator's own tensor, validated, nothing committed."""
    path = _path(path, what)
    tensor = _tensor(tensor, what, path)
    if not isinstance(state, bool):
        raise ArgumentTypeError(f"{what}: state for {path!r} must be True or False, got "
                                f"{state!r}")
    return AddBuffer(path, tensor, state, bool(persistent)), {path: tensor}


def del_buffer(p: Particle, path: str) -> Particle:
    """Delete the buffer at ``path``."""
    _path(path, "del_buffer")
    return commit(p, lambda q: (DelBuffer(path), {}), "del_buffer")


def add_module(p: Particle, path: str, module: nn.Module) -> Particle:
    """Add ``module`` as a submodule at ``path``; the initiator holds its very tensors.

    Recipients get clones of its parameters and buffers as they were now. New parameters get
    fresh stable ids and the default ParamConfig.

    >>> import torch, nytorch_func as nf
    >>> net = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    >>> head = torch.nn.Linear(2, 1)
    >>> grown = nf.add_module(net, "1", head)
    >>> grown["1.weight"] is head.weight, nf.apply(grown, torch.ones(3, 2)).shape
    (True, torch.Size([3, 1]))
    """
    event, own = module_addition(path, module)
    return commit(p, lambda q: (event, own), "add_module")


def module_addition(path: str, module: nn.Module, *, share_buffers: bool = False,
                    what: str = "add_module") -> tuple[Event, dict[str, torch.Tensor]]:
    """:func:`add_module`'s event and the initiator's own tensors, validated, nothing committed.

    ``share_buffers=True`` gives recipients the module's very buffer objects instead of copies
    (:class:`AddModuleSharingBuffers`, nytorch's rule).
    """
    path = _path(path, what)
    skeleton, specs, values, snapshots = module_parts(module, path, what)
    if share_buffers:
        snapshots = tuple(v if s.kind == "buffer" else snap
                          for s, v, snap in zip(specs, values, snapshots))
        event: Event = AddModuleSharingBuffers(path, skeleton, specs, snapshots)
    else:
        event = AddModule(path, skeleton, specs, snapshots)
    return event, {f"{path}.{s.key}": v for s, v in zip(specs, values)}


def module_parts(module: nn.Module, path: str, what: str
                 ) -> tuple[nn.Module, tuple, tuple, tuple]:
    """What an event that adds ``module`` records: ``(meta skeleton, specs, the module's own
    tensors, snapshots of them)``; typed errors for non-modules, meta or lazy tensors and
    modules that cannot be deep-copied."""
    if not isinstance(module, nn.Module):
        raise ArgumentTypeError(f"{what}: the value for {path!r} must be an nn.Module, got "
                                f"{type(module).__name__}")
    hook = getattr(module, "__nytorch_module__", None)
    plain = hook() if hook is not None else module
    specs, values = collect(plain, what)
    for spec, value in zip(specs, values):
        if value.is_meta:
            raise SchemaError(f"{what}: {path}.{spec.key} is on the meta device and holds no "
                              "data; particles hold values, so materialise the module first "
                              "(module.to_empty(device='cpu') and initialise it)")
    try:
        skeleton = make_skeleton(plain)
        snapshots = tuple(v.detach().clone() for v in values)
    except Exception as err:  # noqa: BLE001
        raise SchemaError(f"{what}: cannot copy {type(module).__name__} at {path!r} for the "
                          f"other particles ({type(err).__name__}: {err}); make the module "
                          "deep-copyable") from err
    return skeleton, tuple(specs), tuple(values), snapshots


def del_module(p: Particle, path: str) -> Particle:
    """Delete the submodule at ``path`` with all its parameters and buffers.

    A child of an ``nn.Sequential`` or ``nn.ModuleList`` is deleted as ``del seq[i]`` does: the
    later children move down one place, so keys stay contiguous; their parameters keep their
    ids and values.

    >>> import torch, nytorch_func as nf
    >>> net = nn = torch.nn
    >>> p = nf.from_module(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> q = nf.del_module(p, "0")
    >>> list(q.params), nf.param_ids(q)["1.weight"] == nf.param_ids(p)["2.weight"]
    (['1.weight', '1.bias'], True)
    >>> nf.to_module(q)[0]
    ReLU()
    """
    _path(path, "del_module")

    def build(q: Particle) -> tuple[Event, dict]:
        container, name = split_path(path)
        parent = q._schema._module_at(container)
        if is_indexed(parent) and parent._modules.get(name) is not None:  # type: ignore[union-attr]
            return DelChild(path), {}
        return DelModule(path), {}

    return commit(p, build, "del_module")


def remove_module(p: Particle, path: str) -> Particle:
    """Delete the submodule at ``path`` and renumber nothing (``delattr(seq, "0")``).

    For the facade, which mirrors a live module tree: a ``Sequential`` child replaced by
    assignment is removed and added again under the same key.
    """
    _path(path, "del_module")
    return commit(p, lambda q: (DelModule(path), {}), "del_module")


def configure(p: Particle, path: str = "", *, operational: bool | None = None,
              clone: bool | None = None, **attrs: object) -> Particle:
    """Change the ParamConfig of the parameter at ``path``, or of all under module ``path``.

    ``path=""`` means every parameter. Unset arguments keep their value; other keywords set
    user attributes. Integer parameters are never operational: naming one with
    ``operational=True`` is a SchemaError, and under a prefix they keep ``operational=False``.
    Making a parameter shared (``operational=False, clone=False``) turns the
    initiator's value into the species' one tensor; making it per-particle again gives every
    particle a copy of that tensor.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(1, 1))
    >>> p = nf.configure(p, "bias", operational=False, is_weight=False)
    >>> p.config("bias")
    ParamConfig(operational=False, clone=True, is_weight=False)
    >>> torch.equal((2 * p)["bias"], p["bias"])
    True
    """
    for name, value in (("operational", operational), ("clone", clone)):
        if value is not None and not isinstance(value, bool):
            raise ArgumentTypeError(f"configure {path!r}: {name} must be True, False or None, "
                                    f"got {value!r}")
    if not isinstance(path, str):
        raise ArgumentTypeError(f"configure: path must be a string ('' for all), got {path!r}")
    try:
        ParamConfig(**attrs)
    except (SchemaError, ArgumentTypeError) as err:
        raise type(err)(f"configure {path!r}: {err}") from None

    def build(q: Particle) -> tuple[Event, dict]:
        s = q._schema
        targets = s.specs_under(path, kind="param")
        if not targets:
            names = [m for m in s.module_paths() if m] + [x for t in s.params for x in t.paths]
            raise SchemaError(f"configure: no parameter at or under {path!r} in version "
                              f"{s.version}{suggest(path, names)}")
        changes = []
        for spec in targets:
            new = spec.config.replace(operational=operational, clone=clone, **attrs)
            if new.operational and not computable(spec.dtype):
                if path in spec.paths:
                    raise _operational_int(spec.key, spec.dtype, "configure")
                new = new.replace(operational=False)  # under a prefix: floats only
            changes.append((spec.key, new))
        return configure_event(q, path, changes, "configure"), {}

    return commit(p, build, "configure")


def configure_event(q: Particle, path: str, changes: list[tuple[str, ParamConfig]],
                    what: str) -> Configure:
    """The Configure event giving the parameters ``changes`` names (by key) their new configs.

    A parameter that becomes shared (``operational=False, clone=False``) keeps ``q``'s value as
    the species' one tensor; a shared one that becomes per-particle again gives every particle
    a copy of a snapshot of the shared tensor.
    """
    s = q._schema
    to_shared, to_leaf = [], []
    for key, new in changes:
        spec = s.by_path[key]
        if spec.leaf and new.shared:
            if q.batch_shape:
                raise SchemaError(
                    f"{what}: making {key!r} shared needs one value, but the particle is a "
                    f"population {tuple(q.batch_shape)}; configure a single particle")
            to_shared.append((key, nn.Parameter(q._leaves[s.leaf_index[key]].detach(),
                                                requires_grad=spec.requires_grad)))
        elif not spec.leaf and not new.shared:
            # A snapshot, not the shared tensor itself: that tensor may still change in place
            # (it is the old versions' shared value), and touch must not depend on when it runs.
            shared = s.shared[key]
            to_leaf.append((key, shared.detach().clone().requires_grad_(shared.requires_grad)))
    return Configure(path, tuple(changes), tuple(to_shared), tuple(to_leaf))


def configure_buffer(p: Particle, path: str, *, policy: str,
                     value: torch.Tensor | None = None) -> Particle:
    """Set what reductions over particles do with the buffer at ``path``, or with every buffer
    under the module ``path`` (``""``: the whole model) at once.

    ``"mean"`` (the default of every buffer): the (weighted) average of floating-point values,
    the maximum of integer counters; ``"keep"``: the first operand's value; ``"reset"``:
    ``value``, by default a snapshot of the buffer's value in ``p`` now (member 0 of a
    population), recorded in the schema (with a module path, each buffer's own snapshot). A
    population without members has no such value: ``"reset"`` then needs ``value`` (a
    SchemaError otherwise; shared buffers have their one value).

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    >>> p.schema.spec("1.running_mean").policy
    'mean'
    >>> p = nf.configure_buffer(p, "1.running_mean", policy="keep")
    >>> p.schema.spec("1.running_mean").policy
    'keep'
    >>> p = nf.configure_buffer(p, "1", policy="reset")   # every buffer of the BatchNorm
    >>> p.schema.spec("1.running_var").reset, p.schema.spec("1.num_batches_tracked").policy
    (tensor([1., 1.]), 'reset')
    """
    if not isinstance(path, str):
        raise ArgumentTypeError(f"configure_buffer: path must be a buffer or module path ('' for "
                                f"the whole model), got {path!r} ({type(path).__name__})")
    if value is not None and policy != "reset":
        raise SchemaError(f"configure_buffer: a value is only used with policy='reset', got "
                          f"policy={policy!r}")

    def build(q: Particle) -> tuple[Event, dict]:
        s = q._schema
        spec = s.by_path.get(path)
        if (spec is None or spec.kind != "buffer") and (path == "" or (
                spec is None and s._module_at(path) is not None)):
            return _configure_module_buffers(q, path, policy, value), {}
        snap = None
        if policy == "reset":
            snap = value
            if snap is None:
                spec = s.spec(path, kind="buffer", what="configure_buffer")
                snap = _current(q, spec)
            snap = _tensor(snap, "configure_buffer", path).detach().clone()
        return ConfigureBuffer(path, policy, snap), {}

    return commit(p, build, "configure_buffer")


def _current(q: Particle, spec: object) -> torch.Tensor:
    """The value of buffer ``spec`` in ``q`` (member 0 of a population; a shared buffer's one
    tensor). A per-particle buffer of a population without members has no value to take: a
    SchemaError asking for ``value=``."""
    s = q._schema
    i = s.leaf_index.get(spec.key)  # type: ignore[attr-defined]
    if i is None:
        return s.shared[spec.key]  # type: ignore[attr-defined]
    t = q._leaves[i]
    if not q.batch_shape:
        return t
    if math.prod(q.batch_shape) == 0:
        key = spec.key  # type: ignore[attr-defined]
        raise SchemaError(f"configure_buffer: policy='reset' records member 0's value of "
                          f"{key!r}, but the population (batch shape {tuple(q.batch_shape)}) "
                          "has no members; pass value=... (one buffer) or configure a particle "
                          "with members")
    return t.reshape((-1, *spec.shape))[0]  # type: ignore[attr-defined]


def _configure_module_buffers(q: Particle, path: str, policy: str,
                              value: torch.Tensor | None) -> ConfigureBuffers:
    if value is not None:
        raise SchemaError(f"configure_buffer: {path or '<root>'!r} is a module; a value is for "
                          "one buffer (with a module path each buffer's reset value is its "
                          "current value): name the buffer, or leave value out")
    resets = ()
    if policy == "reset":
        resets = tuple((spec.key, _current(q, spec).detach().clone())
                       for spec in q._schema.specs_under(path, kind="buffer"))
    return ConfigureBuffers(path, policy, resets)


def to(p: Particle, dtype: torch.dtype | None = None,
       device: "torch.device | str | None" = None) -> Particle:
    """Convert the whole species to ``dtype`` and/or ``device``: an event, a new version.

    As ``nn.Module.to``: floating-point and complex tensors take ``dtype``, integer ones keep
    theirs; every tensor moves to ``device``. The initiator comes back converted; every other
    particle (and population) of the species is converted when it is touched, after every
    earlier event, so the event snapshots of older versions arrive converted too. This is how
    to cast a species to bfloat16 for inference: arithmetic never changes a leaf's dtype.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)))
    >>> other = p.randn()
    >>> half = nf.to(p, dtype=torch.bfloat16)
    >>> half["0.weight"].dtype, half["1.num_batches_tracked"].dtype, half.version
    (torch.bfloat16, torch.int64, 1)
    >>> nf.touch(other)["0.weight"].dtype
    torch.bfloat16
    >>> nf.apply(half, torch.ones(4, 3, dtype=torch.bfloat16)).dtype
    torch.bfloat16
    """
    expect_particle(p, "to")
    if dtype is None and device is None:
        raise ArgumentTypeError("to: give a dtype, a device or both, e.g. "
                                "nf.to(p, dtype=torch.bfloat16)")
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise ArgumentTypeError(f"to: dtype must be a torch.dtype, got {type(dtype).__name__}")
        if not (dtype.is_floating_point or dtype.is_complex):
            raise SchemaError(f"to: dtype must be a floating point or complex dtype (as "
                              f"nn.Module.to), got {dtype}; integer tensors keep their dtype")
    if device is not None:
        try:
            device = torch.device(device)
            torch.empty(0, device=device)
        except (RuntimeError, TypeError) as err:
            raise SchemaError(f"to: device {device!r} is not usable here ({err})") from None
        if device.type == "meta":
            raise SchemaError("to: particles hold values; the meta device holds none")

    def build(q: Particle) -> tuple[Event, dict]:
        for spec in q._schema.specs:  # refuse before anything happens (complex -> real)
            converted_dtype(spec.dtype, dtype, spec.key)
        return Convert(dtype, device), {}

    return commit(p, build, "to")
