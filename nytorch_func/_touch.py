"""touch: the pure migration of a particle (or population) to a later version of its species."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree

from ._migrate import check_fill, migrate, resolve_target
from ._particle import Particle, expect_particle
from ._schema import Schema

__all__ = ["touch", "touch_tree"]


def touch(p: Particle, to: "None | int | Schema" = None, *, fill: "str | Callable" = "snapshot"
          ) -> Particle:
    """``p`` migrated to version ``to`` (default: the species head). Pure.

    Every event between the two versions is replayed with recipient semantics: added parameters
    and modules arrive as clones of the snapshot taken when the event was made (broadcast along
    the batch dimensions of a population), added buffers as the recorded tensor itself, deletions
    remove. Leaves that no event touched are the same tensor objects as in ``p``; ``p`` itself is
    unchanged. A particle already at ``to`` is returned as is.

    ``fill`` decides what entries that did not exist at ``p``'s version start as: ``"snapshot"``
    (the seed's recipient rule, above), ``"zeros"``, or a callable ``fill(value, spec) -> tensor``
    given the snapshot value, which must return the value's shape, dtype and device. Use
    ``"zeros"`` for training state that mirrors a particle (gradients, optimizer moments): a
    network grown mid-training keeps Adam's moments for the old parameters and starts the new
    ones at zero.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> q = nf.del_param(p.clone(), "bias")
    >>> sorted(p.params), sorted(nf.touch(p).params)
    (['bias', 'weight'], ['weight'])
    >>> nf.touch(p).leaves[0] is p.leaves[0]
    True
    >>> nf.touch(q, to=0)
    Traceback (most recent call last):
    ...
    nytorch_func._errors.VersionError: touch: cannot go back from version 1 to version 0; touch only moves forward (events are not undone)
    """
    if type(p) is not Particle:
        expect_particle(p, "touch", "for a NytoModule call module.touch()")
    if type(fill) is not str or fill != "snapshot":
        check_fill(fill, "touch")
    start = p._schema
    if to is None:  # the common case: to the head, or nothing to do
        if start._next is None:
            return p
        target = start.species.head
    else:
        target = resolve_target(start, to, "touch")
        if target is start:
            return p
    batch = tuple(p.batch_shape)
    leaves = migrate(start, p._leaves, batch, target, fill, "touch")
    return Particle(target, leaves, p._training, None if leaves else batch)


def touch_tree(tree: Any, to: "None | int | Schema" = None, *,
               fill: "str | Callable" = "snapshot") -> Any:
    """``touch`` every Particle inside any pytree (optimizer state, dicts, lists, tuples).

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> state = {"m": p.zeros(), "step": 3}
    >>> p = nf.add_param(p, "gain", torch.ones(1))
    >>> nf.touch_tree(state, fill="zeros")["m"]["gain"]
    tensor([0.])
    """
    check_fill(fill, "touch_tree")
    return optree.tree_map(lambda x: touch(x, to, fill=fill) if isinstance(x, Particle) else x,
                           tree, is_leaf=lambda x: isinstance(x, Particle), none_is_leaf=True)
