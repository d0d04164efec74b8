"""Population initialisation: every member as an independently constructed module would be.

``nf.population(module, n)`` gives each member the values ``n`` separately built modules would
get from their submodules' ``reset_parameters`` (torch's default initialisation), with
independent random draws. For the layers torch ships (``Linear``, ``Conv*``/``ConvTranspose*``,
``Bilinear``, ``Embedding``/``EmbeddingBag``, the norms, ``RNN``/``LSTM``/``GRU`` and their cells,
``PReLU``) it draws the very distributions their ``reset_parameters`` draw, for all members at
once: one random draw per leaf of shape ``(n, *shape)``. Any other module with a
``reset_parameters`` (or ``_reset_parameters``, as ``nn.MultiheadAttention`` and
``nn.Transformer``) has it called member by member on a real copy of that submodule, after
its children are initialised, as construction runs it; with a ``generator`` each member's call
runs on its own seed drawn from it, so the result is reproducible and the global RNG is left as
it was (such resets draw from the global RNG, so it is seeded inside ``torch.random.fork_rng``
for the call: another thread drawing from the global RNG at that moment sees those seeds).

Parameters that no such module initialises (an ``nn.Parameter(torch.ones(3))`` set in a custom
``__init__``) keep the source's value in every member, as its constructor made it; so do
non-operational parameters and buffers that no reset touches. Shared (``clone=False``)
parameters stay the species' one tensor.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.rnn import RNNBase, RNNCellBase

from ._particle import Particle
from ._schema import Schema, TensorSpec

__all__ = ["reset_members"]

Values = dict[str, torch.Tensor]


def reset_members(source: Particle, n: int, generator: torch.Generator | None) -> tuple:
    """The leaves of ``n`` members of ``source``'s species, each initialised afresh."""
    s = source._schema
    src = dict(zip(s.leaf_keys, source._leaves))
    values: Values = {}  # batched (n, *shape) values decided so far, by leaf key
    owned = _owned_leaves(s)
    for path, module in _post_order(s._skeleton):
        reset = _recognised(module)
        if reset is not None:
            own = owned.get(path, {})
            for name, value in reset(module, n, generator, own).items():
                values[own[name].key] = value
        elif _reset_method(module) is not None:
            values.update(_reset_each(s, path, module, n, generator, src, values))
    values = _respect_custom(s, src, values)
    out = []
    for spec in s.leaf_specs:
        value = values.get(spec.key)
        if value is None or (spec.kind == "param" and not spec.config.operational):
            value = src[spec.key].detach().expand(n, *spec.shape).clone()
        if spec.requires_grad and (value.is_floating_point() or value.is_complex()):
            value.requires_grad_(True)
        out.append(value)
    return tuple(out)


def _respect_custom(s: Schema, src: Values, values: Values) -> Values:
    """Keep initialisation the source module's own ``__init__`` did after its layers' resets.

    A constructor that sets a leaf to constants (a zero-initialised head, ResNet's zero BatchNorm
    gamma) makes every constructed module hold them, so every member keeps the source's value
    when it is constant and the reset's is not that constant. (A source whose leaves were
    trained away from a constant reset, BatchNorm weights, is reset as usual.) A leaf redrawn
    in ``__init__`` from another distribution (GPT's N(0, 0.02)) cannot be reproduced from an
    instance: a warning names it and the way to get it exactly (``nf.population(MyNet, n)``, a
    factory, constructs every member).
    """
    odd = []
    for key, drawn in list(values.items()):
        own = src.get(key)
        if own is None or own.numel() < 2 or not (own.is_floating_point()):
            continue
        with torch.no_grad():
            own = own.detach()
            first = drawn[0]
            own_const = bool(own.eq(own.reshape(-1)[0]).all())
            drawn_const = bool(first.eq(first.reshape(-1)[0]).all())
            if own_const and not (drawn_const and torch.equal(own, first)):
                values[key] = own.expand_as(drawn).clone()
            elif not drawn_const and own.numel() >= 64:  # (member 0 stands for the draw)
                got, want = float(own.float().std()), float(first.float().std())
                if not 0.5 * want <= got <= 2.0 * want:
                    odd.append(f"{key} (std {got:.3g}, the layer's reset gives {want:.3g})")
    if odd:
        warnings.warn("population: these leaves of the source do not look like their layer's "
                      f"reset_parameters draw: {', '.join(odd)}; the module's __init__ probably "
                      "initialised them its own way, which cannot be repeated from an instance. "
                      "Members were drawn as the layer's reset draws. Pass the class or a factory "
                      "(nf.population(MyNet, n)) to construct every member, or init='clone'",
                      stacklevel=3)
    return values


# walking the skeleton ---------------------------------------------------------------------------

def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _post_order(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module once, children before their parent (the order construction finishes them).

    Iterative (a recursive closure would be a reference cycle left to the collector).
    """
    out: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module, bool]] = [("", root, False)]
    while stack:
        path, m, expanded = stack.pop()
        if expanded:
            out.append((path, m))
            continue
        if id(m) in seen:  # a module registered twice: its first path only
            continue
        seen.add(id(m))
        stack.append((path, m, True))
        for name, child in reversed(list(m._modules.items())):
            if child is not None:
                stack.append((_join(path, name), child, False))
    return out


def _owned_leaves(s: Schema) -> dict[str, dict[str, TensorSpec]]:
    """``{module path: {attribute name: spec}}``: the per-particle leaves each module holds
    directly and initialises.

    A tied tensor is initialised by one of its modules: an ``Embedding`` when one holds it (a
    language-model head tied to its embedding ends up with the embedding's N(0, 1) values
    whichever was registered first, as ``head.weight = emb.weight`` makes it), else the module
    of its first path. The other modules still initialise their own leaves (the head's bias).
    """
    out: dict[str, dict[str, TensorSpec]] = {}
    for spec in s.leaf_specs:
        owner = spec.key
        if len(spec.paths) > 1:
            owner = next((p for p in spec.paths if isinstance(
                s._module_at(p.rpartition(".")[0]), (nn.Embedding, nn.EmbeddingBag))), owner)
        parent, _, name = owner.rpartition(".")
        out.setdefault(parent, {})[name] = spec
    return out


def _reset_method(module: nn.Module) -> Callable[[], Any] | None:
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


# vectorised resets of torch's own layers ------------------------------------------------------------

def _uniform(n: int, spec: TensorSpec, bound: float, g: torch.Generator | None) -> torch.Tensor:
    t = torch.empty((n, *spec.shape), dtype=spec.dtype, device=spec.device)
    return t.uniform_(-bound, bound, generator=g)


def _const(n: int, spec: TensorSpec, value: float) -> torch.Tensor:
    return torch.full((n, *spec.shape), value, dtype=spec.dtype, device=spec.device)


def _kaiming_bound(fan_in: int) -> float:
    """``nn.init.kaiming_uniform_(w, a=math.sqrt(5))``'s bound, computed as torch computes it."""
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


def _linear_like(m: nn.Module, n: int, g: torch.Generator | None, own: dict) -> Values:
    """``nn.Linear`` and ``_ConvNd``: kaiming-uniform weight, uniform bias of bound 1/sqrt(fan_in)."""
    weight = getattr(m, "weight", None)  # (the skeleton's: its shape gives fan_in even when tied)
    if weight is None or not weight.shape or 0 in weight.shape:
        return {}
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    w = own.get("weight")
    out = {} if w is None else {"weight": _uniform(n, w, _kaiming_bound(fan_in), g)}
    b = own.get("bias")
    if b is not None:
        if fan_in > 0:
            out["bias"] = _uniform(n, b, 1 / math.sqrt(fan_in), g)
        elif isinstance(m, nn.Linear):
            out["bias"] = _const(n, b, 0.0)
    return out


def _bilinear(m: nn.Module, n: int, g: torch.Generator | None, own: dict) -> Values:
    bound = 1 / math.sqrt(m.weight.size(1))
    return {name: _uniform(n, own[name], bound, g) for name in ("weight", "bias") if name in own}


def _embedding(m: nn.Module, n: int, g: torch.Generator | None, own: dict) -> Values:
    w = own.get("weight")
    if w is None:
        return {}
    t = torch.empty((n, *w.shape), dtype=w.dtype, device=w.device).normal_(generator=g)
    if m.padding_idx is not None:
        t[:, m.padding_idx] = 0
    return {"weight": t}


def _norm(m: nn.Module, n: int, g: torch.Generator | None, own: dict) -> Values:
    """The norms: weight ones, bias zeros; ``_NormBase`` also resets its running statistics."""
    fills = {"weight": 1.0, "bias": 0.0}
    if isinstance(m, _NormBase) and m.track_running_stats:
        fills.update(running_mean=0.0, running_var=1.0, num_batches_tracked=0)
    return {name: _const(n, own[name], v) for name, v in fills.items() if name in own}


def _rnn(m: nn.Module, n: int, g: torch.Generator | None, own: dict) -> Values:
    stdv = 1.0 / math.sqrt(m.hidden_size) if m.hidden_size > 0 else 0
    return {name: _uniform(n, spec, stdv, g) for name, spec in own.items()
            if spec.kind == "param"}


def _prelu(m: nn.Module, n: int, g: torch.Generator | None, own: dict) -> Values:
    return {"weight": _const(n, own["weight"], m.init)} if "weight" in own else {}


_VECTORISED: dict[Any, Callable[..., Values]] = {
    nn.Linear.reset_parameters: _linear_like,
    _ConvNd.reset_parameters: _linear_like,
    nn.Bilinear.reset_parameters: _bilinear,
    nn.Embedding.reset_parameters: _embedding,
    nn.EmbeddingBag.reset_parameters: _embedding,
    _NormBase.reset_parameters: _norm,
    nn.LayerNorm.reset_parameters: _norm,
    nn.GroupNorm.reset_parameters: _norm,
    RNNBase.reset_parameters: _rnn,
    RNNCellBase.reset_parameters: _rnn,
    nn.PReLU.reset_parameters: _prelu,
}
if hasattr(nn, "RMSNorm"):
    _VECTORISED[nn.RMSNorm.reset_parameters] = _norm


def _recognised(module: nn.Module) -> Callable[..., Values] | None:
    """The vectorised reset for a module whose class uses one of torch's own ``reset_parameters``
    on real floating-point tensors (others, complex ones included, are reset member by member)."""
    reset = _VECTORISED.get(getattr(type(module), "reset_parameters", None))
    if reset is None:
        return None
    for t in (*module._parameters.values(), *module._buffers.values()):
        if t is not None and t.is_complex():
            return None
    return reset


# member-by-member resets of any other module ----------------------------------------------------------

def _reset_each(s: Schema, path: str, module: nn.Module, n: int, generator: torch.Generator | None,
                src: Values, values: Values) -> Values:
    """Call ``module``'s reset on a real copy once per member; every leaf under it comes back."""
    prefix = _join(path, "")
    under = [spec for spec in s.leaf_specs if path == "" or spec.key.startswith(prefix)]
    real, slots = _real_copy(s, path, module, under)
    reset = _reset_method(real)
    out = {spec.key: torch.empty((n, *spec.shape), dtype=spec.dtype, device=spec.device)
           for spec in under}
    devices = sorted({spec.device.index or 0 for spec in s.leaf_specs
                      if spec.device.type == "cuda"})
    with torch.no_grad():
        for i in range(n):
            for spec in under:
                now = values.get(spec.key)
                slots[spec.key].copy_(src[spec.key] if now is None else now[i])
            if generator is None:
                reset()
            else:
                seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                         device=generator.device))
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    reset()
            for spec in under:
                out[spec.key][i] = slots[spec.key]
    return out


def _real_copy(s: Schema, path: str, module: nn.Module, under: list[TensorSpec]
               ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of the skeleton submodule with real tensors, and the tensor of every leaf in it."""
    memo: dict[int, Any] = {}
    slots: dict[str, torch.Tensor] = {}
    cut = len(path) + 1 if path else 0
    for spec in under:
        t = torch.empty(spec.shape, dtype=spec.dtype, device=spec.device)
        if spec.kind == "param":
            t = nn.Parameter(t, requires_grad=spec.requires_grad)
        slots[spec.key] = t
        for p in spec.paths:
            if path == "" or p.startswith(path + "."):
                getter = module.get_parameter if spec.kind == "param" else module.get_buffer
                memo[id(getter(p[cut:]))] = t
    for key, value in s.shared.items():
        spec = s.by_key[key]
        for p in spec.paths:
            if path == "" or p.startswith(path + "."):
                getter = module.get_parameter if spec.kind == "param" else module.get_buffer
                memo[id(getter(p[cut:]))] = value.detach().clone()
    memo[id(memo)] = []
    return copy.deepcopy(module, memo), slots
