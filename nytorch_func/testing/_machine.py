"""A hypothesis state machine over one species of your model, checked against a plain model."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import hypothesis.strategies as st
import torch
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn

import nytorch_func as nf

from ._events import draw_edit
from ._kinds import EVENT_KINDS, FORWARD_KINDS, resolve_kinds
from ._run import module_classes
from ._particles import assert_leaves_match_schema, particles, random_particle, seeds
from ._recipes import modules as random_modules
from ._reference import OPS, UNARY, Reference
from ._view import Forward, View

__all__ = ["stateful_machine"]

_any = st.integers(0, 7)


def stateful_machine(make_model: Callable[[], nn.Module] | None = None,
                     example_input: Any = None, *, kinds: Sequence[Any] | None = None,
                     modules: st.SearchStrategy[nn.Module] | None = None,
                     checkpoints: bool = True) -> type[RuleBasedStateMachine]:
    """A ``RuleBasedStateMachine`` class interleaving events, operations, touches,
    populations and checkpoints over one species of ``make_model()`` (a new random
    architecture per run when ``None``).

    Every particle handle is paired with a :class:`Reference` (a plain dict of tensors, updated
    eagerly by every event); after every step each handle, and each member of each population,
    must hold what its reference says, and every leaf must agree with its schema. With
    ``example_input``, events keep the forward pass running and the invariant runs it.
    ``kinds`` and ``modules`` as for :func:`events` (default kinds: :data:`FORWARD_KINDS` with
    an input, else :data:`EVENT_KINDS`); ``checkpoints`` adds a rule that saves and loads every
    handle.

    Run it with hypothesis' own tools, e.g. ``TestMyNet = nft.stateful_machine(MyNet, x).TestCase``:

    >>> import torch, nytorch_func.testing as nft
    >>> from hypothesis import settings
    >>> from hypothesis.stateful import run_state_machine_as_test
    >>> machine = nft.stateful_machine(lambda: torch.nn.Linear(2, 2), torch.randn(3, 2))
    >>> run_state_machine_as_test(machine, settings=settings(max_examples=3,
    ...                                                      stateful_step_count=5))
    """
    forward = None if example_input is None else Forward(example_input)
    chosen = resolve_kinds(kinds if kinds is not None else
                           (FORWARD_KINDS if forward is not None else EVENT_KINDS),
                           "stateful_machine")

    class SpeciesMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.handles: list[tuple[nf.Particle, Reference]] = []
            self.pops: list[tuple[nf.Particle, list[Reference]]] = []

        @initialize(data=st.data(), seed=seeds)
        def create(self, data: Any, seed: int) -> None:
            if make_model is None:  # enum/function attributes: see test_prop_checkpoint.py
                p = data.draw(particles(modules=random_modules(attributes=not checkpoints)),
                              label="first particle")
            else:
                p = random_particle(nf.from_module(make_model()), seed)
            self.handles.append((p, Reference.of(p)))

        def _view(self, p: nf.Particle, batched: bool) -> View:
            head = nf.touch(p)
            return View(head[0] if batched else head, batched, modules, forward)

        @rule(i=_any, seed=st.integers(0, 99))
        def derive(self, i: int, seed: int) -> None:
            p, _ = self.handles[i % len(self.handles)]
            q = random_particle(nf.touch(p), seed)
            self.handles.append((q, Reference.of(q)))

        def _broadcast(self, edit: Any, initiator: Reference, schemas: tuple) -> None:
            self.handles = [(h, m.event(edit, initiator=initiator, schemas=schemas))
                            for h, m in self.handles]
            self.pops = [(pop, [m.event(edit, initiator=initiator, schemas=schemas)
                                for m in ms]) for pop, ms in self.pops]

        @rule(i=_any, data=st.data())
        def event(self, i: int, data: Any) -> None:
            i %= len(self.handles)
            p, mp = self.handles[i]
            view = self._view(p, False)
            edit = data.draw(draw_edit(view, chosen), label="edit")
            q = edit.apply(p)
            self.handles[i] = (q, mp)
            self._broadcast(edit, mp, (view.schema, q.schema))

        @rule(i=_any, data=st.data())
        @precondition(lambda self: self.pops)
        def population_event(self, i: int, data: Any) -> None:
            i %= len(self.pops)
            pop, models = self.pops[i]
            view = self._view(pop, True)
            edit = data.draw(draw_edit(view, chosen), label="population edit")
            new = edit.apply(pop)  # the members are the initiator: each gets the snapshots
            first, schemas = models[0], (view.schema, new.schema)
            self.handles = [(h, m.event(edit, initiator=first, schemas=schemas))
                            for h, m in self.handles]
            self.pops = [(new, [m.event(edit, schemas=schemas) for m in ms]) if j == i else
                         (h, [m.event(edit, initiator=first, schemas=schemas) for m in ms])
                         for j, (h, ms) in enumerate(self.pops)]

        @rule(i=_any, j=_any, op=st.sampled_from(sorted(OPS)))
        def binary(self, i: int, j: int, op: str) -> None:
            (a, ma), (b, mb) = (self.handles[i % len(self.handles)],
                                self.handles[j % len(self.handles)])
            self.handles.append((OPS[op](a, b), ma.binary(op, mb)))

        @rule(i=_any, op=st.sampled_from(sorted(UNARY)), s=st.sampled_from([0.5, -2]))
        def unary_and_scalar(self, i: int, op: str, s: float) -> None:
            a, ma = self.handles[i % len(self.handles)]
            self.handles.append((UNARY[op](a), ma.unary(op)))
            self.handles.append((a * s, ma.binary("*", s)))

        @rule(i=_any, low=st.sampled_from([0.0, -1.0, 0.5]))
        @precondition(lambda self: self.pops)
        def scale_members(self, i: int, low: float) -> None:
            """A population times per-member float64 coefficients: each leaf keeps its dtype."""
            pop, models = self.pops[i % len(self.pops)]
            w = torch.linspace(low, 1.5, len(models), dtype=torch.float64)
            self.pops.append((pop * w, [m.binary("*", float(c)) for m, c in zip(models, w)]))

        @rule(i=_any)
        def touch(self, i: int) -> None:
            i %= len(self.handles)
            p, m = self.handles[i]
            self.handles[i] = (nf.touch(p), m)

        @rule(idx=st.lists(_any, min_size=1, max_size=3))
        def stack(self, idx: list[int]) -> None:
            chosen_ = [self.handles[k % len(self.handles)] for k in idx]
            pop = nf.stack([p for p, _ in chosen_])
            if pop.leaves:
                self.pops.append((pop, [m.copy() for _, m in chosen_]))

        @rule()
        @precondition(lambda self: checkpoints)
        def checkpoint(self) -> None:
            saved = {"handles": [p for p, _ in self.handles], "pops": [p for p, _ in self.pops]}
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "state.safetensors")
                nf.save(path, saved)
                back = nf.load(path, classes=module_classes([p for p, _ in self.handles]))
            for (p, m), q in zip(self.handles, back["handles"]):
                assert q.version == p.version, "a loaded handle is at another version"
                m.check(q)
            for (pop, models), q in zip(self.pops, back["pops"]):
                assert q.batch_shape == pop.batch_shape, "a loaded population lost its shape"
                for member, model in zip(nf.unstack(nf.touch(q)), models):
                    model.check(member)

        @invariant()
        def everything_matches_its_reference(self) -> None:
            for p, m in self.handles:
                assert_leaves_match_schema(p)
                m.check(p)
            for pop, models in self.pops:
                assert_leaves_match_schema(pop)
                touched = nf.touch(pop)
                assert_leaves_match_schema(touched)
                members = nf.unstack(touched)
                assert len(members) == len(models)
                for member, m in zip(members, models):
                    m.check(member)
            if forward is not None and self.handles:
                forward.run(nf.touch(self.handles[-1][0]))

        def teardown(self) -> None:
            species = {id(p.species) for p, _ in self.handles}
            assert len(species) <= 1, "every handle must stay in one species"

    name = getattr(make_model, "__name__", "Random") if make_model is not None else "Random"
    SpeciesMachine.__name__ = SpeciesMachine.__qualname__ = \
        f"{name if name.isidentifier() else 'Model'}Machine"
    return SpeciesMachine
