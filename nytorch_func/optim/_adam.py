"""Adam and AdamW over particles, step for step what ``torch.optim.Adam(foreach=True)`` computes."""

from __future__ import annotations

from typing import Any

import torch

from .._errors import ArgumentTypeError, SchemaError
from .._particle import Particle, expect_particle
from .._touch import touch
from . import _kernels as K
from ._hyper import check, flag, nonzero, optimizer, resolve
from ._leaves import computed, leaves, rebuild
from ._state import AdamState, advance, counts, moments, operands

__all__ = ["Adam", "AdamW"]


def _identity(xs: list) -> list:
    return xs


@optimizer
class Adam:
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam``; AdamW with ``decoupled_weight_decay``.

    ``step(p, grads, state) -> (p, state)`` is pure: it returns new parameters (fresh tensors
    with no autograd history and each leaf's ``requires_grad`` as before, so a loop that feeds
    them back holds one step's memory, not a growing graph) and a new state; its inputs are
    unchanged. Only the operational parameters move (a parameter configured
    ``operational=False`` is frozen for the optimizer too); buffers come through as they are.

    It computes what ``torch.optim.Adam(foreach=True)`` computes, operation for operation:
    float64 runs agree with torch to rounding. Step counts are kept per parameter (by stable
    id), so a parameter added mid-training starts at step 1 like one torch.optim meets in a new
    param group, and bias corrections are Python floats from those counts, as torch's. Complex
    parameters are stepped as pairs of reals, as torch does. ``lr``, ``betas``, ``eps`` and
    ``weight_decay`` may be tensors with one value per population member.

    ``differentiable=True`` records the update in autograd (for meta-learning: differentiate
    through the step); the default cuts it, as ``torch.optim`` does.

    Optimizers are frozen values: assigning or deleting an attribute (``opt.lr = 1e-4``) raises
    :class:`~nytorch_func.FrozenError`; make a new one with ``dataclasses.replace(opt, lr=1e-4)``
    (the same holds for :class:`AdamW` and :class:`SGD`).

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import optim
    >>> p = nf.from_module(torch.nn.Linear(3, 1))
    >>> opt = optim.Adam(lr=0.1)
    >>> state = opt.init(p)
    >>> x = torch.randn(16, 3)
    >>> loss = lambda p: nf.apply(p, x).pow(2).mean()
    >>> for _ in range(20):
    ...     p, state = opt.step(p, nf.grad(loss)(p), state)
    >>> bool(loss(p) < 0.05), p["weight"].grad_fn, p["weight"].requires_grad, state.step
    (True, None, True, {0: 20, 1: 20})
    """

    lr: Any = 1e-3
    betas: tuple[Any, Any] = (0.9, 0.999)
    eps: Any = 1e-8
    weight_decay: Any = 0.0
    amsgrad: bool = False
    maximize: bool = False
    decoupled_weight_decay: bool = False
    differentiable: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        put = object.__setattr__
        put(self, "lr", check(name, "lr", self.lr))
        put(self, "eps", check(name, "eps", self.eps))
        put(self, "weight_decay", check(name, "weight_decay", self.weight_decay))
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ArgumentTypeError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        put(self, "betas", tuple(check(name, f"beta{i + 1}", b, high=1.0, high_open=True)
                                 for i, b in enumerate(betas)))
        for option in ("amsgrad", "maximize", "decoupled_weight_decay", "differentiable"):
            flag(name, option, getattr(self, option))

    def init(self, p: Particle) -> AdamState:
        """Zero moments of ``p``'s species and version (a population gets one per member)."""
        expect_particle(p, f"{type(self).__name__}.init")
        z = touch(p).detach().zeros()
        return AdamState({}, z, z, z if self.amsgrad else None)

    def step(self, p: Particle, grads: Particle, state: AdamState
             ) -> tuple[Particle, AdamState]:
        """One update of ``p`` by ``grads``: ``(new_p, new_state)``.

        ``p`` and ``grads`` are particles of one species (touched to its newest version);
        ``state`` comes from :meth:`init` or the previous step. State made before an event is
        brought to ``p``'s version first, entries new since then starting at zero (what
        ``nf.touch_tree(state, fill="zeros")`` does).
        """
        what = f"{type(self).__name__}.step"
        p, g = operands(p, grads, what)
        if not isinstance(state, AdamState):
            raise ArgumentTypeError(f"{what}: state must be the AdamState opt.init(p) made, got "
                                    f"{type(state).__name__}")
        steps = counts(state.step, what)
        m = moments(state.m, p, "m", what)
        v = moments(state.v, p, "v", what)
        v_max = None
        if self.amsgrad:
            if state.v_max is None:
                raise SchemaError(f"{what}: amsgrad needs state.v_max; this state was made by an "
                                  "optimizer without amsgrad: make it with this one's init(p)")
            v_max = moments(state.v_max, p, "v_max", what)
        if self.differentiable:
            return self._step(p, g, steps, m, v, v_max, what)
        with torch.no_grad():
            return self._step(p, g, steps, m, v, v_max, what)

    def _step(self, p: Particle, g: Particle, steps: dict[int, int], m: Particle, v: Particle,
              v_max: Particle | None, what: str) -> tuple[Particle, AdamState]:
        idx, pids = computed(p)
        if not idx:
            return p, AdamState(advance(steps, p, pids), m, v, v_max)
        fresh = not self.differentiable  # computed under no_grad: no history to cut
        ps = leaves(p, idx)
        ps_r, gs, ms, vs = ps, leaves(g, idx), leaves(m, idx), leaves(v, idx)
        back = _identity
        if any(t.is_complex() for t in ps):  # stepped as pairs of reals, as torch.optim does
            ps_r, gs, ms, vs = K.real_views(ps_r, gs, ms, vs)
            back = lambda xs: K.from_real(xs, ps)  # noqa: E731
        batch, device = tuple(p.batch_shape), ps[0].device
        lr = resolve(what, "lr", self.lr, batch, device)
        b1 = resolve(what, "beta1", self.betas[0], batch, device)
        b2 = resolve(what, "beta2", self.betas[1], batch, device)
        eps = resolve(what, "eps", self.eps, batch, device)
        wd = resolve(what, "weight_decay", self.weight_decay, batch, device)
        decay = nonzero(wd)
        if self.maximize:
            gs = K.neg(gs)
        if decay and not self.decoupled_weight_decay:
            gs = K.axpy(gs, ps_r, K.per_leaf(wd, ps_r))
        m_new = K.lerp(ms, gs, K.per_leaf(1 - b1, ms))
        v_new = K.mul(vs, K.per_leaf(b2, vs))
        if K.is_tensor(b2):
            v_new = K.addcmul_(v_new, K.mul(gs, K.per_leaf(1 - b2, gs)), gs, 1.0)
        else:
            v_new = K.addcmul_(v_new, gs, gs, 1 - b2)
        ts = [steps.get(pid, 0) + 1 for pid in pids]
        bias1 = [1 - b1 ** t for t in ts]
        bias2_sqrt = [(1 - b2 ** t) ** 0.5 for t in ts]
        step_size = [(lr / bc) * -1 for bc in bias1]
        vmax_new = None
        if v_max is not None:
            old = leaves(v_max, idx)
            vmax_new = K.maximum(K.real_views(old)[0] if back is not _identity else old, v_new)
            denom = K.sqrt(vmax_new)
        else:
            denom = K.sqrt(v_new)
        denom = K.div_(denom, K.per_leaf_each(bias2_sqrt, denom))
        denom = K.add_(denom, K.per_leaf(eps, denom))
        base = ps_r
        if decay and self.decoupled_weight_decay:
            base = K.mul(ps_r, K.per_leaf(1 - lr * wd, ps_r))
        p_new = K.addcdiv(base, m_new, denom, K.per_leaf_each(step_size, denom))
        state = AdamState(
            advance(steps, p, pids),
            rebuild(m, idx, back(m_new)),
            rebuild(v, idx, back(v_new)),
            None if v_max is None else rebuild(v_max, idx, back(vmax_new)))
        return rebuild(p, idx, back(p_new), fresh=fresh), state


@optimizer
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``: Adam with decoupled weight
    decay, ``weight_decay=1e-2`` by default.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import optim
    >>> opt = optim.AdamW(lr=1e-2)
    >>> opt.decoupled_weight_decay, opt.weight_decay
    (True, 0.01)
    """

    weight_decay: Any = 1e-2
    decoupled_weight_decay: bool = True
