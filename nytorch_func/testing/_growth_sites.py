"""Where growth applies in one version, read from its module skeleton alone.

A ``Sequential`` with torch's own ``forward`` runs its children in order, each reading only the
previous one's output (a child Sequential of the same kind runs its own children in turn): that
order is all the growth kinds rely on. A Linear/Conv child is *widenable* when a later module
run by the same Sequential (perhaps inside a nested one) reads its output with only elementwise
modules (activations, dropout, identity), normalisations over its units (passed as ``between``)
and, after a Conv, per-channel pooling and one flatten in between. A child is a *deepen point*
when the last Linear/Conv at or before it feeds it through modules that keep the width. Every
``Sequential``/``ModuleList`` is an *insertion point*. Nothing here calls the growth functions:
the sites are found independently of ``nf.widen``/``nf.deepen``, so a refusal or a changed
output of a site found here is a finding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from torch import nn

import nytorch_func as nf

__all__ = ["WidenSite", "widen_sites", "site_at", "deepen_points", "insert_points",
           "sequential", "allowed_activations", "GROWABLE"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
GROWABLE = (nn.Linear, *_CONV)
_BATCHNORM = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
              nn.Linear: nn.BatchNorm1d}

#: Modules that act on every element alone (exact types: a subclass may do anything).
ELEMENTWISE = frozenset({
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.LogSigmoid, nn.Threshold, nn.Identity,
    nn.Dropout, nn.AlphaDropout})
#: Modules that keep the channels of a convolution's output (they act per channel).
_PER_CHANNEL = frozenset({
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d})

# The outputs of an activation (closed hull), and the inputs on which one is the identity.
_RANGE = {nn.ReLU: (0.0, math.inf), nn.ReLU6: (0.0, 6.0), nn.Sigmoid: (0.0, 1.0),
          nn.Tanh: (-1.0, 1.0), nn.Hardsigmoid: (0.0, 1.0), nn.Softplus: (0.0, math.inf)}
_IDENTITY_ON = {nn.ReLU: (0.0, math.inf), nn.ReLU6: (0.0, 6.0), nn.Hardtanh: (-1.0, 1.0),
                nn.Identity: (-math.inf, math.inf)}


@dataclasses.dataclass(frozen=True)
class WidenSite:
    """A layer whose outputs ``consumers`` read, with normalisations ``between``: ``width``
    units now; ``even``: a LayerNorm/GroupNorm in between (``by`` a multiple of the width)."""

    layer: str
    consumers: tuple[str, ...]
    between: tuple[str, ...]
    width: int
    even: bool
    container: str | None = None  # the Sequential it was found in (None: declared by a user)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def sequential(module: nn.Module | None) -> bool:
    """A Sequential that runs its children in order with torch's own forward."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _untied(schema: nf.Schema, module: str, names: Sequence[str]) -> bool:
    """Every tensor ``names`` of ``module`` that exists has one path (no tie, no reuse)."""
    return all(len(schema.by_path[p].paths) == 1 for n in names
               if (p := _join(module, n)) in schema.by_path)


def _growable(schema: nf.Schema, path: str, module: nn.Module | None) -> bool:
    if type(module) not in GROWABLE or getattr(module, "groups", 1) != 1:
        return False
    return _join(path, "weight") in schema.by_path and _untied(schema, path, ("weight", "bias"))


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _fan(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _norm_over(schema: nf.Schema, path: str, norm: nn.Module, layer: nn.Module, n: int
               ) -> str | None:
    """``"even"``/``"plain"`` when ``norm`` normalises the ``n`` units of ``layer``'s output."""
    if not _untied(schema, path, ("weight", "bias", "running_mean", "running_var")):
        return None
    if type(norm) is _BATCHNORM[type(layer)] and norm.num_features == n:
        return "plain"
    if type(norm) is nn.LayerNorm and isinstance(layer, nn.Linear) and \
            tuple(norm.normalized_shape) == (n,):
        return "even"
    if type(norm) is nn.GroupNorm and norm.num_channels == n:
        return "even"
    return None


def _transparent(module: nn.Module | None, conv: bool) -> bool:
    """Whether ``module`` passes every unit through on its own (a Sequential of such, too)."""
    if module is None:
        return False
    kind = type(module)
    if kind is nn.PReLU:
        return module.num_parameters == 1
    if kind in ELEMENTWISE or (conv and kind in _PER_CHANNEL
                               and not getattr(module, "return_indices", False)):
        return True
    return sequential(module) and all(_transparent(c, conv) for c in module._modules.values())


def site_at(schema: nf.Schema, layer: str, consumers: Sequence[str], between: Sequence[str],
            container: str | None = None) -> WidenSite | None:
    """The site ``(layer, consumers, between)`` if its shapes fit in ``schema``, else None."""
    m = schema._module_at(layer)
    if not _growable(schema, layer, m) or not consumers or layer in consumers:
        return None
    n, even = _width(m), False
    for path in between:
        kind = _norm_over(schema, path, schema._module_at(path), m, n)
        if kind is None:
            return None
        even = even or kind == "even"
    for path in consumers:
        c = schema._module_at(path)
        if not _growable(schema, path, c):
            return None
        fan = _fan(c)
        if isinstance(m, nn.Linear) and not (isinstance(c, nn.Linear) and fan == n):
            return None
        if isinstance(m, _CONV) and not (fan == n or isinstance(c, nn.Linear) and fan % n == 0):
            return None
    if len({layer, *consumers, *between}) != 1 + len(consumers) + len(between):
        return None
    return WidenSite(layer, tuple(consumers), tuple(between), n, even, container)


def _run_order(prefix: str, seq: nn.Sequential) -> list[tuple[str, nn.Module | None]]:
    """``(path, module)`` of what ``seq`` runs, in order: a child that is itself a Sequential
    with torch's forward is opened up (its output is the input of the next sibling)."""
    out: list[tuple[str, nn.Module | None]] = []
    for name, child in seq._modules.items():
        path = _join(prefix, name)
        out += _run_order(path, child) if sequential(child) else [(path, child)]
    return out


def widen_sites(schema: nf.Schema) -> list[WidenSite]:
    """Every widenable layer of every Sequential in ``schema`` with its one consumer, across
    nested Sequentials (``container``: the innermost Sequential that runs them all)."""
    found: dict[tuple, WidenSite] = {}
    for cpath, seq in schema._skeleton.named_modules(remove_duplicate=False):
        if not sequential(seq):
            continue
        children = _run_order(cpath, seq)
        for i, (path, m) in enumerate(children):
            if not _growable(schema, path, m):
                continue
            conv, flat, between = isinstance(m, _CONV), False, []
            for cp, c in children[i + 1:]:
                if type(c) in GROWABLE:
                    if conv:  # a Conv of its kind, or a Linear after the flatten
                        fits = type(c) is type(m) and not flat or type(c) is nn.Linear and flat
                    else:
                        fits = type(c) is nn.Linear
                    site = site_at(schema, path, (cp,), tuple(between), cpath) if fits else None
                    if site is not None:  # named_modules goes outside in: the last is innermost
                        found[(site.layer, site.consumers, site.between)] = site
                    break
                if not flat and c is not None and _norm_over(schema, cp, c, m, _width(m)):
                    between.append(cp)
                elif conv and not flat and type(c) is nn.Flatten and c.start_dim == 1 \
                        and c.end_dim == -1:
                    flat = True
                elif not _transparent(c, conv and not flat):
                    break
    return list(found.values())


def _keeps_width(module: nn.Module | None, conv: bool) -> bool:
    """Whether ``module`` keeps the features of a Linear's (the channels of a Conv's) output
    and is no Sequential (deepen takes its width only from the Sequential it inserts into)."""
    if module is None or isinstance(module, nn.Sequential):
        return False
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
    return type(module) in norms or _transparent(module, conv)


def deepen_points(schema: nf.Schema) -> list[tuple[str, nn.Module]]:
    """``(after, the child at after)`` for every child of a Sequential that the last
    Linear/Conv at or before it feeds through modules keeping its width."""
    out = []
    for cpath, seq in schema._skeleton.named_modules(remove_duplicate=False):
        if not sequential(seq):
            continue
        keys, children = list(seq._modules), list(seq._modules.values())
        for at, child in enumerate(children):  # keys: numbered or named, as the model has them
            src = next((k for k in range(at, -1, -1) if type(children[k]) in GROWABLE
                        or not _keeps_width(children[k], conv=True)), None)
            if src is None or type(children[src]) not in GROWABLE:
                continue
            conv = isinstance(children[src], _CONV)
            if _join(_join(cpath, keys[src]), "weight") in schema.by_path and all(
                    _keeps_width(children[k], conv) for k in range(src + 1, at + 1)):
                out.append((_join(cpath, keys[at]), child))
    return out


def allowed_activations(after: nn.Module) -> list[type]:
    """Activation classes that are the identity on everything ``after`` outputs: the ones
    ``nf.deepen(..., activation=...)`` keeps the function with (none after a non-activation)."""
    span = (float(after.min_val), float(after.max_val)) if type(after) is nn.Hardtanh \
        else _RANGE.get(type(after))
    if span is None:
        return []
    return [a for a, (lo, hi) in _IDENTITY_ON.items() if lo <= span[0] and span[1] <= hi]


def insert_points(schema: nf.Schema) -> list[tuple[str, int]]:
    """``(container, number of children)`` for every Sequential and ModuleList."""
    return [(path, len(m._modules))
            for path, m in schema._skeleton.named_modules(remove_duplicate=False)
            if isinstance(m, (nn.Sequential, nn.ModuleList))]
