"""Invalid events raise a typed error and change nothing: chain, initiator, other particles."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import nytorch_func as nf
import nytorch_func.testing as nft

from _model import apply_chain


@given(st.data())
def test_invalid_events_change_nothing(data):
    p = data.draw(nft.particles(), label="p")
    r = nft.random_particle(p, seed=5)
    chain = data.draw(nft.event_chains(p, 2), label="chain")
    p, _ = apply_chain(p, chain)
    target = data.draw(st.sampled_from(["particle", "population"]), label="target")
    if target == "population":
        p = nf.stack([p, nft.random_particle(p, seed=6)])
    edit = data.draw(nft.invalid_events(p), label="invalid edit")
    species = p.species
    n, head = len(species), species.head
    ids, values = [id(t) for t in p.leaves], [t.detach().clone() for t in p.leaves]
    r_before = nf.touch(r)
    with pytest.raises(nf.NytorchFuncError):
        edit.apply(p)
    assert len(species) == n and species.head is head and head.is_newest
    assert [id(t) for t in p.leaves] == ids
    assert all(torch.equal(t.detach(), v) for t, v in zip(p.leaves, values))
    nft.assert_same_values(nf.touch(r), r_before)
