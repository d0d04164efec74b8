"""Values in and out of torch's format: ``state_dict``, ``load_state_dict``, ``from_module(m, like=p)``.

A particle's ``state_dict`` has the keys, order and tensors ``nn.Module.state_dict`` gives for
the module the particle stands for (parameters and persistent buffers, every alias of a tied
tensor, shared tensors included); a population's holds each tensor stacked, ``(n, *shape)``.
``load_state_dict`` is the way back into an existing species: a new particle of the same
species and version with the state_dict's values, every difference (missing or unexpected
keys, shapes, dtypes, shared tensors) listed in one typed error, as ``nn.Module.load_state_dict``
lists them. ``from_module(module, like=p)`` puts a separately built module into ``p``'s species.
"""

from __future__ import annotations

import functools
import types
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._arith import at_head
from ._errors import ArgumentTypeError, SchemaError
from ._particle import Particle, expect_particle
from ._schema import Schema, TensorSpec

__all__ = ["state_dict", "load_state_dict", "adopt"]


def _keys(s: Schema) -> list[str]:
    """``nn.Module.state_dict``'s keys for the skeleton, in its order (without extra state)."""
    out = []
    for prefix, m in s._skeleton.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        out += [dot + k for k, t in m._parameters.items() if t is not None]
        out += [dot + k for k, t in m._buffers.items()
                if t is not None and k not in m._non_persistent_buffers_set]
    return out


def _value(p: Particle, spec: TensorSpec) -> torch.Tensor:
    s = p._schema
    i = s.leaf_index.get(spec.key)
    if i is not None:
        return p._leaves[i].detach()
    shared = s.shared[spec.key].detach()
    batch = tuple(p.batch_shape)
    return shared.expand(*batch, *shared.shape) if batch else shared


def state_dict(p: Particle) -> "OrderedDict[str, torch.Tensor]":
    """``p``'s values under ``nn.Module.state_dict``'s keys: ``model.load_state_dict(nf.state_dict(p))``.

    Tensors are detached and share memory with ``p`` (as ``nn.Module.state_dict``'s share it
    with the module): clone before changing one in place. A population gives every tensor
    with its batch dimensions in front, shared (``clone=False``) ones expanded to them.

    >>> import torch, nytorch_func as nf
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    >>> sd = nf.state_dict(nf.from_module(net))
    >>> list(sd) == list(net.state_dict())
    True
    >>> nf.state_dict(nf.population(net, 4))["0.weight"].shape
    torch.Size([4, 3, 2])
    """
    expect_particle(p, "state_dict")
    s = p._schema
    return OrderedDict((k, _value(p, s.by_path[k])) for k in _keys(s))


def load_state_dict(p: Particle, state_dict: Any, *, strict: bool = True) -> Particle:
    """A particle of ``p``'s species and version holding the values of ``state_dict``.

    ``state_dict`` is a mapping like ``nn.Module.state_dict()`` returns (for a population:
    every tensor stacked, ``(n, *shape)``, e.g. ``nf.state_dict(pop)``), or, for a population, a
    list of ``n`` such mappings, one per member. With ``strict=True`` its keys must be exactly
    ``nf.state_dict(p)``'s; with ``strict=False`` missing keys keep ``p``'s values and unexpected
    ones are ignored. Shapes and dtypes must match (cast first: nothing is converted silently);
    tensors on another device are copied over. Shared (``clone=False``) tensors are one tensor
    of the whole species: a value for one must equal it. Every problem is listed in one
    :class:`SchemaError`, and nothing changes. The values are copied: later changes to the
    state_dict's tensors do not reach the particle.

    >>> import torch, nytorch_func as nf
    >>> net = torch.nn.Linear(2, 1)
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> q = nf.load_state_dict(p, net.state_dict())
    >>> q.schema is p.schema, torch.equal(q["weight"], net.weight)
    (True, True)
    >>> nf.load_state_dict(p, {"weight": torch.zeros(1, 3)})
    Traceback (most recent call last):
    ...
    nytorch_func._errors.SchemaError: load_state_dict: the state_dict does not fit version 0 of species 'Linear#...':
      missing keys: 'bias'
      size mismatch for 'weight': the state_dict has shape (1, 3), the particle (1, 2)
    """
    expect_particle(p, "load_state_dict")
    if not isinstance(strict, bool):
        raise ArgumentTypeError(f"load_state_dict: strict must be True or False, got {strict!r}")
    batch = tuple(p.batch_shape)
    if isinstance(state_dict, Mapping):
        problems: list[str] = []
        leaves = _load(p, state_dict, batch, strict, problems, "", grad=True)
    elif isinstance(state_dict, Sequence) and not isinstance(state_dict, (str, bytes)):
        if not batch or len(state_dict) != batch[0]:
            what = "a single particle" if not batch else f"a population of {batch[0]} members"
            raise SchemaError(f"load_state_dict: got a list of {len(state_dict)} state_dicts for "
                              f"{what}; a list holds one state_dict per member of a population "
                              "(or pass one mapping)")
        problems = []
        columns = []
        for i, member_sd in enumerate(state_dict):
            if not isinstance(member_sd, Mapping):
                raise ArgumentTypeError(f"load_state_dict: member {i} is a "
                                        f"{type(member_sd).__name__}, not a state_dict mapping")
            columns.append(_load(p[i], member_sd, batch[1:], strict, problems,
                                 f"member {i}: ", grad=False))
        leaves = None if problems else tuple(
            torch.stack([t.detach() for t in c]).requires_grad_(old.requires_grad)
            if old.requires_grad else torch.stack([t.detach() for t in c])
            for c, old in zip(zip(*columns), p._leaves))
    else:
        raise ArgumentTypeError(f"load_state_dict: state_dict must be a mapping of tensors (or, "
                                f"for a population, a list of them), got "
                                f"{type(state_dict).__name__}")
    if problems:
        s = p._schema
        raise SchemaError(f"load_state_dict: the state_dict does not fit version {s.version} of "
                          f"species {s.species.name!r}:\n  " + "\n  ".join(problems))
    return Particle._make(p._schema, leaves, p._training, p._batch)


def _shape(t: Any) -> str:
    return str(tuple(t.shape))


def _load(p: Particle, sd: Mapping, batch: tuple[int, ...], strict: bool, problems: list[str],
          where: str, *, grad: bool) -> tuple:
    """The leaves of ``p`` with ``sd``'s values; what does not fit goes to ``problems``.

    New leaves are copies; with ``grad`` each gets the ``requires_grad`` of the leaf it replaces.
    """
    s = p._schema
    keys = _keys(s)
    expected = set(keys)
    missing = [k for k in keys if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if strict and missing:
        problems.append(f"{where}missing keys: {', '.join(map(repr, missing))}")
    if strict and unexpected:
        problems.append(f"{where}unexpected keys: {', '.join(map(repr, map(str, unexpected)))}")
    chosen: dict[str, torch.Tensor] = {}
    for k in keys:
        if k not in sd:
            continue
        value, spec = sd[k], s.by_path[k]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{where}{k!r} is a {type(value).__name__}, not a tensor")
            continue
        want = (*batch, *spec.shape)
        if tuple(value.shape) != want:
            problems.append(f"{where}size mismatch for {k!r}: the state_dict has shape "
                            f"{_shape(value)}, the particle {want}")
            continue
        if value.dtype != spec.dtype:
            problems.append(f"{where}dtype mismatch for {k!r}: the state_dict has {value.dtype}, "
                            f"the particle {spec.dtype}; cast it first (.to({spec.dtype}))")
            continue
        if spec.key in chosen:  # another alias of a tied tensor
            if not torch.equal(chosen[spec.key], value.to(chosen[spec.key].device)):
                problems.append(f"{where}{k!r} and {spec.paths[0]!r} are one tied tensor in the "
                                "particle but have different values in the state_dict")
            continue
        if not spec.leaf:
            shared = _value(p, spec)
            if not torch.equal(value.to(shared.device), shared):
                problems.append(f"{where}{k!r} is shared by the whole species (clone=False or a "
                                "shared buffer) and the state_dict's value differs from it; make "
                                "it per-particle first (nf.configure(p, path, clone=True))")
            continue
        chosen[spec.key] = value
    out = []
    for spec, leaf in zip(s.leaf_specs, p._leaves):
        value = chosen.get(spec.key)
        if value is None:
            out.append(leaf)
            continue
        value = value.detach().to(spec.device, copy=True)
        out.append(value.requires_grad_(True) if grad and leaf.requires_grad else value)
    return tuple(out)


# from_module(module, like=p) ---------------------------------------------------------------------

def _tensor_layout(s: Schema) -> dict[str, tuple]:
    """``{path: (kind, shape, dtype, device, tie group, persistent)}`` of a schema."""
    return {path: (spec.kind, spec.shape, spec.dtype, spec.device, spec.paths,
                   spec.persistent if spec.kind == "buffer" else True)
            for spec in s.specs for path in spec.paths}


def adopt(module: nn.Module, specs: list[TensorSpec], values: list[torch.Tensor],
          like: Particle) -> Particle:
    """``from_module(module, like=p)``: ``module``'s tensors as a particle of ``p``'s species at
    its newest version, or a SchemaError listing every difference.

    The module must be what the species' skeleton records: the same tensors (paths, shapes,
    dtypes, devices, ties), submodule classes, and plain attributes (a LeakyReLU's slope, a
    Dropout's rate, a BatchNorm's eps, ...), since the particle runs on the species' skeleton.
    Its mode is kept: the particle runs in ``module``'s mode (``p.training``), unless its
    submodules are in mixed modes that differ from the species', which is refused (call
    ``module.train()`` or ``module.eval()`` first). ``specs``/``values`` are ``module``'s, as
    ``_bridge.collect`` gives them.
    """
    expect_particle(like, "from_module", "like= takes a particle of the species to join")
    head = at_head(like)._schema
    theirs = {path: (spec.kind, spec.shape, spec.dtype, spec.device, spec.paths,
                     spec.persistent if spec.kind == "buffer" else True)
              for spec in specs for path in spec.paths}
    ours = _tensor_layout(head)
    problems = _differences(ours, theirs)
    have = list(head._skeleton.named_modules(remove_duplicate=False))
    got = list(module.named_modules(remove_duplicate=False))
    if [(p, type(m)) for p, m in have] != [(p, type(m)) for p, m in got]:
        mods_h = {p: type(m) for p, m in have}
        mods_g = {p: type(m) for p, m in got}
        for path in sorted(set(mods_h) | set(mods_g)):
            a, b = mods_h.get(path), mods_g.get(path)
            if a is not b:
                problems.append(f"submodule {path or '<root>'!r}: the species has "
                                f"{a.__name__ if a else 'none'}, the module "
                                f"{b.__name__ if b else 'none'}")
    else:
        for (path, a), (_, b) in zip(have, got):
            problems += attribute_differences(a, b, path)
    training = _mode(have, got, problems)
    by_path = {path: v for spec, v in zip(specs, values) for path in spec.paths}
    if not problems:
        for key, shared in head.shared.items():
            if not torch.equal(by_path[key].detach(), shared.detach()):
                problems.append(f"{key!r} is shared by the whole species (clone=False or a "
                                "shared buffer) and the module's value differs from it")
    if problems:
        raise SchemaError(f"from_module: {type(module).__name__} does not have the structure of "
                          f"version {head.version} of species {head.species.name!r}, so it "
                          "cannot join it:\n  " + "\n  ".join(problems[:20]) +
                          (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    return Particle._make(head, tuple(by_path[k] for k in head.leaf_keys), training)


def _mode(have: list[tuple[str, nn.Module]], got: list[tuple[str, nn.Module]],
          problems: list[str]) -> bool | None:
    """The particle's mode for a module whose modules are ``got`` (the skeleton's: ``have``).

    ``None`` (each module in its species' mode) when the modes are the skeleton's; the
    module's mode when all its modules share one; else a problem.
    """
    modes = [m.training for _, m in got]
    if modes == [m.training for _, m in have]:
        return None
    if all(modes) or not any(modes):
        return modes[0]
    mixed = [f"{p or '<root>'}={'train' if m.training else 'eval'}" for p, m in got]
    problems.append(f"the module's submodules are in mixed modes ({', '.join(mixed[:8])}"
                    f"{', ...' if len(mixed) > 8 else ''}) that differ from the species'; a "
                    "particle runs every module in one mode or in the species' modes: call "
                    "module.train() or module.eval() first")
    return None


# Entries of every nn.Module's __dict__ that are not its configuration: tensors and submodules
# (compared as specs and classes), hooks, the mode (compared on its own), an RNN's flat weights.
_INTERNAL = frozenset(nn.Module().__dict__) | {"training", "_flat_weights", "_flat_weight_refs"}


def attribute_differences(a: nn.Module, b: nn.Module, path: str) -> list[str]:
    """The plain attributes (``vars()`` minus torch's bookkeeping) in which two modules differ."""
    da = {k: v for k, v in vars(a).items() if k not in _INTERNAL}
    db = {k: v for k, v in vars(b).items() if k not in _INTERNAL}
    where = f"{path}." if path else ""
    out = []
    for k in [*da, *(k for k in db if k not in da)]:
        if k not in da or k not in db:
            side = "the module" if k not in da else "the species"
            out.append(f"attribute {where}{k}: only in {side}")
        elif not same_value(da[k], db[k]):
            out.append(f"attribute {where}{k}: {da[k]!r:.60} in the species, {db[k]!r:.60} in "
                       "the module")
    return out


def same_value(a: Any, b: Any, depth: int = 0) -> bool:
    """Whether two attribute values are equal: by value for numbers, strings, containers,
    tensors and objects with ``==``; functions by their code, defaults and closures; other
    objects by their attributes (NaN equals NaN)."""
    if a is b:
        return True
    if type(a) is not type(b) or depth > 8:
        return False
    if isinstance(a, torch.Tensor):
        return (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                and (a.is_meta or bool(torch.equal(a, b))))
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y, depth + 1) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k], depth + 1) for k in a)
    if isinstance(a, types.FunctionType):
        return (a.__code__ is b.__code__
                and same_value(a.__defaults__, b.__defaults__, depth + 1)
                and same_value(a.__kwdefaults__, b.__kwdefaults__, depth + 1)
                and same_value([c.cell_contents for c in a.__closure__ or ()],
                               [c.cell_contents for c in b.__closure__ or ()], depth + 1))
    if isinstance(a, types.MethodType):
        return a.__func__ is b.__func__ and same_value(a.__self__, b.__self__, depth + 1)
    if isinstance(a, functools.partial):
        return same_value((a.func, a.args, a.keywords), (b.func, b.args, b.keywords), depth + 1)
    if isinstance(a, nn.Module):
        return not attribute_differences(a, b, "")
    if type(a).__eq__ is object.__eq__:
        return hasattr(a, "__dict__") and same_value(vars(a), vars(b), depth + 1)
    try:
        same = a == b
        if type(same) is bool:
            return same
        every = getattr(same, "all", None)  # an array of answers (numpy)
        return bool(every() if callable(every) else same)
    except Exception:  # noqa: BLE001 - an == that cannot answer: not provably equal
        return False


def _differences(ours: dict[str, tuple], theirs: dict[str, tuple]) -> list[str]:
    out = []
    missing = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in ours]
    if missing:
        out.append(f"missing in the module: {', '.join(map(repr, missing))}")
    if extra:
        out.append(f"not in the species: {', '.join(map(repr, extra))}")
    names = ("kind", "shape", "dtype", "device", "tied paths", "persistent")
    for path in ours:
        if path not in theirs:
            continue
        for name, a, b in zip(names, ours[path], theirs[path]):
            if a != b:
                out.append(f"{path!r}: {name} {a} in the species, {b} in the module")
    return out
