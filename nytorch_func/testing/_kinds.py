"""The registry of event kinds the strategies draw: where each applies, and how to draw one.

A kind is one :class:`EventKind` entry: ``targets(view)`` lists what it could act on in a
version (empty: not applicable), ``draw(draw, view, targets)`` draws one :class:`Edit`, and
``probe(view, target)`` gives the edit whose forward pass decides whether ``target`` keeps a
user's model running, or the verdict itself (``None``: the kind cannot break a forward pass
that ran before). A new kind of event plugs in as one more entry of :data:`KINDS`, as the
growth kinds ``widen``, ``deepen`` and ``insert_module`` do (``_growth.py``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hypothesis.strategies as st
import torch
from torch import nn

import nytorch_func as nf

from ._edit import Edit, code_value
from ._growth import (declared_site, deepen_targets, draw_deepen, draw_insert, draw_widen,
                      insert_targets, probe_deepen, probe_insert, probe_widen, widen_targets)
from ._particles import fresh_like, seeded_buffer, seeded_param, seeds
from ._recipes import build_module, join, recipe_code, recipes, small
from ._view import View, pretty

__all__ = ["EventKind", "KINDS", "EVENT_KINDS", "FORWARD_KINDS", "GROWTH_KINDS", "widen_at",
           "resolve_kinds"]

DrawFn = Callable[[st.SearchStrategy[Any]], Any]

_POLICIES = ("keep", "mean", "reset")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class EventKind:
    """One kind of event: where it applies in a version and how to draw one.

    ``keeps_output``: every edit of this kind leaves the model's output unchanged (the law
    ``output_kept`` checks it).

    >>> import nytorch_func.testing as nft
    >>> nft.KINDS["set_none"].name, nft.KINDS["configure"].keeps_output
    ('set_none', True)
    """

    name: str
    targets: Callable[[View], Sequence[Any]]
    draw: Callable[[DrawFn, View, Sequence[Any]], Edit]
    probe: Callable[[View, Any], Edit] | None = None
    keeps_output: bool = False

    def __repr__(self) -> str:
        return f"EventKind({self.name!r})"


# adding ----------------------------------------------------------------------------------------

def _free(view: View, target: tuple[str, nn.Module]) -> str:
    mpath, module = target
    return join(mpath, view.free_names(module)[0])


_configs = st.builds(
    lambda op, cl, tag: nf.ParamConfig(op, cl, **({} if tag is None else {"tag": tag})),
    st.booleans(), st.booleans(), st.none() | st.integers(0, 3))
_shapes = st.lists(small, max_size=2).map(tuple)


def _pick_parent(draw: DrawFn, view: View, targets: Sequence[Any]) -> str:
    mpath, module = draw(st.sampled_from(targets))
    return join(mpath, draw(st.sampled_from(view.free_names(module))))


def _draw_add_param(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    path = _pick_parent(draw, view, targets)
    shape, seed, grad = draw(_shapes), draw(seeds), draw(st.booleans())
    config = draw(st.none() | _configs)
    code = f"nft.seeded_param({shape!r}, seed={seed}{'' if grad else ', requires_grad=False'})"
    return Edit("add_param", path, seeded_param(shape, seed, grad),
                () if config is None else (("config", config),), code=code)


def _draw_add_buffer(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    path = _pick_parent(draw, view, targets)
    shape, seed = draw(_shapes), draw(seeds)
    dtype = draw(st.sampled_from((torch.float32, torch.int64)))
    code = f"nft.seeded_buffer({shape!r}, seed={seed}" + (
        ", dtype=torch.int64)" if dtype == torch.int64 else ")")
    return Edit("add_buffer", path, seeded_buffer(shape, seed, dtype),
                (("state", draw(st.booleans())), ("persistent", draw(st.booleans()))), code=code)


def _drawn_module(draw: DrawFn, view: View) -> tuple[nn.Module, str]:
    if view.new_modules is not None:
        module = draw(view.new_modules)
        return module, pretty(module) or code_value(module)
    recipe = draw(recipes(1, True, True, False))
    return build_module(recipe), recipe_code(recipe)


def _draw_add_module(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    path = _pick_parent(draw, view, targets)
    module, code = _drawn_module(draw, view)
    return Edit("add_module", path, module, code=code)


def _all_modules(view: View) -> list[tuple[str, nn.Module]]:
    return view.modules


# deleting --------------------------------------------------------------------------------------

def _pick(kind: str) -> Callable[[DrawFn, View, Sequence[Any]], Edit]:
    return lambda draw, view, targets: Edit(kind, draw(st.sampled_from(targets)))


def _itself(kind: str) -> Callable[[View, Any], Edit]:
    return lambda view, target: Edit(kind, target)


# settings --------------------------------------------------------------------------------------

def _configure_targets(view: View) -> list[str]:
    if not view.params:
        return []
    schema = view.schema
    return sorted({""} | set(view.params) | {m for m in view.submodules
                                              if schema.specs_under(m)})


def _draw_configure(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    path = draw(st.sampled_from(targets))
    operational, clone = draw(st.sampled_from((None, True, False))), draw(
        st.sampled_from((None, True, False)))
    tag = draw(st.none() | st.integers(0, 3))
    if view.batched:  # a population cannot turn per-particle values into one shared tensor
        for spec in view.schema.specs_under(path):
            new = spec.config.replace(operational=operational, clone=clone)
            if spec.leaf and new.shared:
                clone = True
                break
    kwargs = tuple((k, v) for k, v in (("operational", operational), ("clone", clone),
                                       ("tag", tag)) if v is not None)
    return Edit("configure", path, kwargs=kwargs)


def _draw_configure_buffer(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    return Edit("configure_buffer", draw(st.sampled_from(targets)),
                kwargs=(("policy", draw(st.sampled_from(_POLICIES))),))


def _to_targets(view: View) -> list[torch.dtype]:
    dtypes = {s.dtype for s in view.schema.specs}
    if not any(d.is_floating_point for d in dtypes) or any(d.is_complex for d in dtypes):
        return []
    return [d for d in _DTYPES if {d} != {x for x in dtypes if x.is_floating_point}]


def _to_edit(view: View, dtype: torch.dtype) -> Edit:
    return Edit("to", kwargs=(("dtype", dtype),))


def _draw_to(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    return _to_edit(view, draw(st.sampled_from(targets)))


# replacing a block by a new one of its class ---------------------------------------------------

def _replace_targets(view: View) -> list[str]:
    schema = view.schema
    return [m for m in view.submodules
            if schema.specs_under(m, kind=None)]


def _replace(view: View, path: str, module: nn.Module, code: str | None) -> Edit:
    """Delete the block at ``path`` and put ``module`` in: back in its place in a
    Sequential/ModuleList (``nf.insert_module`` at its position; a named child comes back
    numbered, as every inserted child is), under its name elsewhere (``nf.add_module``)."""
    parent, _, name = path.rpartition(".")
    container = view.schema._module_at(parent)
    if isinstance(container, (nn.Sequential, nn.ModuleList)):
        return Edit("replace_module", path, module,
                    (("index", list(container._modules).index(name)),), code=code)
    return Edit("replace_module", path, module, code=code)


def _draw_replace(draw: DrawFn, view: View, targets: Sequence[Any]) -> Edit:
    if view.new_modules is not None:
        module = draw(view.new_modules)
        same = [m for m in targets if type(view.schema._module_at(m)) is type(module)]
        if same:
            path = draw(st.sampled_from(same))
            edit = _replace(view, path, module, pretty(module) or code_value(module))
            if view.runs(edit):
                return edit
    path = draw(st.sampled_from(targets))
    seed = draw(seeds)
    return _replace(view, path, fresh_like(view.module.get_submodule(path), seed),
                    f"nft.fresh_like(nf.to_module({{p}}).get_submodule({path!r}), seed={seed})")


def _probe_replace(view: View, path: str) -> Edit:
    return _replace(view, path, view.module.get_submodule(path), None)


def _probe_add(kind: str, value: Callable[[], Any]) -> Callable[[View, Any], Edit]:
    return lambda view, target: Edit(kind, _free(view, target), value())


KINDS: Mapping[str, EventKind] = types.MappingProxyType({k.name: k for k in (
    EventKind("add_param", _all_modules, _draw_add_param,
              _probe_add("add_param", lambda: nn.Parameter(torch.zeros(1)))),
    EventKind("add_buffer", _all_modules, _draw_add_buffer,
              _probe_add("add_buffer", lambda: torch.zeros(1))),
    EventKind("add_module", _all_modules, _draw_add_module,
              _probe_add("add_module", nn.Module)),  # fails if the parent calls its children
    EventKind("configure", _configure_targets, _draw_configure, keeps_output=True),
    EventKind("configure_buffer", lambda v: v.buffers, _draw_configure_buffer,
              keeps_output=True),
    EventKind("del_param", lambda v: v.params, _pick("del_param"), _itself("del_param")),
    EventKind("del_buffer", lambda v: v.buffers, _pick("del_buffer"), _itself("del_buffer")),
    EventKind("del_module", lambda v: v.submodules, _pick("del_module"), _itself("del_module")),
    EventKind("set_none", lambda v: v.params + v.submodules, _pick("set_none"),
              _itself("set_none")),
    EventKind("to", _to_targets, _draw_to, _to_edit),
    EventKind("replace_module", _replace_targets, _draw_replace, _probe_replace),
    EventKind("widen", widen_targets, draw_widen, probe_widen, keeps_output=True),
    EventKind("deepen", deepen_targets, draw_deepen, probe_deepen, keeps_output=True),
    EventKind("insert_module", insert_targets, draw_insert, probe_insert, keeps_output=True),
)})
"""Every event kind the strategies can draw, by name (read-only)."""

#: The growth kinds: ``nf.widen`` of a Linear/Conv child of a Sequential read by a later child
#: (activations, dropout, pooling, a flatten and BatchNorm/LayerNorm/GroupNorm in between),
#: ``nf.deepen`` after a child a Linear/Conv feeds (with an activation where that keeps the
#: function), ``nf.insert_module`` of a module that computes the identity into a
#: Sequential/ModuleList (or of your block, with ``modules=``). Each keeps every member's
#: function: the law ``output_kept`` checks it.
GROWTH_KINDS = ("widen", "deepen", "insert_module")

#: The kinds :func:`events` and :func:`event_chains` draw by default: every public event
#: function (``nf.to`` converts the species' dtype), simplest first.
EVENT_KINDS = ("add_param", "add_buffer", "add_module", "configure", "configure_buffer",
               "del_param", "del_buffer", "del_module", "set_none", "to", *GROWTH_KINDS)

#: The kinds the law suite draws by default: events that act on what the model's forward
#: uses (configs, ``set_none`` of parameters, dtype conversion, a block replaced by a new one
#: of its class, growth where shapes allow) plus additions and deletions that keep the forward
#: pass running.
FORWARD_KINDS = ("configure", "configure_buffer", "set_none", "replace_module", "to",
                 *GROWTH_KINDS, "add_param", "add_buffer", "del_param", "del_buffer")


def widen_at(layer: str, consumers: str | Sequence[str], between: str | Sequence[str] = ()
             ) -> EventKind:
    """A ``widen`` kind for one site you name, for models whose own ``forward`` wires the
    layers (the ``widen`` kind of :data:`KINDS` finds sites only inside a ``Sequential``).

    ``layer``, ``consumers`` and ``between`` are as for ``nf.widen``; the site is drawn while
    its shapes fit (method, ``by`` and the generator's seed drawn), and you vouch that
    ``consumers`` are all that read the layer's output.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.bn, self.head = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2)
    ...     def forward(self, x):
    ...         return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
    >>> kind = nft.widen_at("conv", "head", between="bn")
    >>> nft.check_migration_laws(Net, torch.randn(2, 1, 5, 5), events=(kind, "to"),
    ...                          max_examples=3)
    """
    names = []
    for name, value in (("layer", layer), ("consumers", consumers), ("between", between)):
        paths = (value,) if isinstance(value, str) else value
        if not isinstance(paths, (list, tuple)) or not all(isinstance(x, str) for x in paths) \
                or (name == "layer" and not isinstance(value, str)):
            raise nf.ArgumentTypeError(f"widen_at: {name} must be a module path"
                                       f"{'' if name == 'layer' else ' or a list of them'}, got "
                                       f"{value!r:.60}")
        names.append(tuple(paths))
    return EventKind("widen", declared_site(layer, names[1], names[2]), draw_widen,
                     keeps_output=True)


def resolve_kinds(kinds: Sequence[Any], what: str) -> tuple[EventKind, ...]:
    """``kinds`` (names in :data:`KINDS` or :class:`EventKind` objects) as EventKind objects."""
    if isinstance(kinds, (str, EventKind)) or not isinstance(kinds, Sequence) or not kinds:
        raise nf.ArgumentTypeError(f"{what}: kinds must be a non-empty sequence of names from "
                                   f"{tuple(KINDS)} or EventKind objects, got {kinds!r}")
    out = []
    for k in kinds:
        if isinstance(k, EventKind):
            out.append(k)
        elif isinstance(k, str) and k in KINDS:
            out.append(KINDS[k])
        else:
            raise nf.SchemaError(f"{what}: unknown event kind {k!r}; the kinds are "
                                 f"{tuple(KINDS)}, or pass an nft.EventKind")
    return tuple(out)
