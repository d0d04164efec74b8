"""The module bridge: nn.Module <-> Particle, and forward passes via torch.func.functional_call."""

from __future__ import annotations

import copy as _copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._config import ParamConfig
from ._errors import SchemaError, expect
from ._particle import Particle, expect_particle
from ._schema import Schema, TensorSpec, computable, make_skeleton
from ._species import Species
from ._forward import run
from ._state_dict import adopt

__all__ = ["from_module", "new_species", "to_module", "apply", "apply_with_state", "collect"]


def collect(module: nn.Module, what: str = "from_module", order: Sequence[str] = ()
            ) -> tuple[list[TensorSpec], list[torch.Tensor]]:
    """Specs (paths relative to ``module``, pids from 0) and tensors of every param and buffer.

    A tensor object reachable from several paths (tied weights) is one spec with several paths.
    Lazy modules (``nn.LazyLinear``) must have run once: their shapes are not known before.
    Parameter ids follow ``named_parameters`` order, or ``order`` (parameter paths, any alias)
    where given: the parameters it names first, in its order, then the others.
    """
    seen: list[int] = []
    paths: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    kinds: dict[int, str] = {}
    for kind, items in (("param", module.named_parameters(remove_duplicate=False)),
                        ("buffer", module.named_buffers(remove_duplicate=False))):
        for path, t in items:
            if isinstance(t, nn.parameter.UninitializedTensorMixin):
                raise SchemaError(
                    f"{what}: {path!r} of {type(module).__name__} is not initialised yet (a lazy "
                    "module such as nn.LazyLinear learns its shapes in its first forward pass); "
                    "run one forward pass first, module(example_input), then call "
                    f"{what} again")
            key = id(t)
            if key not in paths:
                seen.append(key)
                paths[key], tensors[key], kinds[key] = [], t, kind
            paths[key].append(path)
    pids = _pid_order([tuple(paths[k]) for k in seen if kinds[k] == "param"], order)
    specs, values = [], []
    for key in seen:
        t, kind, ps = tensors[key], kinds[key], tuple(paths[key])
        if kind == "param":
            spec = TensorSpec.of(ps[0], "param", t, paths=ps, pid=pids[ps[0]],
                                 config=default_config(t))
        else:
            parent_path, _, name = ps[0].rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            spec = TensorSpec.of(ps[0], "buffer", t, paths=ps, state=True,
                                 persistent=name not in parent._non_persistent_buffers_set)
        specs.append(spec)
        values.append(t)
    return specs, values


def _pid_order(params: list[tuple[str, ...]], order: Sequence[str]) -> dict[str, int]:
    """``{canonical path: pid}``: the parameters ``order`` names first, then the rest."""
    if not order:
        return {ps[0]: i for i, ps in enumerate(params)}
    rank = {path: i for i, path in enumerate(order)}
    last = len(rank)
    keyed = sorted(range(len(params)),
                   key=lambda i: (min((rank.get(x, last) for x in params[i]), default=last), i))
    return {params[i][0]: pid for pid, i in enumerate(keyed)}


def default_config(t: torch.Tensor) -> ParamConfig:
    """The config a new parameter gets: ``ParamConfig()``, or non-operational for integers.

    Particle arithmetic keeps every leaf's dtype, and ``p / 2`` or ``0.5 * p`` cannot keep an
    integer one, so integer (and bool) parameters are never operational.
    """
    return _DEFAULT_CONFIG if computable(t.dtype) else _INTEGER_CONFIG


_DEFAULT_CONFIG = ParamConfig()
_INTEGER_CONFIG = ParamConfig(operational=False)


def from_module(module: nn.Module, *, name: str | None = None,
                like: Particle | None = None) -> Particle:
    """A new species from ``module``, and its first particle (version 0).

    With ``like=p``: no new species; the module joins ``p``'s species as a particle at its
    newest version (the module must have exactly that structure: the same submodule classes,
    parameter and buffer paths, shapes, dtypes, devices and ties; a SchemaError lists every
    difference). This is how two separately built models are mixed.

    Works for any ``nn.Module``. The particle *views* the module's tensors (no copy): its
    leaves are the module's own parameter and buffer objects, so a later in-place change of the
    module shows in the particle; call ``.clone()`` on the result to own a copy. Every parameter
    starts with ``ParamConfig()`` (operational, clone), except integer parameters, which start
    non-operational (arithmetic would change their dtype); every buffer starts as per-particle
    state.

    >>> import torch, nytorch_func as nf
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    >>> p = nf.from_module(net)
    >>> list(p.params), list(p.buffers)
    (['0.weight', '0.bias', '1.weight', '1.bias'], ['1.running_mean', '1.running_var', '1.num_batches_tracked'])
    >>> p.params["0.weight"] is net[0].weight
    True
    >>> q = nf.from_module(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)), like=p)
    >>> q.species is p.species, nf.apply(0.5 * p + 0.5 * q, torch.ones(2, 4)).shape
    (True, torch.Size([2, 3]))
    """
    expect(module, nn.Module, "from_module", "an nn.Module")
    if like is not None:
        if name is not None:
            raise SchemaError("from_module: name= names a new species; with like= the module "
                              "joins like's species, so give one or the other")
        hook = getattr(module, "__nytorch_module__", None)
        plain = hook() if hook is not None else module
        return adopt(plain, *collect(plain), like)
    hook = getattr(module, "__nytorch_particle__", None)
    if hook is not None:
        return hook()
    return new_species(module, name=name)


def new_species(module: nn.Module, *, name: str | None = None, order: Sequence[str] = (),
                configs: Mapping[str, ParamConfig] | None = None,
                what: str = "from_module") -> Particle:
    """:func:`from_module`'s steps for a caller that manages its own module trees.

    No ``__nytorch_particle__`` hook is consulted. ``order``: parameter paths in the order their
    ids are given (the others follow in ``named_parameters`` order); ``configs``: ``{path:
    ParamConfig}`` for parameters that start with another config than the default (a shared one,
    ``operational=False, clone=False``, puts the module's tensor into the schema). The NytoModule
    facade makes its species with this, from the registration order nytorch gives ids in.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func._bridge import new_species
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> nf.param_ids(new_species(net, order=["1.weight", "1.bias"]))
    {'0.weight': 2, '0.bias': 3, '1.weight': 0, '1.bias': 1}
    """
    specs, values = collect(module, what, order)
    shared: dict[str, torch.Tensor] = {}
    if configs:
        for i, (spec, value) in enumerate(zip(specs, values)):
            cfg = next((configs[x] for x in spec.paths if x in configs), None)
            if spec.kind == "param" and cfg is not None:
                specs[i] = dataclasses.replace(spec, config=cfg)
                if cfg.shared:
                    shared[spec.key] = value
    try:
        skeleton = make_skeleton(module)
    except Exception as err:  # noqa: BLE001 - any failure of deepcopy means "cannot copy"
        raise SchemaError(f"{what}: cannot copy the structure of {type(module).__name__} "
                          f"({type(err).__name__}: {err}); make the module deep-copyable") from err
    species = Species(name or type(module).__name__)
    n_params = sum(s.is_param for s in specs)
    schema = Schema(species, 0, skeleton, tuple(specs), shared, n_params)
    species._register(schema)
    by_key = dict(zip((s.key for s in specs), values))
    return Particle._make(schema, tuple(by_key[k] for k in schema.leaf_keys), None)


def _tensors(p: Particle) -> tuple[dict[str, torch.Tensor], list, list]:
    """``{path: tensor}`` for every path of every param and buffer (aliases included).

    Buffers are copies, so a forward pass that updates them in place leaves ``p`` and its
    species unchanged. Also returns ``(path, copy, copy._version)`` for each *shared* buffer,
    so :func:`apply_with_state` can tell that the forward pass changed one, and ``(path,
    tensor)`` for each parameter, so the call can tell that it wrote into one.
    """
    s = p._schema
    out: dict[str, torch.Tensor] = {}
    params = []
    for spec, leaf in zip(s.leaf_specs, p._leaves):
        if spec.kind == "buffer":
            leaf = leaf.clone()
        else:
            params.append((spec.key, leaf))
        for path in spec.paths if len(spec.paths) == 1 else _slots(s, spec):
            out[path] = leaf
    shared_buffers = []
    for key, tensor in s.shared.items():
        spec = s.by_path[key]
        if spec.kind == "buffer":
            tensor = tensor.clone()
            shared_buffers.append((spec.paths[0], tensor, tensor._version))
        else:
            params.append((key, tensor))
        for path in spec.paths if len(spec.paths) == 1 else _slots(s, spec):
            out[path] = tensor
    return out, shared_buffers, params


def _slots(s: Schema, spec: TensorSpec) -> list[str]:
    """The paths of a tied tensor that name distinct slots of the skeleton.

    A submodule reachable under two names (``n.again = n.l``) gives each of its tensors two
    paths but one slot; ``functional_call`` would swap the slot twice and, restoring in the same
    order, leave the particle's tensor in the shared skeleton. One path per slot avoids that.
    """
    seen, out = set(), []
    for path in spec.paths:
        parent_path, _, name = path.rpartition(".")
        slot = (id(s._skeleton.get_submodule(parent_path)), name)
        if slot not in seen:
            seen.add(slot)
            out.append(path)
    return out


def apply(p: Particle, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``p``'s forward pass on ``args``; never changes ``p`` or its species.

    Uses ``torch.func.functional_call`` on the species' skeleton, so it composes with ``vmap``,
    ``grad`` and ``torch.compile``. Buffers the forward updates in place (BatchNorm running
    stats in training mode) are updated on copies; use :func:`apply_with_state` to keep them.
    That holds for shared buffers (``nf.add_buffer(..., state=False)``) too: they are one
    tensor of the whole species, and the forward pass of one particle does not change them.
    Threads may run ``apply`` on particles of one species at the same time.

    The forward pass is pure, eagerly, under ``vmap`` and under ``torch.compile``: it runs in
    ``p.training``'s mode on every submodule (``p.train()``/``p.eval()``; a particle that never
    chose one runs each module in its species' mode), and every attribute it assigns, adds or
    deletes on a module (``self.calls += 1``, a buffer registered on the first call, a
    submodule swapped in, the ``training`` flags) is put back when it returns, so each call sees
    the attributes its schema recorded, whatever other calls did. Changes *inside* a mutable
    attribute object (appending to a list kept on ``self``, a hook registered in ``forward``)
    are not seen: keep such state in a buffer and use :func:`apply_with_state`. Parameters are never written: a module that
    renormalises its weight in place (``nn.Embedding(max_norm=...)``) gets a copy, so the
    output is the module's and ``p`` keeps its values; any other in-place write into a
    parameter is a SchemaError after an eager call (the particle's tensor has changed by then:
    compute new tensors in ``forward`` instead).

    >>> import torch, nytorch_func as nf
    >>> lin = torch.nn.Linear(3, 2)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(nf.apply(nf.from_module(lin), x), lin(x))
    True
    """
    expect_particle(p, "apply")
    leaves = p._leaves
    if (leaves[0].dim() != len(p._schema.leaf_specs[0].shape)) if leaves else p._batch:
        raise _population_refused(p, "apply")
    tensors, _, params = _tensors(p)
    return run(p._schema, p._training, tensors, params, args, kwargs, "apply")


def _population_refused(p: Particle, what: str) -> SchemaError:
    """The error for a population given where one model belongs: say how to run all members."""
    return SchemaError(
        f"{what}: the particle is a population of batch shape {tuple(p.batch_shape)}, and "
        f"nf.{what} runs one model. Run every member with torch.func.vmap(nf.{what}, "
        f"in_dims=(0, None))(pop, x) or nf.vmap_apply(pop, x), or one member with pop[i]")


def apply_with_state(p: Particle, /, *args: Any, **kwargs: Any) -> tuple[Any, Particle]:
    """``(output, p_after)``: the forward pass plus the buffers it updated, as a new particle.

    Per-particle buffers that the forward pass changes in place or reassigns (BatchNorm
    running statistics, a running mean kept with ``self.mean = ...``) come back in ``p_after``;
    parameters are the same tensors as in ``p``. Works under ``torch.func.vmap`` for a
    population, giving each member its own statistics. The forward pass is pure as in
    :func:`apply`: the updates reach ``p_after`` only, never the species' modules.

    ``p_after``'s buffers agree with the schema: a reassigned buffer of another dtype (a float64
    input promotes ``self.mean = 0.9 * self.mean + 0.1 * x.mean(0)``) is cast back to the
    buffer's dtype and device, as torch's in-place ops cast; a value the dtype cannot hold
    (complex into real, floating into integer), another shape, or ``None`` is a SchemaError.

    A shared buffer (``nf.add_buffer(..., state=False)``) is one tensor of the whole species and
    cannot hold one particle's update: if the forward pass changes one, this raises a
    SchemaError (nothing changes) rather than silently dropping the update. Make the buffer
    per-particle state (``state=True``) to keep such updates, or use :func:`apply`, which
    discards them.

    >>> import torch, nytorch_func as nf
    >>> bn = torch.nn.BatchNorm1d(2)
    >>> p = nf.from_module(bn)
    >>> y, p2 = nf.apply_with_state(p, torch.randn(8, 2) + 3)
    >>> int(p2.buffers["num_batches_tracked"]), int(p.buffers["num_batches_tracked"])
    (1, 0)
    """
    expect_particle(p, "apply_with_state")
    s = p._schema
    if p.batch_shape:
        raise _population_refused(p, "apply_with_state")
    tensors, shared, params = _tensors(p)
    out = run(s, p._training, tensors, params, args, kwargs, "apply_with_state")
    if not torch.compiler.is_compiling():
        for path, copy, version in shared:
            if tensors[path] is not copy or copy._version != version:
                raise SchemaError(
                    f"apply_with_state: the forward pass changed the shared buffer {path!r}; a "
                    "shared buffer (add_buffer(..., state=False)) is one tensor of the whole "
                    "species and cannot keep one particle's update. Make it per-particle state "
                    "(del_buffer, then add_buffer(..., state=True)) to keep the updates, or use "
                    "nf.apply, which discards them")
    leaves = tuple(_kept(spec, tensors[spec.key]) if spec.kind == "buffer" else leaf
                   for spec, leaf in zip(s.leaf_specs, p._leaves))
    return out, Particle._make(s, leaves, p._training, p._batch)


def _kept(spec: TensorSpec, t: Any) -> torch.Tensor:
    """The buffer value the forward pass left, as the schema's dtype and device, or a SchemaError.

    A buffer updated in place keeps its dtype; one reassigned (``self.mean = 0.9 * self.mean +
    0.1 * x.mean(0)``) may come back promoted by a float64 input: it is cast back, as torch's
    in-place ops cast (``mean.mul_(0.9).add_(...)``). A value the schema dtype cannot hold
    (complex into real, floating into integer), another shape, or no tensor is refused.
    """
    if type(t) is not torch.Tensor and not isinstance(t, torch.Tensor):
        what = ("set the buffer {!r} to None" if t is None else
                "deleted the buffer {!r}" if type(t) is object else  # torch's "missing" mark
                "set the buffer {!r} to a " + type(t).__name__).format(spec.key)
        raise SchemaError(f"apply_with_state: the forward pass {what}; a per-particle buffer "
                          f"holds a tensor of shape {spec.shape} and dtype {spec.dtype} for every "
                          "particle (assign one, or delete the buffer from the species with "
                          "nf.del_buffer)")
    if t.dtype == spec.dtype and t.device == spec.device and t.shape == spec.shape:
        return t
    if t.shape != spec.shape:
        raise SchemaError(f"apply_with_state: the forward pass set the buffer {spec.key!r} to a "
                          f"tensor of shape {tuple(t.shape)}; its schema holds shape {spec.shape} "
                          "for every particle. Keep the shape (a running statistic), or keep "
                          "values of changing shape out of the buffers (return them instead)")
    if t.dtype != spec.dtype and not _castable(t.dtype, spec.dtype):
        raise SchemaError(f"apply_with_state: the forward pass set the buffer {spec.key!r} to a "
                          f"{t.dtype} tensor, which its schema dtype {spec.dtype} cannot hold; "
                          "compute it in that dtype, or change the buffer's dtype with nf.to")
    return t.to(device=spec.device, dtype=spec.dtype)


def _castable(src: torch.dtype, dst: torch.dtype) -> bool:
    """``torch.can_cast``'s rule (no cast to a lower kind: complex > floating > integer > bool),
    written on the dtypes' flags so that ``torch.compile`` folds it."""
    if dst.is_complex:
        return True
    if dst.is_floating_point:
        return not src.is_complex
    if dst == torch.bool:
        return src == torch.bool
    return not (src.is_floating_point or src.is_complex)


def to_module(p: Particle, *, copy: bool = True) -> nn.Module:
    """A fresh ``nn.Module`` holding ``p``'s values (for eager use, optimizers, ``state_dict``).

    With ``copy=True`` (the default) the module owns copies, so training it never changes
    ``p``; ``copy=False`` shares storage with ``p``. Shared (``clone=False``) parameters are the
    species' one tensor either way. Tied parameters stay tied.

    >>> import torch, nytorch_func as nf
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> m = nf.to_module(nf.from_module(net))
    >>> m is net, all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), net.state_dict().values()))
    (False, True)
    """
    expect_particle(p, "to_module")
    if p.batch_shape:
        raise SchemaError(f"to_module: the particle is a population with batch shape "
                          f"{tuple(p.batch_shape)}; take one member first (pop[i]) or use "
                          "torch.func.vmap(nf.apply, ...) to run all of them")
    s = p._schema
    with s.species._call_lock:  # no forward pass may have tensors swapped into the skeleton
        return _copy_module(p, s, copy)


def _copy_module(p: Particle, s: Schema, copy: bool) -> nn.Module:
    memo: dict[int, Any] = {}
    for spec, leaf in zip(s.leaf_specs, p._leaves):
        value = leaf.detach()
        value = value.clone() if copy else value
        if spec.kind == "param":
            value = nn.Parameter(value, requires_grad=spec.requires_grad)
        for path in spec.paths:
            memo[id(_skeleton_tensor(s, path, spec.kind))] = value
    for key, tensor in s.shared.items():
        spec = s.by_path[key]
        for path in spec.paths:
            memo[id(_skeleton_tensor(s, path, spec.kind))] = tensor
    memo[id(memo)] = []
    module = _copy.deepcopy(s._skeleton, memo)
    if p._training is not None:  # p.train()/p.eval() set every module; else keep each one's mode
        module.train(p._training)
    return module


def _skeleton_tensor(s: Schema, path: str, kind: str) -> torch.Tensor:
    return s._skeleton.get_parameter(path) if kind == "param" else s._skeleton.get_buffer(path)


