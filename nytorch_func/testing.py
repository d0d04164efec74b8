"""Hypothesis strategies for code built on nytorch_func: models, particles, events, populations.

Use them to property-test your own particle code (``import nytorch_func.testing as nft``)::

    from hypothesis import given
    import nytorch_func as nf
    import nytorch_func.testing as nft

    @given(nft.particles())
    def test_double_is_sum(p):
        nft.assert_same_values(2 * p, p + p)

Every strategy builds small *real* ``nn.Module`` architectures (Linear, Conv1d/2d, LSTM,
BatchNorm, Embedding inside nested Sequential/ModuleDict, sometimes with tied weights and extra
buffers), so examples are cheap to draw and shrink to one small layer. Random tensor values come
from a seeded ``torch.Generator``: an example that fails prints the seed and replays exactly.

* :func:`modules` / :func:`runnable_modules` - models (and an input they accept);
* :func:`particles`, :func:`populations` - random-valued particles / stacked populations;
* :func:`events`, :func:`event_chains` - valid metadata events as :class:`Edit` objects you
  ``.apply(p)``; :func:`invalid_events` - edits every one of which must raise a
  :class:`nytorch_func.NytorchFuncError` and change nothing;
* :func:`build_module`, :func:`random_particle`, :func:`random_population` - the builders the
  strategies map through (they are what a falsifying example prints, so you can replay it);
* :func:`tensors_of`, :func:`assert_same_values` - comparing particles.

>>> import torch, nytorch_func as nf, nytorch_func.testing as nft
>>> from hypothesis import given, settings
>>> @settings(max_examples=5, database=None)
... @given(nft.particles(), nft.particles())
... def check(p, q):
...     nft.assert_same_values(p + q, q + p) if p.species is q.species else None
>>> check()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import hypothesis.strategies as st
import optree
import torch
from torch import nn

import nytorch_func as nf

__all__ = [
    "modules", "runnable_modules", "particles", "populations", "events", "event_chains",
    "invalid_events", "Recipe", "Edit", "EVENT_KINDS", "build_module", "random_particle",
    "random_population", "tensors_of", "assert_same_values",
]

#: The names of the public event functions that :func:`events` draws, simplest first.
EVENT_KINDS = ("add_param", "add_buffer", "add_module", "configure", "configure_buffer",
               "del_param", "del_buffer", "del_module", "set_none")

_LEAF_KINDS = ("Linear", "Conv1d", "Conv2d", "LSTM", "BatchNorm1d", "Embedding")
_NAMES = ("extra", "gain", "aux", "head", "w")
_POLICIES = ("keep", "mean", "reset")


# architectures ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Recipe:
    """A readable description of a random architecture; :func:`build_module` makes the module.

    ``tree`` is a nested tuple: ``("Linear", (2, 3), (("bias", False),))`` for a layer,
    ``("Sequential", (child, ...))`` or ``("ModuleDict", (("name", child), ...))`` for a
    container. ``ties`` lists ``(path, source_path)`` parameter ties (the parameter at ``path``
    becomes the very object at ``source_path``); ``buffers`` lists extra buffers
    ``(module_path, name, shape, persistent)``.

    >>> import nytorch_func.testing as nft
    >>> r = nft.Recipe(("Sequential", (("Linear", (2, 2), ()), ("Linear", (2, 2), ()))),
    ...                ties=(("1.weight", "0.weight"),))
    >>> r
    Recipe(Sequential(Linear(2, 2), Linear(2, 2)), tie 1.weight=0.weight)
    >>> m = nft.build_module(r)
    >>> m[1].weight is m[0].weight
    True
    """

    tree: tuple
    ties: tuple[tuple[str, str], ...] = ()
    buffers: tuple[tuple[str, str, tuple[int, ...], bool], ...] = ()

    def __repr__(self) -> str:
        parts = [_tree_repr(self.tree)]
        parts += [f"tie {a}={b}" for a, b in self.ties]
        parts += [f"buffer {_join(m, n)}{list(s)}{'' if keep else ' non-persistent'}"
                  for m, n, s, keep in self.buffers]
        return "Recipe(" + ", ".join(parts) + ")"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _tree_repr(tree: tuple) -> str:
    kind, body = tree[0], tree[1]
    if kind == "Sequential":
        return "Sequential(" + ", ".join(_tree_repr(c) for c in body) + ")"
    if kind == "ModuleDict":
        return "ModuleDict(" + ", ".join(f"{k}={_tree_repr(c)}" for k, c in body) + ")"
    args = [repr(a) for a in body] + [f"{k}={v!r}" for k, v in tree[2]]
    return f"{kind}(" + ", ".join(args) + ")"


def _build_tree(tree: tuple) -> nn.Module:
    kind, body = tree[0], tree[1]
    if kind == "Sequential":
        return nn.Sequential(*(_build_tree(c) for c in body))
    if kind == "ModuleDict":
        return nn.ModuleDict({k: _build_tree(c) for k, c in body})
    return getattr(nn, kind)(*body, **dict(tree[2]))


def build_module(recipe: Recipe, seed: int = 0) -> nn.Module:
    """The ``nn.Module`` a :class:`Recipe` describes, initialised from ``seed``.

    >>> import nytorch_func.testing as nft
    >>> nft.build_module(nft.Recipe(("Linear", (3, 1), ())))
    Linear(in_features=3, out_features=1, bias=True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _build_tree(recipe.tree)
    for path, source in recipe.ties:
        parent, name = _parent(module, path)
        setattr(parent, name, module.get_parameter(source))
    gen = torch.Generator().manual_seed(seed)
    for mpath, name, shape, persistent in recipe.buffers:
        owner = module.get_submodule(mpath) if mpath else module
        owner.register_buffer(name, torch.randn(shape, generator=gen), persistent=persistent)
    return module


def _parent(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (module.get_submodule(head) if head else module), name


_small = st.integers(1, 3)


def _leaf_trees(kinds: Sequence[str] = _LEAF_KINDS) -> st.SearchStrategy[tuple]:
    makers = {
        "Linear": st.tuples(st.just("Linear"), st.tuples(_small, _small),
                            st.sampled_from([(), (("bias", False),)])),
        "Conv1d": st.tuples(st.just("Conv1d"), st.tuples(st.integers(1, 2), st.integers(1, 2),
                                                         st.integers(1, 2)),
                            st.sampled_from([(), (("bias", False),)])),
        "Conv2d": st.tuples(st.just("Conv2d"), st.tuples(st.integers(1, 2), st.integers(1, 2),
                                                         st.integers(1, 2)),
                            st.sampled_from([(), (("bias", False),)])),
        "LSTM": st.tuples(st.just("LSTM"), st.tuples(st.integers(1, 2), st.integers(1, 2)),
                          st.sampled_from([(), (("num_layers", 2),), (("bias", False),)])),
        "BatchNorm1d": st.tuples(st.just("BatchNorm1d"), st.tuples(_small),
                                 st.sampled_from([(), (("affine", False),)])),
        "Embedding": st.tuples(st.just("Embedding"), st.tuples(st.integers(1, 4), _small),
                               st.just(())),
    }
    return st.one_of(*(makers[k] for k in kinds))


def _trees(max_depth: int) -> st.SearchStrategy[tuple]:
    leaf = _leaf_trees()
    if max_depth <= 0:
        return leaf

    def extend(children: st.SearchStrategy[tuple]) -> st.SearchStrategy[tuple]:
        seq = st.lists(children, min_size=1, max_size=3).map(lambda cs: ("Sequential", tuple(cs)))
        dct = st.dictionaries(st.sampled_from(("a", "b", "enc", "dec")), children, min_size=1,
                              max_size=3).map(lambda d: ("ModuleDict", tuple(sorted(d.items()))))
        return st.one_of(seq, dct)

    return st.recursive(leaf, extend, max_leaves=4)


def _params_and_modules(module: nn.Module) -> tuple[list[tuple[str, tuple]], list[str]]:
    params = [(n, tuple(t.shape)) for n, t in module.named_parameters(remove_duplicate=False)]
    mods = [n for n, _ in module.named_modules(remove_duplicate=False)]
    return params, mods


@st.composite
def _recipes(draw: Any, max_depth: int, tied: bool, buffers: bool) -> Recipe:
    tree = draw(_trees(max_depth))
    if not tied and not buffers:
        return Recipe(tree)
    probe = _build_tree(tree)
    params, mods = _params_and_modules(probe)
    ties: tuple = ()
    if tied:
        pairs = [(a, b) for i, (a, sa) in enumerate(params) for b, sb in params[:i] if sa == sb]
        if pairs and draw(st.booleans()):
            ties = (draw(st.sampled_from(pairs)),)
    extra: list = []
    if buffers:
        for i in range(draw(st.integers(0, 2))):
            where = draw(st.sampled_from(mods))
            shape = tuple(draw(st.lists(_small, max_size=2)))
            extra.append((where, f"extra_buf{i}", shape, draw(st.booleans())))
    return Recipe(tree, ties, tuple(extra))


def modules(*, max_depth: int = 2, tied: bool = True, buffers: bool = True
            ) -> st.SearchStrategy[nn.Module]:
    """Small random architectures: Linear, Conv1d, Conv2d, LSTM, BatchNorm1d and Embedding
    layers, alone or nested in Sequential / ModuleDict containers up to ``max_depth`` levels,
    optionally with one pair of tied parameters (``tied``) and extra buffers (``buffers``).

    Sizes are 1 to 4, so drawing and converting a module takes about a millisecond. The module
    need not accept any input (a ModuleDict has no forward); use :func:`runnable_modules` for
    forward passes. Shrinks towards one ``Linear(1, 1)``.

    >>> import torch, nytorch_func.testing as nft
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(nft.modules())
    ... def check(m):
    ...     assert isinstance(m, torch.nn.Module)
    >>> check()
    """
    return st.builds(build_module, _recipes(max_depth, tied, buffers))


def _runnable(kind: str, size: int, hidden: int, out: int, norm: bool, tie: bool
              ) -> tuple[nn.Module, torch.Tensor]:
    gen = torch.Generator().manual_seed(size * 100 + hidden * 10 + out)
    if kind == "mlp":
        layers: list[nn.Module] = [nn.Linear(size, hidden)]
        layers += [nn.BatchNorm1d(hidden)] if norm else []
        layers += [nn.Tanh(), nn.Linear(hidden, out)]
        return nn.Sequential(*layers), torch.randn(3, size, generator=gen)
    if kind == "conv":
        layers = [nn.Conv2d(size, hidden, 2)]
        layers += [nn.BatchNorm2d(hidden)] if norm else []
        layers += [nn.ReLU(), nn.Flatten(), nn.Linear(hidden * 4, out)]
        return nn.Sequential(*layers), torch.randn(3, size, 3, 3, generator=gen)
    if kind == "conv1d":
        layers = [nn.Conv1d(size, hidden, 2), nn.ReLU(), nn.Flatten(), nn.Linear(hidden * 2, out)]
        return nn.Sequential(*layers), torch.randn(3, size, 3, generator=gen)
    emb = nn.Embedding(size + 1, hidden)
    lin = nn.Linear(hidden, size + 1)
    if tie:
        lin.weight = emb.weight
    return nn.Sequential(emb, lin), torch.randint(0, size + 1, (3, 2), generator=gen)


def runnable_modules() -> st.SearchStrategy[tuple[nn.Module, torch.Tensor]]:
    """``(module, x)`` pairs where ``module(x)`` works: MLPs (optionally with BatchNorm1d),
    Conv2d/Conv1d stacks, and an Embedding with a (tied or untied) output Linear.

    Every module is a plain ``nn.Sequential`` that ``torch.func.vmap(nf.apply)`` can run.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(nft.runnable_modules())
    ... def check(pair):
    ...     m, x = pair
    ...     m.eval()
    ...     assert torch.allclose(nf.apply(nf.from_module(m).eval(), x), m(x))
    >>> check()
    """
    return st.builds(_runnable, st.sampled_from(("mlp", "conv", "conv1d", "embedding")),
                     st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans(),
                     st.booleans())


# particles and populations ---------------------------------------------------------------------

def _source(species: Any) -> nf.Particle:
    """A particle to derive from: ``species`` is a Particle, a Species or an nn.Module."""
    if isinstance(species, nf.Particle):
        return species
    if isinstance(species, nf.Species):
        head = species.head
        if head is None:
            raise nf.VersionError("nft: the species given has no live version left; pass a "
                                  "particle of it instead")
        return nf.Particle(head, tuple(torch.zeros(s.shape, dtype=s.dtype, device=s.device)
                                       for s in head.leaf_specs))
    if isinstance(species, nn.Module):
        return nf.from_module(species)
    raise nf.NytorchFuncError(f"nft: expected a Particle, Species or nn.Module, got "
                              f"{type(species).__name__}")


def random_particle(source: Any, seed: int = 0) -> nf.Particle:
    """A particle of ``source``'s species (at its version) whose values are drawn from ``seed``.

    Floating-point parameters (operational or not) are N(0, 1); floating-point per-particle
    buffers are U[0.5, 1.5) (so variances stay positive); integer leaves are copied. Every leaf
    is a new tensor with the source leaf's ``requires_grad``. ``source`` is a Particle (a
    population keeps its batch shape), a Species (its head) or an ``nn.Module`` (a new species).

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> p = nf.from_module(torch.nn.BatchNorm1d(2))
    >>> q = nft.random_particle(p, seed=1)
    >>> q.species is p.species, bool((q.buffers["running_var"] >= 0.5).all())
    (True, True)
    >>> torch.equal(q["weight"], nft.random_particle(p, seed=1)["weight"])
    True
    """
    p = _source(source)
    gen = torch.Generator().manual_seed(seed)
    paths, leaves, spec = optree.tree_flatten_with_path(p)
    schema = p.schema
    out = []
    for path, leaf in zip(paths, leaves):
        kind = schema.by_path[path[0]].kind
        if not leaf.is_floating_point():
            new = leaf.clone()
        elif kind == "param":
            new = torch.randn(leaf.shape, generator=gen, dtype=leaf.dtype)
        else:
            new = torch.rand(leaf.shape, generator=gen, dtype=leaf.dtype) + 0.5
        out.append(new.requires_grad_(leaf.requires_grad) if new.is_floating_point() else new)
    return optree.tree_unflatten(spec, out)


def random_population(source: Any, n: int = 2, seed: int = 0) -> nf.Particle:
    """``n`` random particles of ``source``'s species (seeds ``seed``, ``seed + 1``, ...), stacked.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> pop = nft.random_population(torch.nn.Linear(2, 1), n=3)
    >>> pop.batch_shape, pop["weight"].shape
    (torch.Size([3]), torch.Size([3, 1, 2]))
    """
    p = _source(source)
    return nf.stack([random_particle(p, seed + i) for i in range(n)])


_seeds = st.integers(0, 2**16)


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
        source = (modules if modules is not None else globals()["modules"]()).map(nf.from_module)
    else:
        source = st.just(_source(species))
    return st.builds(random_particle, source, seed=_seeds)


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
    source = modules().map(nf.from_module) if species is None else st.just(_source(species))
    return st.builds(random_population, source, n=st.integers(min_size, max_size), seed=_seeds)


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


# events ----------------------------------------------------------------------------------------

class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


_NOTHING = _NoValue()


@dataclasses.dataclass(frozen=True, eq=False)
class Edit:
    """One call of a public event function, ready to replay: ``edit.apply(p)`` returns
    ``nf.<kind>(p, path, value, **kwargs)``.

    ``value`` is the tensor or module an ``add_*`` edit adds (the very object, so initiator
    semantics can be checked with ``is``); other kinds have none. ``invalid`` marks edits from
    :func:`invalid_events`, which must raise a ``NytorchFuncError``.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> e = nft.Edit("add_buffer", "count", torch.zeros(2), (("state", False),))
    >>> e
    add_buffer('count', <tensor [2] float32>, state=False)
    >>> p = e.apply(nf.from_module(torch.nn.Linear(1, 1)))
    >>> p.buffers["count"] is e.value
    True
    """

    kind: str
    path: Any
    value: Any = _NOTHING
    kwargs: tuple[tuple[str, Any], ...] = ()
    invalid: bool = False

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def apply(self, p: nf.Particle) -> nf.Particle:
        fn = getattr(nf, self.kind)
        args = (p, self.path) if self.value is _NOTHING else (p, self.path, self.value)
        return fn(*args, **self.options)

    def __repr__(self) -> str:
        args = [repr(self.path)]
        if self.value is not _NOTHING:
            args.append(_short(self.value))
        args += [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.kind}(" + ", ".join(args) + ")"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        shape = "x".join(map(str, value.shape)) or "scalar"
        kind = "Parameter" if isinstance(value, nn.Parameter) else "tensor"
        grad = " requires_grad" if value.requires_grad and kind == "tensor" else ""
        grad = " no_grad" if kind == "Parameter" and not value.requires_grad else grad
        return f"<{kind} [{shape}] {str(value.dtype).replace('torch.', '')}{grad}>"
    if isinstance(value, nn.Module):
        return " ".join(repr(value).split())
    return repr(value)


@dataclasses.dataclass(frozen=True)
class _View:
    """What an event needs to know of one version: paths by kind, module objects, batch."""

    schema: nf.Schema
    batched: bool

    @property
    def params(self) -> list[str]:
        return sorted(p for s in self.schema.specs if s.kind == "param" for p in s.paths)

    @property
    def buffers(self) -> list[str]:
        return sorted(p for s in self.schema.specs if s.kind == "buffer" for p in s.paths)

    @property
    def modules(self) -> list[tuple[str, nn.Module]]:
        return sorted(self.schema.skeleton.named_modules(remove_duplicate=False),
                      key=lambda item: item[0])

    def free_names(self, module: nn.Module) -> list[str]:
        taken = lambda n: (n in module._parameters or n in module._buffers  # noqa: E731
                           or n in module._modules or hasattr(module, n))
        names = [n for n in _NAMES if not taken(n)]
        k = 0
        while not names:
            names = [f"n{k}"] if not taken(f"n{k}") else []
            k += 1
        return names


def _view(target: Any, allow_shared: bool | None) -> _View:
    if isinstance(target, nf.Schema):
        schema, batched = target, False
    elif isinstance(target, nf.Particle):
        schema = target.species.head or target.schema
        batched = bool(target.batch_shape)
    else:
        raise nf.NytorchFuncError(f"nft.events: expected a Particle or Schema, got "
                                  f"{type(target).__name__}")
    return _View(schema, batched if allow_shared is None else not allow_shared)


def _tensors(*, params: bool) -> st.SearchStrategy[torch.Tensor]:
    shapes = st.lists(_small, max_size=2).map(tuple)
    if params:
        return st.builds(_make_param, shapes, _seeds, st.booleans())
    return st.builds(_make_buffer, shapes, _seeds, st.sampled_from(("float32", "int64")))


def _make_param(shape: tuple, seed: int, requires_grad: bool) -> torch.Tensor:
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return nn.Parameter(t, requires_grad=requires_grad)


def _make_buffer(shape: tuple, seed: int, dtype: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == "int64":
        return torch.randint(0, 5, shape, generator=gen)
    return torch.randn(shape, generator=gen)


_configs = st.builds(
    lambda op, cl, tag: nf.ParamConfig(op, cl, **({} if tag is None else {"tag": tag})),
    st.booleans(), st.booleans(), st.none() | st.integers(0, 3))
_maybe_bool = st.sampled_from((None, True, False))


@st.composite
def _valid_edit(draw: Any, target: Any, kinds: Sequence[str], allow_shared: bool | None) -> Edit:
    view = target if isinstance(target, _View) else _view(target, allow_shared)
    params, buffers = view.params, view.buffers
    mods = view.modules
    subs = [path for path, _ in mods if path]
    feasible = [k for k in kinds if {
        "del_param": bool(params), "del_buffer": bool(buffers), "del_module": bool(subs),
        "set_none": bool(params or subs), "configure": bool(params),
        "configure_buffer": bool(buffers)}.get(k, True)]
    if not feasible:
        raise nf.NytorchFuncError(f"nft.events: none of {tuple(kinds)} applies to version "
                                  f"{view.schema.version} (it has no parameters/buffers/modules)")
    kind = draw(st.sampled_from(feasible))
    if kind.startswith("add_"):
        mpath, module = draw(st.sampled_from(mods))
        path = _join(mpath, draw(st.sampled_from(view.free_names(module))))
        if kind == "add_param":
            config = draw(st.none() | _configs)
            return Edit(kind, path, draw(_tensors(params=True)),
                        () if config is None else (("config", config),))
        if kind == "add_buffer":
            return Edit(kind, path, draw(_tensors(params=False)),
                        (("state", draw(st.booleans())), ("persistent", draw(st.booleans()))))
        return Edit(kind, path, draw(globals()["modules"](max_depth=1)))
    if kind in ("del_param", "del_buffer"):
        return Edit(kind, draw(st.sampled_from(params if kind == "del_param" else buffers)))
    if kind == "del_module":
        return Edit(kind, draw(st.sampled_from(subs)))
    if kind == "set_none":
        return Edit(kind, draw(st.sampled_from(params + subs)))
    if kind == "configure_buffer":
        return Edit(kind, draw(st.sampled_from(buffers)),
                    kwargs=(("policy", draw(st.sampled_from(_POLICIES))),))
    # configure: a param path, a module path with params under it, or "" (all)
    schema = view.schema
    paths = sorted({""} | set(params) | {m for m in subs if schema.specs_under(m)})
    path = draw(st.sampled_from(paths))
    operational, clone = draw(_maybe_bool), draw(_maybe_bool)
    tag = draw(st.none() | st.integers(0, 3))
    if view.batched:  # a population cannot turn per-particle values into one shared tensor
        for spec in schema.specs_under(path):
            new = spec.config.replace(operational=operational, clone=clone)
            if spec.leaf and new.shared:
                clone = True
                break
    kwargs = tuple((k, v) for k, v in (("operational", operational), ("clone", clone),
                                       ("tag", tag)) if v is not None)
    return Edit(kind, path, kwargs=kwargs)


def events(target: Any, *, kinds: Sequence[str] = EVENT_KINDS,
           allow_shared: bool | None = None) -> st.SearchStrategy[Edit]:
    """Valid events for ``target`` (a Particle: its species' newest version; or a Schema).

    Every drawn :class:`Edit` succeeds when applied to any particle of the species while the
    species is still at that version: ``add_param`` / ``add_buffer`` / ``add_module`` at a free
    name of an existing module, ``del_param`` / ``del_buffer`` / ``del_module`` / ``set_none`` of
    an existing path (tied aliases included), ``configure`` of a parameter, a module or ``""``,
    and ``configure_buffer``. ``kinds`` restricts the kinds (see :data:`EVENT_KINDS`);
    ``allow_shared=False`` never makes a per-particle parameter shared (the default allows it
    except for populations, which cannot do it).

    The strategy is bound to the version that is newest when it is made: applying an edit
    moves the species on, so draw the edits for a particle made inside the test, with
    ``st.data()``:

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings, strategies as st
    >>> @settings(max_examples=20, database=None)
    ... @given(st.data())
    ... def check(data):
    ...     p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    ...     edit = data.draw(nft.events(p))
    ...     assert edit.apply(p).version == 1
    >>> check()
    """
    unknown = set(kinds) - set(EVENT_KINDS)
    if unknown or not kinds:
        raise nf.NytorchFuncError(f"nft.events: kinds must be a non-empty subset of "
                                  f"{EVENT_KINDS}, got {tuple(kinds)}")
    return _valid_edit(_view(target, allow_shared), tuple(kinds), allow_shared)


def _scratch(view: _View) -> nf.Particle:
    """A particle of a new, throw-away species with the structure of ``view.schema``."""
    s = view.schema
    zeros = nf.Particle(s, tuple(torch.zeros(spec.shape, dtype=spec.dtype)
                                 for spec in s.leaf_specs))
    return nf.from_module(nf.to_module(zeros))


@st.composite
def _chains(draw: Any, view: _View, n: int, min_size: int, kinds: Sequence[str],
            allow_shared: bool | None) -> list[Edit]:
    scratch = _scratch(view)
    size = draw(st.integers(min_size, n))
    chain: list[Edit] = []
    for _ in range(size):
        edit = draw(_valid_edit(_View(scratch.schema, view.batched), tuple(kinds), None))
        scratch = edit.apply(scratch)
        chain.append(edit)
    return chain


def event_chains(target: Any, n: int = 4, *, min_size: int = 0,
                 kinds: Sequence[str] = EVENT_KINDS, allow_shared: bool | None = None
                 ) -> st.SearchStrategy[list[Edit]]:
    """Lists of ``min_size``..``n`` edits that are valid one after the other for ``target``.

    Each edit is drawn against the structure the previous ones leave (tracked on a throw-away
    copy of the species, so drawing changes nothing). Apply them in order to any particle of the
    species, e.g. ``functools.reduce(lambda p, e: e.apply(p), chain, p)``.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings, strategies as st
    >>> @settings(max_examples=10, database=None)
    ... @given(st.data())
    ... def check(data):
    ...     p = nf.from_module(torch.nn.Linear(2, 2))
    ...     chain = data.draw(nft.event_chains(p, 3))
    ...     for edit in chain:
    ...         p = edit.apply(p)
    ...     assert p.version == len(chain)
    >>> check()
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= min_size <= n:
        raise nf.NytorchFuncError(f"nft.event_chains: need 0 <= min_size <= n, got "
                                  f"min_size={min_size!r}, n={n!r}")
    return _chains(_view(target, allow_shared), n, min_size, tuple(kinds), allow_shared)


# invalid events --------------------------------------------------------------------------------

_BAD_PATHS = ("", ".x", "x.", "a..b", 3, None)
_NOT_TENSORS = (1.5, [1.0, 2.0], "w", None)


@st.composite
def _invalid_edit(draw: Any, view: _View) -> Edit:
    params, buffers = view.params, view.buffers
    subs = [path for path, _ in view.modules if path]
    existing = params + buffers + subs
    _, root = view.modules[0]
    kinds = ["bad_path", "missing_parent", "not_a_tensor", "not_a_module", "hides_attribute",
             "missing", "bad_option"]
    if existing:
        kinds.insert(0, "exists")
    if params:
        kinds.append("wrong_kind_param")
    if buffers:
        kinds.append("wrong_kind_buffer")
    case = draw(st.sampled_from(kinds))
    adders = ("add_param", "add_buffer", "add_module")
    tensor = torch.zeros(1)
    value_for = {"add_param": nn.Parameter(tensor), "add_buffer": tensor, "add_module": nn.Linear(1, 1)}
    if case in ("exists", "bad_path", "missing_parent"):
        kind = draw(st.sampled_from(adders))
        path = {"exists": lambda: draw(st.sampled_from(existing)),
                "bad_path": lambda: draw(st.sampled_from(_BAD_PATHS)),
                "missing_parent": lambda: "no_such_module.x"}[case]()
        return Edit(kind, path, value_for[kind], invalid=True)
    if case == "not_a_tensor":
        kind = draw(st.sampled_from(adders[:2]))
        return Edit(kind, "fresh_name", draw(st.sampled_from(_NOT_TENSORS)), invalid=True)
    if case == "not_a_module":
        return Edit("add_module", "fresh_name", draw(st.sampled_from((tensor, "Linear", None))),
                    invalid=True)
    if case == "hides_attribute":
        kind = draw(st.sampled_from(adders))
        return Edit(kind, draw(st.sampled_from(("forward", "training", "state_dict"))),
                    value_for[kind], invalid=True)
    if case == "missing":
        kind = draw(st.sampled_from(("del_param", "del_buffer", "del_module", "set_none",
                                     "configure", "configure_buffer")))
        kwargs = (("policy", "mean"),) if kind == "configure_buffer" else ()
        path = draw(st.sampled_from(("no_such_path", "no_such_module.weight")))
        return Edit(kind, path, kwargs=kwargs, invalid=True)
    if case == "wrong_kind_param":  # a parameter path given to buffer-only / module-only events
        kind = draw(st.sampled_from(("del_buffer", "del_module", "configure_buffer")))
        kwargs = (("policy", "mean"),) if kind == "configure_buffer" else ()
        return Edit(kind, draw(st.sampled_from(params)), kwargs=kwargs, invalid=True)
    if case == "wrong_kind_buffer":
        kind = draw(st.sampled_from(("del_param", "set_none", "configure", "del_module")))
        return Edit(kind, draw(st.sampled_from(buffers)), invalid=True)
    # bad options
    choices = [("add_param", "fresh_name", value_for["add_param"], (("config", {"operational": False}),)),
               ("add_buffer", "fresh_name", tensor, (("state", "yes"),)),
               ("configure", "", _NOTHING, (("operational", "yes"),)),
               ("configure", "", _NOTHING, (("clone", 1),)),
               ("configure", "", _NOTHING, (("_private", 1),)),
               ("configure", "", _NOTHING, (("tag", [1, 2]),))]
    if buffers:
        choices.append(("configure_buffer", buffers[0], _NOTHING, (("policy", "median"),)))
    if view.batched and params:
        choices.append(("configure", "", _NOTHING, (("operational", False), ("clone", False))))
    kind, path, value, kwargs = draw(st.sampled_from(choices))
    if kind == "configure" and not params:
        return Edit("configure", "", invalid=True)  # no parameter at all to configure
    return Edit(kind, path, value, kwargs, invalid=True)


def invalid_events(target: Any) -> st.SearchStrategy[Edit]:
    """Edits that must fail on ``target`` (a Particle or Schema) with a ``NytorchFuncError``.

    Adding at an existing path, at a malformed path (``""``, ``"a..b"``, a non-string) or under
    a missing module; adding a non-tensor or non-module; names that would hide a module
    attribute (``"forward"``); deleting, setting to None or configuring a missing path or a path
    of the wrong kind; bad options (``state="yes"``, ``policy="median"``, an unhashable config
    attribute, a dict as config); and turning a population's parameters shared. A failing
    edit must leave the species, the particle and every other particle unchanged.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings
    >>> p = nf.from_module(torch.nn.Linear(2, 2))
    >>> @settings(max_examples=20, database=None)
    ... @given(nft.invalid_events(p))
    ... def check(edit):
    ...     try:
    ...         edit.apply(p)
    ...     except nf.NytorchFuncError:
    ...         pass
    ...     else:
    ...         raise AssertionError(f"{edit} did not fail")
    >>> check()
    """
    return _invalid_edit(_view(target, None))
