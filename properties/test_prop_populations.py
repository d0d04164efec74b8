"""Properties of populations: vmap over a stack, stack/unstack, population touch."""

from __future__ import annotations

import optree
import torch
from hypothesis import given, strategies as st

import nytorch_func as nf
import nytorch_func.testing as nft

from _model import apply_chain


@given(nft.runnable_modules(), st.integers(1, 3), st.booleans(), _seed := st.integers(0, 99))
def test_vmap_apply_equals_memberwise_apply(pair, n, training, seed):
    module, x = pair
    base = nf.from_module(module).train(training)
    members = [nft.random_particle(base, seed + i) for i in range(n)]
    out = torch.func.vmap(nf.apply, in_dims=(0, None), randomness="same")(nf.stack(members), x)
    want = torch.stack([nf.apply(m, x) for m in members])
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


@given(nft.populations())
def test_vmap_of_particle_function_equals_memberwise(pop):
    if not pop.leaves:
        return
    f = lambda p: optree.tree_map(lambda t: 2 * t - t * t + 1, p)  # noqa: E731
    got = torch.func.vmap(f)(pop)
    want = nf.stack([f(m) for m in nf.unstack(pop)])
    nft.assert_same_values(got, want, rtol=1e-5, atol=1e-6)
    g = lambda p: 2 * p - p * p + 1  # noqa: E731  (particle arithmetic itself, under vmap)
    nft.assert_same_values(torch.func.vmap(g)(pop), nf.stack([g(m) for m in nf.unstack(pop)]),
                           rtol=1e-5, atol=1e-6)


@given(nft.populations())
def test_stack_unstack_round_trip(pop):
    if not pop.leaves:
        return
    members = nf.unstack(pop)
    assert len(members) == len(pop)
    nft.assert_same_values(nf.stack(members), pop)
    for i, m in enumerate(members):
        nft.assert_same_values(pop[i], m)
        assert nf.unstack(nf.stack([m]))[0].schema is m.schema


@given(st.data())
def test_population_touch_equals_memberwise_touch(data):
    p = data.draw(nft.particles(), label="p")
    pop = data.draw(nft.populations(p), label="pop")
    chain = data.draw(nft.event_chains(p, 4, allow_shared=True), label="chain")
    q, steps = apply_chain(p, chain)
    touched = nf.touch(pop)
    assert touched.schema is q.schema and touched.batch_shape == pop.batch_shape
    nft.assert_same_values(touched, nf.stack([nf.touch(m) for m in nf.unstack(pop)]))
