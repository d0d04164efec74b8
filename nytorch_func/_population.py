"""Populations: particles whose leaves carry leading batch dimensions."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as torch_pytree

from ._arith import at_head, check_generator
from ._bridge import apply, collect, from_module
from ._errors import ArgumentTypeError, SchemaError, SpeciesMismatchError, expect
from ._init import reset_members
from ._particle import Particle, members

__all__ = ["stack", "unstack", "population", "from_modules", "vmap_apply", "VmapFallbackWarning"]


def stack(particles: Sequence[Particle]) -> Particle:
    """One population of ``len(particles)`` members: every leaf stacked along a new dim 0.

    Members are brought to the newest version of their (one) species first. Shared
    (``clone=False``) parameters stay one unstacked tensor in the schema. ``particles`` is a
    list, tuple or other iterable of particles; a single particle (even a population) or a
    non-iterable is an ArgumentTypeError, as ``torch.stack(tensor)`` is a TypeError.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(3, 2))
    >>> pop = nf.stack([p, p.randn(), p.randn()])
    >>> len(pop), pop.batch_shape, pop["weight"].shape
    (3, torch.Size([3]), torch.Size([3, 2, 3]))
    """
    particles = _sequence(particles, Particle, "stack", "Particles", "nf.stack([p, q, ...])")
    if not particles:
        raise SchemaError("stack: got no particles; a population needs at least one member")
    for q in particles:
        expect(q, Particle, "stack", "Particles")
    species = particles[0]._schema.species
    for i, q in enumerate(particles):
        if q._schema.species is not species:
            raise SpeciesMismatchError(f"stack: member {i} is of species {q.species.name!r}, "
                                       f"member 0 of {species.name!r}; a population is one species")
    particles = [at_head(q) for q in particles]
    schema = particles[0]._schema
    shapes = {tuple(q.batch_shape) for q in particles}
    if len(shapes) > 1:
        raise SchemaError(f"stack: members have different batch shapes {sorted(shapes)}")
    leaves = tuple(torch.stack(column) for column in zip(*(q._leaves for q in particles)))
    return Particle._make(schema, leaves, particles[0]._training,
                          (len(particles), *shapes.pop()))


def unstack(pop: Particle) -> list[Particle]:
    """The members of a population along its first batch dimension (``list(pop)``)."""
    members(pop, "unstack")
    return list(pop)


_INITS = ("reset_parameters", "randn", "rand", "clone", "zeros")


def population(source: "Particle | torch.nn.Module", n: int, init: Any = "reset_parameters", *,
               generator: torch.Generator | None = None) -> Particle:
    """``n`` particles of one species, stacked, built in one vectorised step per leaf.

    ``source`` is a particle, an ``nn.Module`` (a new species is made from it), or a module
    class or zero-argument factory (``MyNet``, ``lambda: MyNet(width=64)``): then every member
    is constructed by it, so initialisation its ``__init__`` does its own way (GPT's
    N(0, 0.02), a zero head) is exactly what ``n`` constructed modules get; with ``generator``
    each construction runs on its own seed drawn from it (the global RNG is left as it was).
    ``init``:

    - ``"reset_parameters"`` (the default): every member initialised as ``n`` independently
      constructed modules would be, by each submodule's own ``reset_parameters`` with
      independent random draws; torch's layers are drawn for all members at once (one draw per
      leaf), other modules' resets run member by member (see ``nytorch_func._init``);
    - ``"randn"`` / ``"rand"``: operational parameters drawn from N(0, 1) / U[0, 1);
    - ``"clone"``: ``source`` copied into every member; ``"zeros"``;
    - a callable ``init(leaf_batch, spec) -> tensor`` given the source leaf broadcast to
      ``(n, *shape)``.

    ``generator`` makes the draws reproducible. Non-operational parameters (and buffers no
    reset touches) are copies of the source's in every member; shared (``clone=False``)
    parameters stay one tensor in the schema.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(3, 2), 8, generator=torch.Generator().manual_seed(0))
    >>> pop.batch_shape, pop["weight"].shape
    (torch.Size([8]), torch.Size([8, 2, 3]))
    >>> bool(pop["weight"].abs().max() <= 3 ** -0.5)   # Linear's own U(-1/sqrt(3), 1/sqrt(3))
    True
    """
    if not isinstance(source, (torch.nn.Module, Particle)) and callable(source):
        return _constructed(source, n, init, generator)
    if isinstance(source, torch.nn.Module):
        source = from_module(source)
    expect(source, Particle, "population", "a Particle, an nn.Module or a module factory")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ArgumentTypeError(f"population: n must be an int, got {type(n).__name__} ({n!r})")
    if n < 1:
        raise SchemaError(f"population: n must be a positive int, got {n!r}")
    if not (callable(init) or isinstance(init, str)):
        raise ArgumentTypeError(f"population: init must be one of {_INITS} or a callable, got "
                                f"{type(init).__name__} ({init!r})")
    if not (callable(init) or init in _INITS):
        raise SchemaError(f"population: init must be one of {_INITS} or a callable, got {init!r}")
    check_generator(generator, "population")
    if source.batch_shape:
        raise SchemaError("population: the source is already a population; pass one particle")
    source = at_head(source)
    s = source._schema
    if init == "reset_parameters":
        return Particle._make(s, reset_members(source, n, generator), source._training, (n,))
    operational = set(s.op_index)
    leaves = []
    for i, (spec, leaf) in enumerate(zip(s.leaf_specs, source._leaves)):
        base = leaf.detach().expand(n, *leaf.shape)
        if i not in operational or init == "clone":
            new = base.clone()
        elif callable(init):
            new = init(base, spec)
            if not isinstance(new, torch.Tensor) or new.shape != base.shape or (
                    new.dtype != base.dtype or new.device != base.device):
                got = (f"shape {tuple(new.shape)} {new.dtype} on {new.device}"
                       if isinstance(new, torch.Tensor) else type(new).__name__)
                raise SchemaError(f"population: init returned {got} for {spec.key!r}; it must "
                                  f"return a tensor of shape {tuple(base.shape)} {base.dtype} on "
                                  f"{base.device} (the schema's dtype: cast with .to(base.dtype))")
        elif init == "zeros":
            new = torch.zeros_like(base)
        else:
            draw = torch.randn if init == "randn" else torch.rand
            new = draw(base.shape, generator=generator, dtype=leaf.dtype, device=leaf.device)
        if leaf.requires_grad and new.is_floating_point():
            new = new.requires_grad_(True) if new.is_leaf else new
        leaves.append(new)
    return Particle._make(s, tuple(leaves), source._training, (n,))


def _constructed(factory: Callable[[], Any], n: int, init: Any,
                 generator: torch.Generator | None) -> Particle:
    """``population(factory, n)``: ``n`` modules constructed by ``factory``, stacked."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ArgumentTypeError(f"population: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise SchemaError(f"population: n must be a positive int, got {n!r}")
    if not (isinstance(init, str) and init == "reset_parameters"):
        raise SchemaError(f"population: init={init!r} applies to a module or particle source; a "
                          "factory constructs every member itself (call it once and pass the "
                          "module to draw members another way)")
    check_generator(generator, "population")
    modules = []
    for i in range(n):
        if generator is None:
            m = factory()
        else:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                     device=generator.device))
            with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
                torch.manual_seed(seed)
                m = factory()
        if not isinstance(m, torch.nn.Module):
            raise ArgumentTypeError(f"population: the factory returned {type(m).__name__} for "
                                    f"member {i}; it must return an nn.Module")
        modules.append(m)
    return from_modules(modules)


def from_modules(modules: Sequence[torch.nn.Module]) -> Particle:
    """One species and one population from independently built models of one architecture.

    The first module defines the species; every other must have the same parameter and buffer
    paths, shapes and dtypes (a SchemaError names the first difference). ``modules`` is a list,
    tuple, ``nn.ModuleList`` or other iterable of modules; a single module (an
    ``nn.Sequential`` included: it is one model) or a non-iterable is an ArgumentTypeError.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.from_modules([torch.nn.Linear(2, 2) for _ in range(4)])
    >>> len(pop)
    4
    """
    if not isinstance(modules, torch.nn.ModuleList):
        modules = _sequence(modules, torch.nn.Module, "from_modules", "nn.Modules",
                            "nf.from_modules([m1, m2, ...])")
    modules = list(modules)
    if not modules:
        raise SchemaError("from_modules: got no modules")
    for m in modules:
        expect(m, torch.nn.Module, "from_modules", "nn.Modules")
    first = from_module(modules[0])
    ref = [(s.paths, s.shape, s.dtype) for s in collect(modules[0])[0]]
    columns = []
    for i, m in enumerate(modules):
        specs, values = collect(m)
        got = [(s.paths, s.shape, s.dtype) for s in specs]
        if got != ref:
            bad = next((a, b) for a, b in zip(ref + [None] * len(got), got + [None] * len(ref))
                       if a != b)
            raise SchemaError(f"from_modules: module {i} differs from module 0 in its tensors: "
                              f"{bad[0]} vs {bad[1]}")
        by_key = {s.key: v.detach() for s, v in zip(specs, values)}
        columns.append(tuple(by_key[k] for k in first._schema.leaf_keys))
    leaves = tuple(torch.stack(c) for c in zip(*columns))
    leaves = tuple(t.requires_grad_(spec.requires_grad) if t.is_floating_point() else t
                   for t, spec in zip(leaves, first._schema.leaf_specs))
    return Particle._make(first._schema, leaves, first._training, (len(modules),))


def _sequence(items: Any, kind: type, what: str, noun: str, example: str) -> list:
    """``items`` as a list; ArgumentTypeError for a single ``kind`` or a non-iterable."""
    if isinstance(items, kind):
        raise ArgumentTypeError(f"{what}: expected a sequence of {noun}, got one "
                                f"{type(items).__name__}; pass a list: {example}")
    try:
        it = iter(items)
    except TypeError:
        raise ArgumentTypeError(f"{what}: expected a sequence of {noun}, got "
                                f"{type(items).__name__}; pass a list: {example}") from None
    return list(it)


class VmapFallbackWarning(UserWarning):
    """vmap_apply ran members one by one because torch has no batching rule for an op."""


def vmap_apply(pop: Particle, /, *args: Any, in_dims: Any = None, **kwargs: Any) -> Any:
    """Forward every member of ``pop``: ``torch.func.vmap(nf.apply)`` with a safety net.

    ``in_dims`` describes ``args`` as in ``torch.func.vmap``: one int for every argument, or a
    tuple (or list) with an entry per argument: an int, ``None``, or for a container argument
    (dict, tuple, ...) a structure like it with an int or ``None`` per tensor; the default
    ``None`` shares every argument with all members. Every mapped tensor must hold the
    population's batch shape at that dim (checked first: a typed error otherwise); a negative
    dim counts from the end, for a population with one batch dimension. Keyword arguments are
    shared. A population with several batch dimensions
    (``nf.stack`` of populations) is mapped over each of them; a mapped argument then carries
    the whole batch shape from its ``in_dims`` position on. Where torch has no batching rule for
    an op the model uses (``nn.LSTM``/``nn.GRU`` in torch 2.13), it runs the members one by one
    and stacks the outputs, with a :class:`VmapFallbackWarning`, so the result is the same
    either way.

    >>> import torch, nytorch_func as nf
    >>> pop = nf.population(torch.nn.Linear(3, 2), 4)
    >>> nf.vmap_apply(pop, torch.randn(5, 3)).shape
    torch.Size([4, 5, 2])
    """
    members(pop, "vmap_apply")
    batch = tuple(pop.batch_shape)
    dims = _in_dims(in_dims, args, batch)

    def one(p: Particle, *xs: Any) -> Any:
        return apply(p, *xs, **kwargs)

    if not pop._leaves:  # nothing to map over (every tensor shared): the members one by one
        return _loop(one, pop, args, dims)
    mapped = one
    for _ in batch:
        mapped = torch.func.vmap(mapped, in_dims=(0, *dims))
    try:
        return mapped(pop, *args)
    except RuntimeError as err:
        if "Batching rule not implemented" not in str(err):
            raise
        warnings.warn(f"vmap_apply: {str(err).splitlines()[0]}; running the "
                      f"{math.prod(batch)} members one by one", VmapFallbackWarning, stacklevel=2)
    return _loop(one, pop, args, dims)


def _in_dims(in_dims: Any, args: tuple, batch: tuple[int, ...]) -> tuple:
    """One in_dims entry per argument, every mapped tensor checked against ``batch``."""
    if in_dims is None:
        return (None,) * len(args)
    if isinstance(in_dims, int) and not isinstance(in_dims, bool):
        dims: tuple = (in_dims,) * len(args)
    elif isinstance(in_dims, (tuple, list)):
        dims = tuple(in_dims)
    else:
        raise ArgumentTypeError(f"vmap_apply: in_dims must be None, an int or a tuple with an "
                                f"entry per argument, got {type(in_dims).__name__}")
    if len(dims) != len(args):
        raise SchemaError(f"vmap_apply: in_dims has {len(dims)} entries for {len(args)} arguments")
    for i, (a, d) in enumerate(zip(args, dims)):
        for leaf, dim in _mapped_leaves(a, d, f"argument {i}", f"in_dims[{i}]"):
            _check_mapped(leaf, dim, batch, f"argument {i}", f"in_dims[{i}]")
    return dims


def _mapped_leaves(a: Any, d: Any, name: str, where: str) -> list[tuple[Any, int]]:
    """``(leaf, dim)`` for every leaf of argument ``a`` that ``d`` maps (a pytree prefix of
    ``a``, as torch.func.vmap reads it: an int maps every leaf under it)."""
    if d is None:
        return []
    if isinstance(d, int) and not isinstance(d, bool) and isinstance(a, torch.Tensor):
        return [(a, d)]
    flat, spec = torch_pytree.tree_flatten(a)
    leaf_dims = torch_pytree._broadcast_to_and_flatten(d, spec)
    if leaf_dims is None:
        raise ArgumentTypeError(f"vmap_apply: {where}={d!r:.60} does not match the structure of "
                                f"{name} ({type(a).__name__}); give an int or None, or a "
                                "structure like the argument's with an int or None per tensor")
    out = []
    for leaf, dim in zip(flat, leaf_dims):
        if dim is None:
            continue
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ArgumentTypeError(f"vmap_apply: {where} must hold ints or None, got {dim!r:.40}")
        out.append((leaf, dim))
    return out


def _check_mapped(leaf: Any, d: int, batch: tuple[int, ...], name: str, where: str) -> None:
    if not isinstance(leaf, torch.Tensor):
        raise ArgumentTypeError(f"vmap_apply: {name} is mapped ({where}={d}) but holds a "
                                f"{type(leaf).__name__}; only tensors are mapped, give it None "
                                "to share it")
    if d < 0 and len(batch) > 1:
        raise SchemaError(f"vmap_apply: {where}={d}: a negative dim needs a population with one "
                          f"batch dimension, this one has {batch}; use a non-negative dim")
    start = d + leaf.dim() if d < 0 else d
    if start < 0 or tuple(leaf.shape[start:start + len(batch)]) != batch:
        raise SchemaError(f"vmap_apply: {name} must hold the population's batch shape {batch} "
                          f"at dim {d} ({where}), got a tensor of shape {tuple(leaf.shape)}")


def _select(a: Any, d: Any, i: int) -> Any:
    """Member ``i`` of argument ``a`` mapped by ``d`` (None, an int or a pytree prefix)."""
    if d is None:
        return a
    if isinstance(d, int) and isinstance(a, torch.Tensor):
        return a.select(d, i)
    flat, spec = torch_pytree.tree_flatten(a)
    leaf_dims = torch_pytree._broadcast_to_and_flatten(d, spec)
    return torch_pytree.tree_unflatten(
        [x if dim is None else x.select(dim, i) for x, dim in zip(flat, leaf_dims)], spec)


def _loop(one: Any, pop: Particle, args: tuple, dims: tuple) -> Any:
    """``one`` over the members along the first batch dim (recursively), outputs stacked."""
    if not pop.batch_shape:
        return one(pop, *args)
    outs = [_loop(one, member, tuple(_select(a, d, i) for a, d in zip(args, dims)), dims)
            for i, member in enumerate(pop)]
    return torch_pytree.tree_map(lambda *xs: torch.stack(xs), *outs)
