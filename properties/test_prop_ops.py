"""Properties of particle arithmetic: structure commutes with every operator, configs honoured."""

from __future__ import annotations

import operator

import torch
from hypothesis import given, strategies as st

import nytorch_func as nf
import nytorch_func.testing as nft

from _model import OPS, UNARY, Model, apply_chain


_scalars = st.sampled_from([2, 0.5, -1.5, 3.0]) | st.builds(torch.tensor, st.sampled_from([2.0, -0.5]))


@given(st.data())
def test_binary_ops_commute_with_touch(data):
    """touch(a op b) == touch(a) op touch(b) for particles at different versions."""
    p = data.draw(nft.particles(), label="p")
    a = data.draw(nft.particles(p), label="a")
    chain = data.draw(nft.event_chains(p, 3, min_size=1), label="chain")
    q, steps = apply_chain(p, chain)
    k = data.draw(st.integers(0, len(steps) - 1), label="b's version")
    b = nft.random_particle(steps[k], seed=11)  # b at an intermediate version, a at version 0
    ta, tb = nf.touch(a), nf.touch(b)
    for name, op in OPS.items():
        got = op(a, b)
        assert got.schema is q.schema, f"a {name} b is not at the head"
        nft.assert_same_values(nf.touch(got), op(ta, tb))
        Model.of(ta).binary(name, Model.of(tb)).check(got)


@given(st.data())
def test_scalar_and_unary_ops_commute_with_touch(data):
    p = data.draw(nft.particles(), label="p")
    a = data.draw(nft.particles(p), label="a")
    chain = data.draw(nft.event_chains(p, 3), label="chain")
    apply_chain(p, chain)
    s = data.draw(_scalars, label="scalar")
    ta = nf.touch(a)
    operand = a  # stale: the operation must touch it first
    for name, op in OPS.items():
        nft.assert_same_values(nf.touch(op(operand, s)), op(ta, s))
        nft.assert_same_values(nf.touch(op(s, operand)), op(s, ta))
        Model.of(ta).binary(name, s).check(op(operand, s))
        Model.of(ta).binary(name, s, reverse=True).check(op(s, operand))
    for name, op in UNARY.items():
        nft.assert_same_values(nf.touch(op(operand)), op(ta))
        Model.of(ta).unary(name).check(op(operand))
    for fn in (nf.Particle.clone, nf.Particle.detach):
        nft.assert_same_values(nf.touch(fn(operand)), ta)


@given(nft.particles(), st.data())
def test_ops_leave_operands_unchanged_and_refuse_other_species(p, data):
    q = nft.random_particle(p, seed=1)
    if not p.leaves:
        return
    before = [t.detach().clone() for t in p.leaves]
    for op in OPS.values():
        op(p, q)
    assert all(torch.equal(t.detach(), v) or torch.isnan(v).any() for t, v in zip(p.leaves, before))
    other = data.draw(nft.particles(), label="other species")
    for op in (operator.add, operator.mul):
        try:
            op(p, other)
        except nf.SpeciesMismatchError:
            pass
        else:
            raise AssertionError("an operation across species was not refused")
