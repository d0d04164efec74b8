"""Random-valued particles and populations, seeded values to add, and comparing particles."""

from __future__ import annotations

import copy
from typing import Any

import hypothesis.strategies as st
import optree
import torch
from torch import nn

import nytorch_func as nf

from ._recipes import modules as random_modules

__all__ = ["source_particle", "random_particle", "random_population", "particles", "populations",
           "seeded_param", "seeded_buffer", "fresh_like", "tensors_of", "assert_same_values",
           "assert_leaves_match_schema", "seeds"]

seeds = st.integers(0, 2**16)


def source_particle(species: Any, what: str = "nft") -> nf.Particle:
    """A particle to derive from: ``species`` is a Particle, a Species or an nn.Module."""
    if isinstance(species, nf.Particle):
        return species
    if isinstance(species, nf.Species):
        head = species.head
        if head is None:
            raise nf.VersionError(f"{what}: the species given has no live version left; pass a "
                                  "particle of it instead")
        return nf.Particle(head, tuple(torch.zeros(s.shape, dtype=s.dtype, device=s.device)
                                       for s in head.leaf_specs))
    if isinstance(species, nn.Module):
        return nf.from_module(species)
    raise nf.ArgumentTypeError(f"{what}: expected a Particle, Species or nn.Module, got "
                               f"{type(species).__name__}")


def _draw_like(t: torch.Tensor, gen: torch.Generator, param: bool) -> torch.Tensor:
    """A new tensor like ``t``: N(0, 1) for parameters, U[0.5, 1.5) for buffers, ints copied."""
    if not (t.is_floating_point() or t.is_complex()):
        return t.detach().clone()
    if param:
        draw = torch.randn(t.shape, generator=gen, dtype=t.dtype if t.is_complex() else None)
    else:
        draw = torch.rand(t.shape, generator=gen) + 0.5
    return draw.to(dtype=t.dtype, device=t.device)


def random_particle(source: Any, seed: int = 0) -> nf.Particle:
    """A particle of ``source``'s species (at its version) whose values are drawn from ``seed``.

    Floating-point parameters (operational or not) are N(0, 1); floating-point per-particle
    buffers are U[0.5, 1.5) (so variances stay positive); integer leaves are copied. Values are
    drawn in float32 and cast to the leaf's dtype, so a species converted to bfloat16 gets the
    same numbers, rounded. Every leaf is a new tensor with the source leaf's ``requires_grad``.
    ``source`` is a Particle (a population keeps its batch shape), a Species (its head) or an
    ``nn.Module`` (a new species).

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> p = nf.from_module(torch.nn.BatchNorm1d(2))
    >>> q = nft.random_particle(p, seed=1)
    >>> q.species is p.species, bool((q.buffers["running_var"] >= 0.5).all())
    (True, True)
    >>> torch.equal(q["weight"], nft.random_particle(p, seed=1)["weight"])
    True
    """
    p = source_particle(source, "random_particle")
    gen = torch.Generator().manual_seed(seed)
    paths, leaves, spec = optree.tree_flatten_with_path(p)
    schema = p.schema
    out = []
    for path, leaf in zip(paths, leaves):
        new = _draw_like(leaf, gen, schema.by_path[path[0]].kind == "param")
        out.append(new.requires_grad_(leaf.requires_grad) if leaf.requires_grad else new)
    return optree.tree_unflatten(spec, out)


def random_population(source: Any, n: int = 2, seed: int = 0) -> nf.Particle:
    """``n`` random particles of ``source``'s species (seeds ``seed``, ``seed + 1``, ...), stacked.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> pop = nft.random_population(torch.nn.Linear(2, 1), n=3)
    >>> pop.batch_shape, pop["weight"].shape
    (torch.Size([3]), torch.Size([3, 1, 2]))
    """
    p = source_particle(source, "random_population")
    return nf.stack([random_particle(p, seed + i) for i in range(n)])


def particles(species: Any = None, *, modules: st.SearchStrategy[nn.Module] | None = None
              ) -> st.SearchStrategy[nf.Particle]:
    """Random-valued particles: of ``species`` (a Particle, Species or nn.Module) when given,
    else each of a new species made from :func:`modules` (or the ``modules`` strategy given).

    Values come from :func:`random_particle` with a drawn seed, so a failing example prints as
    ``random_particle(from_module(build_module(Recipe(...))), seed=...)`` and replays exactly.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings
    >>> base = nf.from_module(torch.nn.Linear(2, 2))
    >>> @settings(max_examples=5, database=None)
    ... @given(nft.particles(base), nft.particles(base))
    ... def check(p, q):
    ...     nft.assert_same_values(p - q, -(q - p))
    >>> check()
    """
    if species is None:
        source = (modules if modules is not None else random_modules()).map(nf.from_module)
    else:
        source = st.just(source_particle(species, "particles"))
    return st.builds(random_particle, source, seed=seeds)


def populations(species: Any = None, *, min_size: int = 1, max_size: int = 4
                ) -> st.SearchStrategy[nf.Particle]:
    """Stacked populations of ``min_size``..``max_size`` random members of one species
    (``species`` as for :func:`particles`; a new species per example when ``None``).

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(nft.populations(max_size=3))
    ... def check(pop):
    ...     assert 1 <= len(pop) <= 3 and len(nf.unstack(pop)) == len(pop)
    >>> check()
    """
    if species is None:
        source = random_modules().map(nf.from_module)
    else:
        source = st.just(source_particle(species, "populations"))
    return st.builds(random_population, source, n=st.integers(min_size, max_size), seed=seeds)


# values that events add ------------------------------------------------------------------------

def seeded_param(shape: tuple[int, ...], seed: int = 0, requires_grad: bool = True
                 ) -> nn.Parameter:
    """An ``nn.Parameter`` of N(0, 1) values drawn from ``seed`` (what drawn ``add_param`` adds).

    >>> import nytorch_func.testing as nft
    >>> w = nft.seeded_param((2,), seed=3)
    >>> type(w).__name__, tuple(w.shape), bool((w == nft.seeded_param((2,), seed=3)).all())
    ('Parameter', (2,), True)
    """
    t = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))
    return nn.Parameter(t, requires_grad=requires_grad)


def seeded_buffer(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """A tensor drawn from ``seed``: N(0, 1) floats or integers in [0, 5) (what drawn
    ``add_buffer`` adds).

    >>> import torch, nytorch_func.testing as nft
    >>> nft.seeded_buffer((3,), seed=1, dtype=torch.int64).dtype
    torch.int64
    """
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(tuple(shape), generator=gen).to(dtype)
    return torch.randint(0, 5, tuple(shape), generator=gen, dtype=dtype)


def fresh_like(module: nn.Module, seed: int = 0) -> nn.Module:
    """A new module of ``module``'s class and structure with values drawn from ``seed``.

    What a model gets when one of its blocks is deleted and re-added as a new block of the same
    kind: every floating-point parameter N(0, 1), every floating-point buffer U[0.5, 1.5),
    integer buffers copied, ties kept, ``module`` itself untouched.

    >>> import torch, nytorch_func.testing as nft
    >>> block = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> new = nft.fresh_like(block, seed=1)
    >>> type(new[1]).__name__, torch.equal(new[0].weight, block[0].weight)
    ('BatchNorm1d', False)
    >>> torch.equal(new[0].weight, nft.fresh_like(block, seed=1)[0].weight)
    True
    """
    if not isinstance(module, nn.Module):
        raise nf.ArgumentTypeError(f"fresh_like: expected an nn.Module, got "
                                   f"{type(module).__name__}")
    new = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for items, param in ((new.named_parameters(remove_duplicate=False), True),
                             (new.named_buffers(remove_duplicate=False), False)):
            for _, t in items:
                if id(t) not in seen and not t.is_meta:
                    seen.add(id(t))
                    t.copy_(_draw_like(t, gen, param))
    return new


# comparing -------------------------------------------------------------------------------------

def tensors_of(p: nf.Particle) -> dict[str, torch.Tensor]:
    """``{path: tensor}`` for every parameter and buffer path of ``p`` (tied aliases included).

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> net[1].weight = net[0].weight
    >>> sorted(nft.tensors_of(nf.from_module(net)))
    ['0.bias', '0.weight', '1.bias', '1.weight']
    """
    return {path: p[path] for path in p.schema.by_path}


def assert_same_values(a: nf.Particle, b: nf.Particle, *, rtol: float | None = None,
                       atol: float | None = None) -> None:
    """Assert ``a`` and ``b`` are at the same version and hold equal tensors at every path.

    NaNs compare equal to NaNs; ``rtol``/``atol`` as in ``torch.testing.assert_close`` (exact
    by default). The error names the first path that differs.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> nft.assert_same_values(p, p.clone())
    >>> nft.assert_same_values(p, p + 1)
    Traceback (most recent call last):
    ...
    AssertionError: particles differ at 'weight': ...
    """
    if a.schema is not b.schema:
        raise AssertionError(f"particles are at different schemas: {a.schema!r} vs {b.schema!r}")
    if tuple(a.batch_shape) != tuple(b.batch_shape):
        raise AssertionError(f"batch shapes differ: {tuple(a.batch_shape)} vs "
                             f"{tuple(b.batch_shape)}")
    exact = rtol is None and atol is None
    for path, ta in tensors_of(a).items():
        tb = b[path]
        try:
            torch.testing.assert_close(ta, tb, equal_nan=True, rtol=0 if exact else rtol,
                                       atol=0 if exact else atol, check_device=True)
        except AssertionError as err:
            raise AssertionError(f"particles differ at {path!r}: {err}") from None


def assert_leaves_match_schema(p: nf.Particle) -> None:
    """Assert every leaf of ``p`` has its spec's dtype, per-member shape and device, and every
    shared tensor its spec's dtype, shape and device.

    The invariant every particle must keep (operations cast to the leaf's dtype; only
    ``nf.to`` changes dtypes, and it is an event).

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> nft.assert_leaves_match_schema(nf.population(torch.nn.Linear(2, 1).double(), 3))
    """
    s = p.schema
    batch = tuple(p.batch_shape)
    if len(p.leaves) != len(s.leaf_specs):
        raise AssertionError(f"{len(p.leaves)} leaves for {len(s.leaf_specs)} leaf specs at "
                             f"version {s.version}")
    checks = [(spec, leaf, batch) for spec, leaf in zip(s.leaf_specs, p.leaves)]
    checks += [(s.by_path[key], t, ()) for key, t in s.shared.items()]
    for spec, t, shape in checks:
        if not spec.matches(t, shape):
            want = f"[{'x'.join(map(str, (*shape, *spec.shape)))} {spec.dtype} {spec.device}]"
            got = f"[{'x'.join(map(str, t.shape))} {t.dtype} {t.device}]"
            where = "leaf" if shape is batch else "shared tensor"
            raise AssertionError(f"{where} {spec.key!r} is {got}, its schema (version "
                                 f"{s.version}) says {want}")
