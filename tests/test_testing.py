"""Unit tests of nytorch_func.testing: the strategies produce what they promise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import find, given, settings, strategies as st

import nytorch_func as nf
import nytorch_func.testing as nft


def test_all_is_exactly_the_public_names():
    assert set(nft.__all__) == {
        "modules", "runnable_modules", "particles", "populations", "events", "event_chains",
        "invalid_events", "Recipe", "Edit", "EVENT_KINDS", "build_module", "random_particle",
        "random_population", "tensors_of", "assert_same_values"}
    assert all(hasattr(nft, name) for name in nft.__all__)


@given(nft.modules())
def test_modules_are_small_real_modules(m):
    assert isinstance(m, torch.nn.Module)
    assert sum(t.numel() for t in m.parameters()) <= 200
    nf.from_module(m)  # every drawn module converts


def test_modules_shrink_to_one_small_layer():
    m = find(nft.modules(), lambda m: any(True for _ in m.parameters()),
             settings=settings(database=None, max_examples=200, derandomize=True))
    assert not list(m.children()), f"did not shrink to one layer: {m}"
    assert sum(t.numel() for t in m.parameters()) <= 2, f"did not shrink to a small layer: {m}"


def test_modules_can_be_tied_and_carry_buffers():
    tied = find(nft.modules(), lambda m: len(list(m.named_parameters(remove_duplicate=False)))
                > len(list(m.parameters())), settings=settings(database=None, max_examples=500))
    assert nf.from_module(tied).schema.params[0].paths  # converts with tied aliases
    extra = find(nft.modules(), lambda m: any("extra_buf" in n for n, _ in m.named_buffers()),
                 settings=settings(database=None, max_examples=500))
    assert any("extra_buf" in k for k in nf.from_module(extra).buffers)


@given(nft.particles())
def test_particles_are_random_and_reproducible(p):
    assert nft.tensors_of(p)
    nft.assert_same_values(nft.random_particle(p, 3), nft.random_particle(p, 3))


@given(st.data())
def test_events_are_valid_and_readable(data):
    p = data.draw(nft.particles())
    edit = data.draw(nft.events(p))
    assert repr(edit).startswith(edit.kind + "(")
    q = edit.apply(p)
    assert q.version == p.version + 1


@given(st.data())
def test_event_chains_apply_in_order(data):
    p = data.draw(nft.particles())
    chain = data.draw(nft.event_chains(p, 3, min_size=1))
    for edit in chain:
        p = edit.apply(p)
    assert p.version == len(chain)


@given(st.data())
def test_invalid_events_all_fail(data):
    p = data.draw(nft.particles())
    edit = data.draw(nft.invalid_events(p))
    assert edit.invalid
    with pytest.raises(nf.NytorchFuncError):
        edit.apply(p)


def test_every_event_kind_is_drawn():
    p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    for kind in nft.EVENT_KINDS:
        edit = find(nft.events(p), lambda e: e.kind == kind,
                    settings=settings(database=None, max_examples=300))
        assert edit.kind == kind


def test_populations_have_members():
    pop = find(nft.populations(min_size=2, max_size=3), lambda pop: True,
               settings=settings(database=None))
    assert len(pop) == 2


def test_wrong_arguments_are_typed_errors():
    with pytest.raises(nf.NytorchFuncError):
        nft.events(3)
    with pytest.raises(nf.NytorchFuncError):
        nft.events(nf.from_module(torch.nn.Linear(1, 1)), kinds=("explode",))
    with pytest.raises(nf.NytorchFuncError):
        nft.event_chains(nf.from_module(torch.nn.Linear(1, 1)), n=1, min_size=2)
    with pytest.raises(AssertionError, match="differ at 'weight'"):
        p = nf.from_module(torch.nn.Linear(1, 1))
        nft.assert_same_values(p, p + 1)
