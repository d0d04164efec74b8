"""The growth event kinds: where ``nf.widen``, ``nf.deepen`` and ``nf.insert_module`` apply,
how to draw one, and the probes that keep them to what the user's forward pass allows.

The sites come from the skeleton (``_growth_sites``). With a watched forward pass, a site is
drawn only when plain torch (no nytorch_func call) shows the forward reaches it the way the
site assumes: a widened layer and its consumer are only ever called inside their Sequential,
and an ``nn.Identity`` put where a module would be inserted leaves the output exactly as it was
(so a ``ModuleList`` the forward indexes by position is left alone). The probes never run the
growth functions themselves: a growth bug is not filtered out, it fails a law.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hypothesis.strategies as st
import optree
from torch import nn

import nytorch_func as nf

from ._edit import Edit, code_value
from ._growth_sites import (WidenSite, allowed_activations, deepen_points, insert_points,
                            site_at, widen_sites)
from ._particles import random_particle, seeds
from ._run import same
from ._view import View, pretty, signature

__all__ = ["widen_targets", "draw_widen", "probe_widen", "deepen_targets", "draw_deepen",
           "probe_deepen", "insert_targets", "draw_insert", "probe_insert", "declared_site",
           "IDENTITIES"]

_METHODS = ("net2net", "zeros")

#: Modules that compute the identity in training and eval mode, and the code that makes them.
IDENTITIES: tuple[tuple[str, Any], ...] = (
    ("nn.Identity()", lambda: nn.Identity()),
    ("nn.Dropout(0.0)", lambda: nn.Dropout(0.0)),
    ("nn.Sequential()", lambda: nn.Sequential()),
    ("nn.Sequential(nn.Identity())", lambda: nn.Sequential(nn.Identity())),
    ("[nn.Identity(), nn.Dropout(0.0)]", lambda: [nn.Identity(), nn.Dropout(0.0)]),
)


def _plain(view: View) -> nn.Module:
    """A plain torch copy of the view's structure with random values (its own tensors)."""
    return nf.to_module(random_particle(view.particle, seed=1))


def _same_output(a: Any, b: Any) -> bool:
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    return sa == sb and all(same(x, y) if hasattr(x, "shape") else x == y for x, y in zip(la, lb))


# widen -----------------------------------------------------------------------------------------

def widen_targets(view: View) -> list[WidenSite]:
    return widen_sites(view.schema)


def declared_site(layer: str, consumers: tuple[str, ...], between: tuple[str, ...]) -> Any:
    """``targets`` for a site the user names: it, while its shapes fit (see ``nft.widen_at``)."""
    def targets(view: View) -> list[WidenSite]:
        site = site_at(view.schema, layer, consumers, between)
        return [] if site is None else [site]
    return targets


def draw_widen(draw: Any, view: View, targets: Sequence[WidenSite]) -> Edit:
    site = draw(st.sampled_from(targets))
    if site.even:  # LayerNorm/GroupNorm: replicated evenly, by a multiple of the width
        method, by = "net2net", site.width * draw(st.integers(1, 2 if site.width <= 8 else 1))
    else:
        method, by = draw(st.sampled_from(_METHODS)), draw(st.integers(1, 3))
    kwargs: tuple = (("consumers", site.consumers), ("by", by))
    kwargs += (("between", site.between),) if site.between else ()
    return Edit("widen", site.layer, kwargs=kwargs + (("method", method), ("seed", draw(seeds))))


def _called_inside(view: View, container: str, paths: Sequence[str]) -> bool:
    """Plain torch: the forward calls the modules at ``paths`` only inside ``container``."""
    module = _plain(view)
    outer = module.get_submodule(container) if container else module
    depth, outside = [0], [False]

    def enter(*_: Any) -> None:
        depth[0] += 1

    def leave(*_: Any) -> None:
        depth[0] -= 1

    def watch(*_: Any) -> None:
        outside[0] = outside[0] or depth[0] == 0

    outer.register_forward_pre_hook(enter)
    outer.register_forward_hook(leave)
    for path in paths:
        module.get_submodule(path).register_forward_pre_hook(watch)
    try:
        view.forward.plain(module, view.schema)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a forward that fails here cannot be kept
        return False
    return not outside[0]


def probe_widen(view: View, site: WidenSite) -> bool:
    if site.container is None:  # a site the user declared: theirs to vouch for
        return True
    paths = (site.layer, *site.between, *site.consumers)
    return view.forward.memo(  # type: ignore[union-attr]
        ("widen", signature(view.schema), site.container, paths),
        lambda: _called_inside(view, site.container, paths))


# insert_module and deepen ----------------------------------------------------------------------

def _identity_keeps_output(view: View, container: str, index: int) -> bool:
    """Plain torch: ``nn.Identity()`` inserted at ``container[index]`` leaves the output as it
    was (the forward runs the container's children in order, each on the previous output)."""
    def check() -> bool:
        module = _plain(view)
        try:
            before = view.forward.plain(module, view.schema)  # type: ignore[union-attr]
            (module.get_submodule(container) if container else module).insert(index,
                                                                               nn.Identity())
            after = view.forward.plain(module, view.schema)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            return False
        return _same_output(before, after)
    return view.forward.memo(  # type: ignore[union-attr]
        ("identity at", signature(view.schema), container, index), check)


def insert_targets(view: View) -> list[tuple[str, int]]:
    return [(c, i) for c, n in insert_points(view.schema) for i in range(n + 1)]


def probe_insert(view: View, target: tuple[str, int]) -> bool:
    return _identity_keeps_output(view, *target)


def draw_insert(draw: Any, view: View, targets: Sequence[tuple[str, int]]) -> Edit:
    container, index = draw(st.sampled_from(targets))
    where = (("index", index),)
    if view.new_modules is not None and draw(st.booleans()):
        module = draw(view.new_modules)  # the user's block: it runs, its output is its own
        edit = Edit("insert_module", container, module, where,
                    code=pretty(module) or code_value(module), keeps_output=False)
        if view.runs(edit):
            return edit
    code, make = draw(st.sampled_from(IDENTITIES))
    return Edit("insert_module", container, make(), where, code=code)


def deepen_targets(view: View) -> list[tuple[str, nn.Module]]:
    return deepen_points(view.schema)


def probe_deepen(view: View, target: tuple[str, nn.Module]) -> bool:
    container, _, name = target[0].rpartition(".")
    keys = list(view.schema._module_at(container)._modules)  # type: ignore[union-attr]
    return _identity_keeps_output(view, container, keys.index(name) + 1)


def draw_deepen(draw: Any, view: View, targets: Sequence[tuple[str, nn.Module]]) -> Edit:
    after, child = draw(st.sampled_from(targets))
    activation = draw(st.sampled_from([None, *allowed_activations(child)]))
    return Edit("deepen", after, kwargs=() if activation is None else
                (("activation", activation),))
