"""A state machine interleaving events, operations, touches and stacks over one species.

Each particle handle is paired with a :class:`_model.Model` of what it should hold at the head.
Events update every model eagerly (particles are immutable and events keep snapshots, so the
eager model is what a lazy touch must produce); operations combine models; the invariant checks
every handle (and every member of every population) against its model after each step.
"""

from __future__ import annotations

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import nytorch_func as nf
import nytorch_func.testing as nft

from _model import OPS, UNARY, Model


class SpeciesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.handles: list[tuple[nf.Particle, Model]] = []
        self.pops: list[tuple[nf.Particle, list[Model]]] = []

    @rule(data=st.data())
    @precondition(lambda self: not self.handles)
    def create(self, data):
        p = data.draw(nft.particles(), label="first particle")
        self.handles.append((p, Model.of(p)))

    @rule(i=st.integers(0, 7), seed=st.integers(0, 99))
    @precondition(lambda self: self.handles)
    def derive(self, i, seed):
        p, _ = self.handles[i % len(self.handles)]
        q = nft.random_particle(nf.touch(p), seed)
        self.handles.append((q, Model.of(q)))

    @rule(i=st.integers(0, 7), data=st.data())
    @precondition(lambda self: self.handles)
    def event(self, i, data):
        i %= len(self.handles)
        p, mp = self.handles[i]
        edit = data.draw(nft.events(p, allow_shared=not self.pops), label="edit")
        q = edit.apply(p)
        self.handles = [(q, mp.event(edit)) if j == i else (h, m.event(edit, initiator=mp))
                        for j, (h, m) in enumerate(self.handles)]
        self.pops = [(pop, [m.event(edit, initiator=mp) for m in ms]) for pop, ms in self.pops]

    @rule(i=st.integers(0, 7), j=st.integers(0, 7), op=st.sampled_from(sorted(OPS)))
    @precondition(lambda self: self.handles)
    def binary(self, i, j, op):
        (a, ma), (b, mb) = self.handles[i % len(self.handles)], self.handles[j % len(self.handles)]
        self.handles.append((OPS[op](a, b), ma.binary(op, mb)))

    @rule(i=st.integers(0, 7), op=st.sampled_from(sorted(UNARY)), s=st.sampled_from([0.5, -2]))
    @precondition(lambda self: self.handles)
    def unary_and_scalar(self, i, op, s):
        a, ma = self.handles[i % len(self.handles)]
        self.handles.append((UNARY[op](a), ma.unary(op)))
        self.handles.append((a * s, ma.binary("*", s)))

    @rule(i=st.integers(0, 7))
    @precondition(lambda self: self.handles)
    def touch(self, i):
        i %= len(self.handles)
        p, m = self.handles[i]
        self.handles[i] = (nf.touch(p), m)

    @rule(idx=st.lists(st.integers(0, 7), min_size=1, max_size=3))
    @precondition(lambda self: self.handles)
    def stack(self, idx):
        chosen = [self.handles[k % len(self.handles)] for k in idx]
        pop = nf.stack([p for p, _ in chosen])
        if not pop.leaves:
            return
        self.pops.append((pop, [m.copy() for _, m in chosen]))

    @invariant()
    def everything_matches_the_model(self):
        for p, m in self.handles:
            m.check(p)
        for pop, models in self.pops:
            members = nf.unstack(nf.touch(pop))
            assert len(members) == len(models)
            for member, m in zip(members, models):
                m.check(member)

    def teardown(self):
        species = {id(p.species) for p, _ in self.handles}
        assert len(species) <= 1, "every handle must stay in one species"


SpeciesMachine.TestCase.settings = settings(SpeciesMachine.TestCase.settings,
                                            stateful_step_count=12)
TestSpecies = SpeciesMachine.TestCase
