"""Random architectures: readable recipes, the modules they build, runnable (module, x) pairs."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import hypothesis.strategies as st
import torch
from torch import nn

__all__ = ["Recipe", "Mode", "Tag", "build_module", "modules", "runnable_modules", "recipe_code",
           "join"]

_LEAF_KINDS = ("Linear", "Conv1d", "Conv2d", "LSTM", "BatchNorm1d", "Embedding")


class Mode(enum.IntEnum):
    """An ``IntEnum`` that :func:`modules` stores on modules, as real models store flags."""

    PLUS = 1
    TIMES = 2


class Tag(str, enum.Enum):
    """A ``str`` enum that :func:`modules` stores on modules."""

    ENCODER = "encoder"
    DECODER = "decoder"


# Plain attributes real models carry besides tensors: enum members and torch functions (as
# nn.TransformerEncoderLayer(activation=torch.tanh) does). A checkpoint must keep them as they are.
_ATTRIBUTES = (("nft_mode", Mode.TIMES), ("nft_mode", Mode.PLUS), ("nft_tag", Tag.DECODER),
               ("nft_act", torch.tanh), ("nft_act", torch.relu), ("nft_act", torch.sigmoid))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A readable description of a random architecture; :func:`build_module` makes the module.

    ``tree`` is a nested tuple: ``("Linear", (2, 3), (("bias", False),))`` for a layer,
    ``("Sequential", (child, ...))`` or ``("ModuleDict", (("name", child), ...))`` for a
    container. ``ties`` lists ``(path, source_path)`` parameter ties (the parameter at ``path``
    becomes the very object at ``source_path``); ``buffers`` lists extra buffers
    ``(module_path, name, shape, persistent)``; ``attrs`` lists plain attributes
    ``(module_path, name, value)`` (enum members, torch functions).

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
    attrs: tuple[tuple[str, str, Any], ...] = ()

    def __repr__(self) -> str:
        parts = [_tree_repr(self.tree)]
        parts += [f"tie {a}={b}" for a, b in self.ties]
        parts += [f"buffer {join(m, n)}{list(s)}{'' if keep else ' non-persistent'}"
                  for m, n, s, keep in self.buffers]
        parts += [f"attr {join(m, n)}={_value_repr(v)}" for m, n, v in self.attrs]
        return "Recipe(" + ", ".join(parts) + ")"


def join(prefix: str, name: str) -> str:
    """``prefix.name``, or ``name`` under the root (``prefix == ""``)."""
    return f"{prefix}.{name}" if prefix else name


def _value_repr(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if callable(value):
        return f"torch.{value.__name__}"
    return repr(value)


def _tree_repr(tree: tuple) -> str:
    kind, body = tree[0], tree[1]
    if kind == "Sequential":
        return "Sequential(" + ", ".join(_tree_repr(c) for c in body) + ")"
    if kind == "ModuleDict":
        return "ModuleDict(" + ", ".join(f"{k}={_tree_repr(c)}" for k, c in body) + ")"
    args = [repr(a) for a in body] + [f"{k}={v!r}" for k, v in tree[2]]
    return f"{kind}(" + ", ".join(args) + ")"


def recipe_code(recipe: Recipe, seed: int = 0) -> str:
    """Python that rebuilds ``build_module(recipe, seed)`` (for recipes without attributes)."""
    if recipe.attrs:
        raise ValueError("recipe_code: recipes with attributes have no plain-code form")
    args = [repr(recipe.tree)]
    args += [f"ties={recipe.ties!r}"] if recipe.ties else []
    args += [f"buffers={recipe.buffers!r}"] if recipe.buffers else []
    tail = f", seed={seed}" if seed else ""
    return f"nft.build_module(nft.Recipe({', '.join(args)}){tail})"


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
    for mpath, name, value in recipe.attrs:
        setattr(module.get_submodule(mpath) if mpath else module, name, value)
    return module


def _parent(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (module.get_submodule(head) if head else module), name


small = st.integers(1, 3)


def _leaf_trees(kinds: Sequence[str] = _LEAF_KINDS) -> st.SearchStrategy[tuple]:
    bias = st.sampled_from([(), (("bias", False),)])
    makers = {
        "Linear": st.tuples(st.just("Linear"), st.tuples(small, small), bias),
        "Conv1d": st.tuples(st.just("Conv1d"), st.tuples(st.integers(1, 2), st.integers(1, 2),
                                                         st.integers(1, 2)), bias),
        "Conv2d": st.tuples(st.just("Conv2d"), st.tuples(st.integers(1, 2), st.integers(1, 2),
                                                         st.integers(1, 2)), bias),
        "LSTM": st.tuples(st.just("LSTM"), st.tuples(st.integers(1, 2), st.integers(1, 2)),
                          st.sampled_from([(), (("num_layers", 2),), (("bias", False),)])),
        "BatchNorm1d": st.tuples(st.just("BatchNorm1d"), st.tuples(small),
                                 st.sampled_from([(), (("affine", False),)])),
        "Embedding": st.tuples(st.just("Embedding"), st.tuples(st.integers(1, 4), small),
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


@st.composite
def recipes(draw: Any, max_depth: int = 2, tied: bool = True, buffers: bool = True,
            attributes: bool = False) -> Recipe:
    """Random :class:`Recipe` objects (the strategy :func:`modules` builds from)."""
    tree = draw(_trees(max_depth))
    if not (tied or buffers or attributes):
        return Recipe(tree)
    probe = _build_tree(tree)
    params = [(n, tuple(t.shape)) for n, t in probe.named_parameters(remove_duplicate=False)]
    mods = [(n, m) for n, m in probe.named_modules(remove_duplicate=False)]
    ties: tuple = ()
    if tied:
        pairs = [(a, b) for i, (a, sa) in enumerate(params) for b, sb in params[:i] if sa == sb]
        if pairs and draw(st.booleans()):
            ties = (draw(st.sampled_from(pairs)),)
    extra: list = []
    if buffers:
        for i in range(draw(st.integers(0, 2))):
            where = draw(st.sampled_from([n for n, _ in mods]))
            shape = tuple(draw(st.lists(small, max_size=2)))
            extra.append((where, f"extra_buf{i}", shape, draw(st.booleans())))
    attrs: list = []
    if attributes:
        for _ in range(draw(st.integers(0, 2))):
            where, module = draw(st.sampled_from(mods))
            name, value = draw(st.sampled_from(_ATTRIBUTES))
            if not hasattr(module, name) and all((where, name) != a[:2] for a in attrs):
                attrs.append((where, name, value))
    return Recipe(tree, ties, tuple(extra), tuple(attrs))


def modules(*, max_depth: int = 2, tied: bool = True, buffers: bool = True,
            attributes: bool = True) -> st.SearchStrategy[nn.Module]:
    """Small random architectures: Linear, Conv1d, Conv2d, LSTM, BatchNorm1d and Embedding
    layers, alone or nested in Sequential / ModuleDict containers up to ``max_depth`` levels,
    optionally with one pair of tied parameters (``tied``), extra buffers (``buffers``) and
    plain attributes real models carry (``attributes``: :class:`Mode` / :class:`Tag` enum
    members and torch functions such as ``torch.tanh``, at names starting ``nft_``).

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
    return st.builds(build_module, recipes(max_depth, tied, buffers, attributes))


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
