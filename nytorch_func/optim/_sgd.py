"""SGD over particles, step for step what ``torch.optim.SGD(foreach=True)`` computes."""

from __future__ import annotations

from typing import Any

import torch

from .._errors import ArgumentTypeError, SchemaError
from .._particle import Particle, expect_particle
from .._touch import touch
from . import _kernels as K
from ._hyper import check, flag, nonzero, optimizer, resolve
from ._leaves import computed, leaves, rebuild
from ._state import SGDState, advance, counts, moments, operands

__all__ = ["SGD"]


def _identity(xs: list) -> list:
    return xs


@optimizer
class SGD:
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum, weight decay
    and ``maximize``, as ``torch.optim.SGD``.

    Pure like :class:`Adam` (fresh parameters with no autograd history, inputs unchanged), on
    the operational parameters only. The momentum buffer of a parameter starts as its first
    gradient, as torch's does, also for a parameter added mid-training (it is tracked by the
    per-parameter step counts). ``lr``, ``momentum``, ``dampening`` and ``weight_decay`` may be
    tensors with one value per population member.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import optim
    >>> p = nf.from_module(torch.nn.Linear(3, 1))
    >>> opt = optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    >>> state = opt.init(p)
    >>> x = torch.randn(16, 3)
    >>> loss = lambda p: nf.apply(p, x).pow(2).mean()
    >>> for _ in range(30):
    ...     p, state = opt.step(p, nf.grad(loss)(p), state)
    >>> bool(loss(p) < 0.05), state.step
    (True, {0: 30, 1: 30})
    """

    lr: Any = 1e-3
    momentum: Any = 0.0
    dampening: Any = 0.0
    weight_decay: Any = 0.0
    nesterov: bool = False
    maximize: bool = False
    differentiable: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        put = object.__setattr__
        for field in ("lr", "momentum", "dampening", "weight_decay"):
            put(self, field, check(name, field, getattr(self, field), low=-float("inf")
                                   if field == "dampening" else 0.0))
        for option in ("nesterov", "maximize", "differentiable"):
            flag(name, option, getattr(self, option))
        if self.nesterov and not K.is_tensor(self.momentum) and not K.is_tensor(self.dampening) \
                and (self.momentum <= 0 or self.dampening != 0):
            raise SchemaError(f"{name}: Nesterov momentum requires a momentum and zero "
                              f"dampening (got momentum={self.momentum}, "
                              f"dampening={self.dampening}), as in torch.optim.SGD")

    @property
    def _has_momentum(self) -> bool:
        return nonzero(self.momentum)

    def init(self, p: Particle) -> SGDState:
        """Step counts and, with momentum, zero momentum buffers of ``p``'s species and version."""
        expect_particle(p, f"{type(self).__name__}.init")
        return SGDState({}, touch(p).detach().zeros() if self._has_momentum else None)

    def step(self, p: Particle, grads: Particle, state: SGDState
             ) -> tuple[Particle, SGDState]:
        """One update of ``p`` by ``grads``: ``(new_p, new_state)`` (see :class:`Adam`)."""
        what = f"{type(self).__name__}.step"
        p, g = operands(p, grads, what)
        if not isinstance(state, SGDState):
            raise ArgumentTypeError(f"{what}: state must be the SGDState opt.init(p) made, got "
                                    f"{type(state).__name__}")
        steps = counts(state.step, what)
        buf = None
        if self._has_momentum:
            if state.momentum is None:
                raise SchemaError(f"{what}: this SGD has momentum but the state has no momentum "
                                  "buffers (it was made without momentum): make it with this "
                                  "optimizer's init(p)")
            buf = moments(state.momentum, p, "momentum", what)
        if self.differentiable:
            return self._step(p, g, steps, buf, what)
        with torch.no_grad():
            return self._step(p, g, steps, buf, what)

    def _step(self, p: Particle, g: Particle, steps: dict[int, int], buf: Particle | None,
              what: str) -> tuple[Particle, SGDState]:
        idx, pids = computed(p)
        if not idx:
            return p, SGDState(advance(steps, p, pids), buf)
        fresh = not self.differentiable  # computed under no_grad: no history to cut
        ps = leaves(p, idx)
        ps_r, gs = ps, leaves(g, idx)
        back = _identity
        if any(t.is_complex() for t in ps):  # stepped as pairs of reals, as torch.optim does
            ps_r, gs = K.real_views(ps_r, gs)
            back = lambda xs: K.from_real(xs, ps)  # noqa: E731
        batch, device = tuple(p.batch_shape), ps[0].device
        lr = resolve(what, "lr", self.lr, batch, device)
        wd = resolve(what, "weight_decay", self.weight_decay, batch, device)
        if self.maximize:
            gs = K.neg(gs)
        if nonzero(wd):
            gs = K.axpy(gs, ps_r, K.per_leaf(wd, ps_r))
        new_buf = None
        if buf is not None:
            mom = resolve(what, "momentum", self.momentum, batch, device)
            damp = resolve(what, "dampening", self.dampening, batch, device)
            if isinstance(mom, torch.Tensor):  # a member with momentum 0 steps by its gradient,
                damp = torch.where(mom == 0, 0.0, damp)  # as torch's SGD(momentum=0) ignores it
            old = leaves(buf, idx)
            old = K.real_views(old)[0] if back is not _identity else old
            first = [steps.get(pid, 0) == 0 for pid in pids]
            if all(first):
                bufs = [t.clone() for t in gs]
            else:
                bufs = K.axpy(K.mul(old, K.per_leaf(mom, old)), gs, K.per_leaf(1 - damp, gs))
                if any(first):  # torch starts the buffer of a parameter it meets as its gradient
                    bufs = [gi.clone() if f else b for b, gi, f in zip(bufs, gs, first)]
            new_buf = rebuild(buf, idx, back(bufs))
            gs = K.axpy(gs, bufs, K.per_leaf(mom, bufs)) if self.nesterov else bufs
        p_new = K.axpy(ps_r, gs, K.per_leaf(-lr, ps_r))
        return (rebuild(p, idx, back(p_new), fresh=fresh),
                SGDState(advance(steps, p, pids), new_buf))

