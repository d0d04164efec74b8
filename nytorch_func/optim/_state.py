"""Optimizer state: NamedTuples of particles, per-parameter step counts and nothing else.

State is a plain pytree, so ``nf.touch_tree``, ``optree``, ``torch.func.vmap`` (with
:func:`vmap_dims`) and ``nf.save`` see through it. Moments are particles of the species being
trained, so they follow events like the parameters do. Step counts are a dict from stable
parameter id (``nf.param_ids``) to a Python int, as torch.optim keeps one ``state["step"]`` per
parameter: a parameter added mid-training has no entry yet and starts at step 1, exactly like a
parameter torch.optim meets in a new ``add_param_group``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .._arith import align
from .._errors import ArgumentTypeError, SchemaError, SpeciesMismatchError
from .._particle import Particle
from .._touch import touch

__all__ = ["SGDState", "AdamState", "vmap_dims", "operands", "moments", "counts", "advance"]


class SGDState(NamedTuple):
    """SGD's state: ``step`` ``{parameter id: steps taken}`` and the momentum buffers (a particle
    of the species, or None without momentum)."""

    step: dict[int, int]
    momentum: Particle | None = None


class AdamState(NamedTuple):
    """Adam's state: ``step`` ``{parameter id: steps taken}``, first and second moments ``m``
    and ``v`` (particles of the species) and, with ``amsgrad``, the running maximum ``v_max``."""

    step: dict[int, int]
    m: Particle
    v: Particle
    v_max: Particle | None = None


def vmap_dims(state: Any) -> Any:
    """``in_dims`` / ``out_dims`` for ``state`` under ``torch.func.vmap`` over members.

    Particles (and tensors) are mapped over dim 0; step counts and ``None`` entries are not.

    >>> import torch, nytorch_func as nf
    >>> from nytorch_func import optim
    >>> state = optim.Adam().init(nf.population(torch.nn.Linear(2, 1), 3))
    >>> optim.vmap_dims(state)
    AdamState(step=None, m=0, v=0, v_max=None)
    """
    if isinstance(state, (SGDState, AdamState)):
        return type(state)(*(None if x is None or isinstance(x, dict) else vmap_dims(x)
                             for x in state))
    return optree.tree_map(lambda x: 0 if isinstance(x, (Particle, torch.Tensor)) else None,
                           state, is_leaf=lambda x: isinstance(x, Particle), none_is_leaf=True)


def operands(p: Any, grads: Any, what: str) -> tuple[Particle, Particle]:
    """``(p, grads)`` checked and brought to one (the newest) version of their species."""
    for name, x in (("p", p), ("grads", grads)):
        if not isinstance(x, Particle):
            raise ArgumentTypeError(f"{what}: {name} must be a Particle (the parameters and "
                                    f"their gradient particle, e.g. nf.grad(loss)(p, x)), got "
                                    f"{type(x).__name__}")
    if p._schema is not grads._schema or p._schema._next is not None:  # (compiles: no align)
        p, grads = align(p, grads, what)
    g = grads
    if not same_batch(p, g):
        raise SchemaError(f"{what}: the gradients have batch shape {tuple(g.batch_shape)}, the "
                          f"parameters {tuple(p.batch_shape)}; for a population compute per-member "
                          "gradients with torch.func.vmap(nf.grad(loss), in_dims=(0, ...))")
    return p, g


def moments(x: Any, p: Particle, name: str, what: str) -> Particle:
    """The state particle ``x`` at ``p``'s version; entries new since its own version start at
    zero (``fill="zeros"``), as torch.optim starts the state of a parameter it has not seen."""
    if not isinstance(x, Particle):
        raise ArgumentTypeError(f"{what}: state.{name} must be a Particle, got "
                                f"{type(x).__name__}; make the state with opt.init(p)")
    if x._schema.species is not p._schema.species:
        raise SpeciesMismatchError(f"{what}: state.{name} belongs to species "
                                   f"{x._schema.species.name!r}, the parameters to "
                                   f"{p._schema.species.name!r}; make the state with opt.init(p)")
    if x._schema is not p._schema:
        if x._schema.version > p._schema.version:
            raise SchemaError(f"{what}: state.{name} is at version {x._schema.version}, newer "
                              f"than the parameters ({p._schema.version}); step the newest "
                              "parameters")
        x = touch(x, p._schema, fill="zeros")
    if not same_batch(x, p):
        raise SchemaError(f"{what}: state.{name} has batch shape {tuple(x.batch_shape)}, the "
                          f"parameters {tuple(p.batch_shape)}; make the state with opt.init(p)")
    return x


def same_batch(a: Particle, b: Particle) -> bool:
    """Whether two particles of one schema have one batch shape (read off their first leaf)."""
    la, lb = a._leaves, b._leaves
    if la and lb:
        return la[0].shape == lb[0].shape
    return tuple(a.batch_shape) == tuple(b.batch_shape)


def counts(step: Any, what: str) -> dict[int, int]:
    """The step counts of a state, checked: ``{parameter id: int}``."""
    if torch.compiler.is_compiling():  # traced values are symbolic ints
        return step
    if not isinstance(step, dict) or not all(
            type(k) is int and type(v) is int and v >= 0 for k, v in step.items()):
        raise ArgumentTypeError(f"{what}: state.step must be a dict {{parameter id: steps "
                                f"taken}} of ints, got {step!r:.80}; make the state with "
                                "opt.init(p)")
    return step


def advance(step: dict[int, int], p: Particle, pids: list[int]) -> dict[int, int]:
    """The step counts after stepping the parameters ``pids``, in the schema's parameter order;
    ids no longer in ``p``'s version (deleted parameters) are dropped, parameters not stepped
    (non-operational) keep theirs."""
    stepped = set(pids)
    out = {}
    for s in p._schema.specs:
        pid = s.pid
        if pid in stepped:
            out[pid] = step.get(pid, 0) + 1
        elif s.kind == "param" and pid in step:
            out[pid] = step[pid]
    return out
