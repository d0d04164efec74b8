"""Functional optimizers over particles: pure ``step(p, grads, state) -> (p, state)``.

Built only from particle arithmetic, so they update exactly the *operational* parameters (a
parameter configured ``operational=False`` is frozen for them too), they work unchanged on a
population (per-member moments, one ``torch._foreach_*`` call per op) and under
``torch.compile``. Their state is a pytree of particles of the same species: after an event,
``nf.touch_tree(state, fill="zeros")`` carries it to the new version, keeping the moments of old
parameters and starting new ones at zero.

>>> import torch, nytorch_func as nf
>>> from nytorch_func import optim
>>> p = nf.from_module(torch.nn.Linear(3, 1))
>>> opt = optim.Adam(lr=0.1)
>>> state = opt.init(p)
>>> loss = lambda p, x: nf.apply(p, x).pow(2).mean()
>>> x = torch.randn(16, 3)
>>> for _ in range(20):
...     p, state = opt.step(p, torch.func.grad(loss)(p, x), state)
>>> bool(loss(p, x) < 0.05), int(state.step)
(True, 20)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from ._blend import lerp
from ._errors import SchemaError
from ._arith import align
from ._particle import Particle
from ._touch import touch

__all__ = ["SGD", "Adam", "SGDState", "AdamState"]


class SGDState(NamedTuple):
    """Momentum buffer (a particle of the species, or None without momentum)."""

    momentum: Particle | None


class AdamState(NamedTuple):
    """Step count (0-dim tensor) and first/second moments (particles of the species)."""

    step: torch.Tensor
    m: Particle
    v: Particle


def _check(p: object, grads: object, what: str) -> tuple[Particle, Particle]:
    if not isinstance(p, Particle) or not isinstance(grads, Particle):
        raise SchemaError(f"{what}: expected (particle, gradient particle), got "
                          f"({type(p).__name__}, {type(grads).__name__})")
    return align(p, grads, what)


@dataclasses.dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with optional momentum and weight decay."""

    lr: float = 1e-2
    momentum: float = 0.0
    weight_decay: float = 0.0

    def init(self, p: Particle) -> SGDState:
        return SGDState(touch(p).detach().zeros() if self.momentum else None)

    def step(self, p: Particle, grads: Particle, state: SGDState) -> tuple[Particle, SGDState]:
        p, g = _check(p, grads, "SGD.step")
        if self.weight_decay:
            g = g + self.weight_decay * p.detach()
        buf = state.momentum
        if self.momentum:
            buf = g if buf is None else self.momentum * touch(buf, fill="zeros") + g
            g = buf
        return p - self.lr * g, SGDState(buf)


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba), with decoupled weight decay when ``decoupled=True`` (AdamW)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def init(self, p: Particle) -> AdamState:
        z = touch(p).detach().zeros()
        return AdamState(torch.zeros(()), z, z)

    def step(self, p: Particle, grads: Particle, state: AdamState) -> tuple[Particle, AdamState]:
        p, g = _check(p, grads, "Adam.step")
        b1, b2 = self.betas
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p.detach()
        m = touch(state.m, fill="zeros")
        v = touch(state.v, fill="zeros")
        m = lerp(m, g, 1 - b1)  # b1 * m + (1 - b1) * g in one foreach, as torch.optim.Adam does
        v = lerp(v, g * g, 1 - b2)
        t = state.step + 1
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        update = m_hat / (v_hat ** 0.5 + self.eps)
        if self.weight_decay and self.decoupled:
            update = update + self.weight_decay * p.detach()
        return p - self.lr * update, AdamState(t, m, v)
