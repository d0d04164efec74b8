"""Function-preserving growth: widen a layer, insert modules, deepen a Sequential.

Each function is one event of the species. ``widen`` is a :class:`~nytorch_func._resize.Resize`:
every particle and every member of a population is grown from *its own* weights through one
mapping chosen when the event is made, so each keeps its own function. ``insert_module`` and
``deepen`` insert modules into a ``Sequential``/``ModuleList`` and renumber the later children.
Everything is validated before anything changes; what cannot be preserved is a typed error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._arith import check_generator
from ._containers import InsertModules, container_at
from ._edit import commit, module_parts
from ._errors import ArgumentTypeError, SchemaError
from ._events import Event
from ._particle import Particle, expect_particle
from ._resize import Resize
from ._schema import Schema, split_path

__all__ = ["widen", "deepen", "insert_module"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
METHODS = ("net2net", "zeros")


def widen(p: Particle, layer: str, consumers: "str | Sequence[str]", by: int, *,
          between: "str | Sequence[str]" = (), method: str = "net2net",
          generator: torch.Generator | None = None) -> Particle:
    """Grow the outputs of ``layer`` by ``by`` units, keeping every particle's function.

    ``layer`` is an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (output features/channels grow);
    ``consumers`` every module that reads its output (``Linear`` or ``Conv``, whose input
    features/channels grow; a ``Linear`` after a ``Conv`` and a flatten grows by its columns per
    channel); ``between`` the normalisation layers in between (``BatchNorm1d/2d/3d`` with their
    running statistics, ``LayerNorm`` over the features, ``GroupNorm``), grown with them. Modules
    without tensors in between (activations, dropout, flatten) need no mention. One event:
    parameters keep their ids, so optimizer state follows with ``nf.touch_tree(state,
    fill="zeros")`` (old coordinates keep their moments, new ones start at zero).

    ``method="net2net"``: each new unit replicates an existing one chosen at random (the choice
    is recorded in the event, so every particle and member uses the same mapping) and the
    consumers' weights of replicated units are divided by their replication counts: every
    member computes the same function as before. Under a LayerNorm or GroupNorm the units are
    replicated evenly instead (``by`` must be a multiple of the width), which keeps their
    statistics. ``method="zeros"``: new units get fresh incoming weights (the layer's own
    initialisation, drawn once) and zero outgoing weights; not allowed under a LayerNorm or
    GroupNorm, whose statistics the new units would change.

    >>> import torch, nytorch_func as nf
    >>> nn = torch.nn
    >>> pop = nf.population(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 5)
    >>> x = torch.randn(7, 3)
    >>> before = nf.vmap_apply(pop, x)
    >>> wide = nf.widen(pop, "0", "2", 4, generator=torch.Generator().manual_seed(0))
    >>> wide["0.weight"].shape, wide["2.weight"].shape
    (torch.Size([5, 8, 3]), torch.Size([5, 2, 8]))
    >>> torch.allclose(nf.vmap_apply(wide, x), before, atol=1e-6)
    True
    >>> print(nf.history(wide.species)[-1][1])
    widen 0 by 4 (net2net): 0.weight 4→8 rows, 0.bias 4→8, 2.weight 4→8 cols
    """
    expect_particle(p, "widen")
    consumers = _paths(consumers, "widen", "consumers", required=True)
    between = _paths(between, "widen", "between")
    if not isinstance(layer, str):
        raise ArgumentTypeError(f"widen: layer must be a module path, got {type(layer).__name__}")
    if isinstance(by, bool) or not isinstance(by, int):
        raise ArgumentTypeError(f"widen: by must be an int, got {type(by).__name__}")
    if by < 1:
        raise SchemaError(f"widen: by must be at least 1, got {by}")
    if not isinstance(method, str):
        raise ArgumentTypeError(f"widen: method must be one of {METHODS} (a str), got "
                                f"{type(method).__name__}")
    if method not in METHODS:
        raise SchemaError(f"widen: method must be one of {METHODS}, got {method!r}")
    check_generator(generator, "widen")

    def build(q: Particle) -> tuple[Event, dict]:
        return _widen_event(q._schema, layer, consumers, by, between, method, generator), {}

    return commit(p, build, "widen")


def _paths(value: Any, what: str, name: str, *, required: bool = False) -> tuple[str, ...]:
    paths = (value,) if isinstance(value, str) else value
    if not isinstance(paths, (list, tuple)) or not all(isinstance(x, str) for x in paths):
        raise ArgumentTypeError(f"{what}: {name} must be a module path or a list of them, got "
                                f"{value!r:.60}")
    if required and not paths:
        raise SchemaError(f"{what}: {name} must name at least one module")
    if len(set(paths)) != len(paths):
        raise SchemaError(f"{what}: {name} names a module twice: {list(paths)}")
    return tuple(paths)


def _module(schema: Schema, path: str, kinds: tuple, what: str, role: str) -> nn.Module:
    module = schema._module_at(path)
    if module is None:
        raise SchemaError(f"{what}: no module at {path!r} in version {schema.version}")
    if not isinstance(module, kinds) or type(module).__name__.startswith("Lazy"):
        names = ", ".join(k.__name__ for k in kinds)
        raise SchemaError(f"{what}: the {role} {path!r} is a {type(module).__name__}; growth "
                          f"preserves the function only for {names}")
    if isinstance(module, _CONV) and module.groups != 1:
        raise SchemaError(f"{what}: the {role} {path!r} is a grouped convolution "
                          f"(groups={module.groups}); only groups=1 can be widened")
    return module


def _widen_event(schema: Schema, layer: str, consumers: tuple[str, ...], by: int,
                 between: tuple[str, ...], method: str,
                 generator: torch.Generator | None) -> Resize:
    what = "widen"
    m = _module(schema, layer, (nn.Linear, *_CONV), what, "layer")
    weight = schema.by_path.get(f"{layer}.weight")
    if weight is None:
        raise SchemaError(f"{what}: the layer {layer!r} has no weight (it was deleted or set to "
                          "None); widen grows a layer's weight rows, so give it a weight first")
    n = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    width = n + by
    norms = [(path, _module(schema, path, _NORMS, what, "normalisation layer"))
             for path in between]
    groups = 1
    for path, norm in norms:
        if isinstance(norm, nn.LayerNorm):
            if tuple(norm.normalized_shape) != (n,):
                raise SchemaError(f"{what}: the LayerNorm {path!r} normalises over "
                                  f"{tuple(norm.normalized_shape)}, not the {n} features of "
                                  f"{layer!r}")
        elif isinstance(norm, nn.GroupNorm):
            if norm.num_channels != n:
                raise SchemaError(f"{what}: the GroupNorm {path!r} has {norm.num_channels} "
                                  f"channels, {layer!r} gives {n}")
            groups = norm.num_groups
        elif norm.num_features != n:
            raise SchemaError(f"{what}: the {type(norm).__name__} {path!r} has "
                              f"{norm.num_features} features, {layer!r} gives {n}")
    even = any(isinstance(norm, (nn.LayerNorm, nn.GroupNorm)) for _, norm in norms)
    if even and method != "net2net":
        raise SchemaError(f"{what}: method={method!r} cannot keep the statistics of the "
                          "LayerNorm/GroupNorm in between (new units would change them); use "
                          "method='net2net'")
    if even and by % n:
        raise SchemaError(f"{what}: under a LayerNorm or GroupNorm the units are replicated "
                          f"evenly to keep its statistics, so by must be a multiple of the width "
                          f"{n}; got {by}")
    index, origin, counts = _unit_map(n, by, method, even, groups, generator)
    tensors: list[tuple] = []
    attrs: list[tuple] = []
    # the layer: rows (output units) replicated, or fresh rows for method="zeros"
    fresh = _fresh_rows(weight.shape, f"{layer}.bias" in schema.by_path, by, generator) \
        if method == "zeros" else {}
    for name in ("weight", "bias"):
        _rows(schema, layer, name, index, origin, width, fresh.get(name), tensors)
    attrs.append((layer, "out_features" if isinstance(m, nn.Linear) else "out_channels", width))
    # normalisation layers in between: their per-unit tensors replicated (or neutral new units)
    for path, norm in norms:
        neutral = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        for name, value in neutral.items():
            fill = None if method == "net2net" else value
            _rows(schema, path, name, index, origin, width, fill, tensors)
        if isinstance(norm, nn.LayerNorm):
            attrs.append((path, "normalized_shape", (width,)))
        elif isinstance(norm, nn.GroupNorm):
            attrs.append((path, "num_channels", width))
        else:
            attrs.append((path, "num_features", width))
    # consumers: input columns replicated and divided by the replication counts (or zero)
    scale = None if method == "zeros" else (1.0 / counts.to(torch.float64))[index.clamp(min=0)]
    for path in consumers:
        c = _module(schema, path, (nn.Linear, *_CONV), what, "consumer")
        if path == layer:
            raise SchemaError(f"{what}: {path!r} cannot be its own consumer")
        fan = c.in_features if isinstance(c, nn.Linear) else c.in_channels
        per = 1
        if fan != n:
            if not (isinstance(c, nn.Linear) and isinstance(m, _CONV) and fan % n == 0):
                raise SchemaError(f"{what}: the consumer {path!r} takes {fan} inputs, but "
                                  f"{layer!r} gives {n}"
                                  + (" channels (a Linear after a flatten must take a multiple "
                                     "of them)" if isinstance(m, _CONV) else ""))
            per = fan // n  # a Linear after Conv + flatten: ``per`` columns per channel
        cols, cols_origin, cols_scale = _per_channel(index, origin, scale, per)
        spec = schema.by_path.get(f"{path}.weight")
        if spec is None:
            raise SchemaError(f"{what}: the consumer {path!r} has no weight")
        shape = list(spec.shape)
        shape[1] = len(cols)
        fill = None if method == "net2net" else torch.zeros(shape, dtype=spec.dtype)
        tensors.append((spec.key, tuple(shape), ((1, cols, cols_scale, cols_origin),), fill))
        attrs.append((path, "in_features" if isinstance(c, nn.Linear) else "in_channels",
                      fan + by * per))
    for key, *_ in tensors:
        spec = schema.by_path[key]
        if len(spec.paths) > 1:
            raise SchemaError(f"{what}: {key!r} is tied to {list(spec.paths[1:])}; widening it "
                              "would resize the other modules' weight but not the rest of them. "
                              "Untie it first (nf.del_param on the other name, then add it back "
                              "after widening)")
    keys = [key for key, *_ in tensors]
    if len(set(keys)) != len(keys):
        raise SchemaError(f"{what}: a tensor would be resized twice ({keys}); list each module "
                          "once, in one role")
    return Resize(f"widen {layer} by {by} ({method})", tuple(tensors), tuple(attrs))


def _unit_map(n: int, by: int, method: str, even: bool, groups: int,
              generator: torch.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index, origin, counts)`` of the new units: where each comes from, whether it is an
    old unit, and how many units each old one feeds."""
    width = n + by
    if even:  # even replication, kept inside each group (GroupNorm) or over all (LayerNorm)
        size, new_size = n // groups, width // groups
        j = torch.arange(width)
        index = (j // new_size) * size + (j % new_size) % size
        origin = (j % new_size) < size
    elif method == "net2net":
        src = torch.randint(0, n, (by,), generator=generator)
        index = torch.cat([torch.arange(n), src])
        origin = torch.arange(width) < n
    else:
        index = torch.cat([torch.arange(n), torch.full((by,), -1)])
        origin = torch.arange(width) < n
    counts = torch.bincount(index.clamp(min=0), minlength=n)
    return index, origin, counts


def _rows(schema: Schema, module: str, name: str, index: torch.Tensor, origin: torch.Tensor,
          width: int, fill: "torch.Tensor | float | None", tensors: list) -> None:
    """Record the resize of dim 0 of ``module.name`` (if the module has it)."""
    spec = schema.by_path.get(f"{module}.{name}")
    if spec is None:
        return
    shape = (width, *spec.shape[1:])
    if isinstance(fill, float):
        fill = torch.full(shape, fill, dtype=spec.dtype)
    elif isinstance(fill, torch.Tensor):
        full = torch.zeros(shape, dtype=spec.dtype)
        full[len(origin) - len(fill):] = fill.to(spec.dtype)
        fill = full
    tensors.append((spec.key, shape, ((0, index, None, origin),), fill))


def _per_channel(index: torch.Tensor, origin: torch.Tensor, scale: torch.Tensor | None,
                 per: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The column map of a consumer that reads ``per`` columns per unit (1: one each)."""
    if per == 1:
        return index, origin, scale
    offsets = torch.arange(per)
    cols = (index.clamp(min=0)[:, None] * per + offsets).reshape(-1)
    cols = torch.where(index.repeat_interleave(per) < 0, -1, cols)
    return (cols, origin.repeat_interleave(per),
            None if scale is None else scale.repeat_interleave(per))


def _fresh_rows(weight: tuple[int, ...], bias: bool, by: int,
                generator: torch.Generator | None) -> dict:
    """New rows for ``by`` units drawn as the layer's own ``reset_parameters`` would (a weight
    of shape ``weight``, a bias if ``bias``)."""
    fan_in = math.prod(weight[1:])
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0  # kaiming_uniform(a=sqrt(5)) and bias
    shape = (by, *weight[1:])
    out = {"weight": (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1)
           * bound}
    if bias:
        out["bias"] = (torch.rand((by,), generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return out


# inserting ----------------------------------------------------------------------------------------

def insert_module(p: Particle, container: str, index: int,
                  module: "nn.Module | Sequence[nn.Module]") -> Particle:
    """Insert ``module`` (or several, in order) into the ``Sequential``/``ModuleList`` at
    ``container`` (``""``: the root) before position ``index``; later children move up.

    Keys stay contiguous and ``nf.to_module`` gives an ordinary container. Parameters of the
    moved children keep their ids and values; the inserted modules' tensors are the
    initiator's own objects, and every other particle gets copies, as with ``nf.add_module``.

    >>> import torch, nytorch_func as nf
    >>> nn = torch.nn
    >>> p = nf.from_module(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    >>> q = nf.insert_module(p, "", 1, nn.ReLU())
    >>> nf.to_module(q)
    Sequential(
      (0): Linear(in_features=2, out_features=3, bias=True)
      (1): ReLU()
      (2): Linear(in_features=3, out_features=1, bias=True)
    )
    >>> nf.param_ids(q)["2.weight"] == nf.param_ids(p)["1.weight"]
    True
    """
    expect_particle(p, "insert_module")
    if not isinstance(container, str):
        raise ArgumentTypeError(f"insert_module: container must be a module path ('' for the "
                                f"root), got {type(container).__name__}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ArgumentTypeError(f"insert_module: index must be an int, got "
                                f"{type(index).__name__}")
    modules = (module,) if isinstance(module, nn.Module) else tuple(module) if isinstance(
        module, (list, tuple)) else None
    if not modules:
        raise ArgumentTypeError(f"insert_module: module must be an nn.Module or a non-empty list "
                                f"of them, got {module!r:.60}")
    return commit(p, lambda q: _insert(q, container, index, modules), "insert_module")


def _insert(q: Particle, container: str, index: int, modules: tuple[nn.Module, ...],
            label: str = "") -> tuple[Event, dict]:
    parent = container_at(q._schema, container, "insert_module")
    n = len(parent._modules)
    if index < 0:
        index += n + 1
    if not 0 <= index <= n:
        raise SchemaError(f"insert_module: index must be in {-n - 1}..{n} for "
                          f"{container or '<root>'!r} ({type(parent).__name__} of {n}), got "
                          f"{index}")
    skeletons, specs, values, own = [], [], [], {}
    for k, module in enumerate(modules):
        where = f"{container}.{index + k}" if container else str(index + k)
        skeleton, s, v, snapshots = module_parts(module, where, "insert_module")
        skeletons.append(skeleton)
        specs.append(s)
        values.append(snapshots)
        own.update((f"{where}.{spec.key}", t) for spec, t in zip(s, v))
    event = InsertModules(container, index, tuple(skeletons), tuple(specs), tuple(values), label)
    return event, own


# deepening ----------------------------------------------------------------------------------------

_RANGES: dict[type, tuple[float, float]] = {
    nn.ReLU: (0.0, math.inf), nn.ReLU6: (0.0, 6.0), nn.Sigmoid: (0.0, 1.0),
    nn.Hardsigmoid: (0.0, 1.0), nn.Softplus: (0.0, math.inf), nn.Tanh: (-1.0, 1.0),
}


def _identity_on(activation: nn.Module) -> tuple[float, float] | None:
    """The interval on which ``activation`` is the identity (None: nowhere known)."""
    if isinstance(activation, nn.Identity):
        return (-math.inf, math.inf)
    if isinstance(activation, nn.ReLU):
        return (0.0, math.inf)
    if isinstance(activation, nn.ReLU6):
        return (0.0, 6.0)
    if isinstance(activation, nn.Hardtanh):
        return (float(activation.min_val), float(activation.max_val))
    return None


def deepen(p: Particle, after: str, *, activation: "nn.Module | type | None" = None) -> Particle:
    """Insert an identity-initialised layer after the child ``after`` of a ``Sequential``.

    The layer has the width of the last ``Linear`` or ``Conv`` at or before ``after``: a
    ``Linear`` with an identity weight and zero bias, or a ``Conv`` with a Dirac kernel (same
    kernel size, "same" padding, stride 1). With ``activation`` (a module or its class) the
    activation is inserted after the new layer; that preserves the function only where the
    activation is the identity on what ``after`` outputs (``nn.ReLU`` after a ``ReLU``), and
    anything else is a typed error. Every particle and member gets the same new layer, so each
    keeps its function; parameter ids of the layers after move with them.

    >>> import torch, nytorch_func as nf
    >>> nn = torch.nn
    >>> p = nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    >>> x = torch.randn(5, 3)
    >>> deep = nf.deepen(p, "1", activation=nn.ReLU)
    >>> [type(m).__name__ for m in nf.to_module(deep)]
    ['Linear', 'ReLU', 'Linear', 'ReLU', 'Linear']
    >>> torch.allclose(nf.apply(deep, x), nf.apply(p, x))
    True
    """
    expect_particle(p, "deepen")
    if not isinstance(after, str) or not after:
        raise ArgumentTypeError(f"deepen: after must be the path of a Sequential child, got "
                                f"{after!r}")
    if isinstance(activation, type):
        if not issubclass(activation, nn.Module):
            raise ArgumentTypeError(f"deepen: activation must be an nn.Module or its class, got "
                                    f"{activation!r}")
        activation = activation()
    elif activation is not None and not isinstance(activation, nn.Module):
        raise ArgumentTypeError(f"deepen: activation must be an nn.Module, its class or None, "
                                f"got {type(activation).__name__}")

    def build(q: Particle) -> tuple[Event, dict]:
        container, name = split_path(after)
        parent = q._schema._module_at(container)
        if not (isinstance(parent, nn.Sequential) and parent._modules.get(name) is not None):
            raise SchemaError(f"deepen: {after!r} is not a child of an nn.Sequential in version "
                              f"{q._schema.version}; deepen inserts into a Sequential")
        at = list(parent._modules).index(name)  # its place (named children keep their names)
        modules = [_identity_layer(container, at, after, q)]
        if activation is not None:
            _check_activation(parent._modules[name], activation, after)
            modules.append(activation)
        return _insert(q, container, at + 1, tuple(modules), f"deepen {after}")

    return commit(p, build, "deepen")


# What may come between the width source and 'after': modules known to keep the features of a
# Linear's output and the channels of a Conv's (elementwise, dropout, normalisation), and those
# that keep a Conv's channels but change a Linear's features (they act on the last dims). Any
# other module (an RNNCell, a ConvTranspose, the user's own) may change the width: refused.
_ELEMENTWISE = (nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU,
                nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign, nn.Tanhshrink,
                nn.Softshrink, nn.Hardshrink, nn.LogSigmoid, nn.Threshold, nn.Softmax,
                nn.LogSoftmax, nn.Softmin, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.AlphaDropout, nn.FeatureAlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d,
                nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
                nn.InstanceNorm3d, nn.LocalResponseNorm)
_SPATIAL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
            nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d,
            nn.LPPool2d, nn.Upsample, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
            nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
            nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
            nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)


def _identity_layer(container: str, at: int, after: str, q: Particle) -> nn.Module:
    """An identity ``Linear``/``Conv`` as wide as the last one among children ``0..at``."""
    children = list(q._schema._module_at(container)._modules.items())  # type: ignore[union-attr]
    between: list[nn.Module] = []
    for i in range(at, -1, -1):
        key, m = children[i]
        if isinstance(m, nn.Sequential):
            raise SchemaError(f"deepen: a nested Sequential comes before {after!r}; deepen "
                              "inside it instead")
        if isinstance(m, (nn.Linear, *_CONV)):
            break
        between.append(m)
    else:
        raise SchemaError(f"deepen: there is no Linear or Conv at or before {after!r} to take "
                          "the width from")
    where = f"{container}.{key}" if container else key
    keeps = _ELEMENTWISE + (() if isinstance(m, nn.Linear) else _SPATIAL)
    for b in between:
        if not isinstance(b, keeps):
            raise SchemaError(f"deepen: a {type(b).__name__} comes between the "
                              f"{type(m).__name__} {where!r} and {after!r}; it may change the "
                              f"width {where!r} gives, so no identity layer is known to fit "
                              f"after {after!r}. Deepen before the {type(b).__name__}, or "
                              "insert the layer you want with nf.insert_module")
    spec = q._schema.by_path.get(f"{where}.weight")
    if spec is None:
        raise SchemaError(f"deepen: the {type(m).__name__} {where!r} has no weight (it was "
                          "deleted or set to None) to take the width and dtype from")
    dtype, device = spec.dtype, spec.device
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            layer = nn.Linear(m.out_features, m.out_features, dtype=dtype, device=device)
            layer.weight.copy_(torch.eye(m.out_features, dtype=dtype))
            layer.bias.zero_()
            return layer
        k = tuple(m.kernel_size)
        if any(x % 2 == 0 for x in k):
            k = (1,) * len(k)
        conv = type(m)(m.out_channels, m.out_channels, k, padding=tuple(x // 2 for x in k),
                       dtype=dtype, device=device)
        nn.init.dirac_(conv.weight)
        conv.bias.zero_()
        return conv


def _check_activation(previous: nn.Module, activation: nn.Module, after: str) -> None:
    domain = _identity_on(activation)
    span = next((r for kind, r in _RANGES.items() if type(previous) is kind), None)
    if isinstance(previous, nn.Hardtanh) and type(previous) is nn.Hardtanh:
        span = (float(previous.min_val), float(previous.max_val))
    if domain is None or span is None or not (domain[0] <= span[0] and span[1] <= domain[1]):
        raise SchemaError(
            f"deepen: inserting {type(activation).__name__} after {after!r} "
            f"({type(previous).__name__}) would change the function: it is the identity only "
            f"on {domain or 'no known range'}, and {after!r} outputs "
            f"{span or 'an unbounded range'}. Deepen after an activation whose outputs it "
            "leaves unchanged (nn.ReLU after a ReLU), or without an activation")
