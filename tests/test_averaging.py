"""Averages that do what users expect: buffers averaged, counters maxed, policies per module."""

import os

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import unchanged


def bn_model():
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2),
                         nn.BatchNorm1d(2))


def trained_population(n=4, steps=(1, 2, 3, 5)):
    """Members whose BatchNorm statistics differ (each saw its own data, a different number of
    batches)."""
    g = torch.Generator().manual_seed(0)
    members = []
    for i, p in enumerate(nf.population(bn_model(), n, generator=g)):
        for _ in range(steps[i]):
            _, p = nf.apply_with_state(p, torch.randn(16, 4, generator=g) * (i + 1) + i)
        members.append(p)
    return nf.stack(members)


def test_a_soup_averages_batchnorm_statistics_by_default():
    pop = trained_population()
    soup = nf.mean(pop)
    for key in ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var"):
        torch.testing.assert_close(soup[key], pop[key].mean(0))
    assert int(soup["1.num_batches_tracked"]) == 5  # the maximum, not member 0's 1
    # the soup runs like a module holding averaged weights and averaged statistics
    ref = nf.to_module(pop[0]).eval()
    sd = {k: (v.float().mean(0) if v.is_floating_point() else v.amax(0))
          for k, v in nf.state_dict(pop).items()}
    ref.load_state_dict(sd)
    x = torch.randn(8, 4)
    torch.testing.assert_close(nf.apply(soup.eval(), x), ref(x))
    weighted = nf.mean(pop, weights=[1.0, 1.0, 0.0, 0.0])
    assert int(weighted["1.num_batches_tracked"]) == 2  # members with weight 0 are not counted


def test_explicit_policies_still_work():
    pop = trained_population()
    pop = nf.configure_buffer(pop, "1.running_mean", policy="keep")
    pop = nf.configure_buffer(pop, "1.running_var", policy="reset", value=torch.ones(6))
    soup = nf.mean(pop)
    assert torch.equal(soup["1.running_mean"], pop["1.running_mean"][0])
    assert torch.equal(soup["1.running_var"], torch.ones(6))
    torch.testing.assert_close(soup["4.running_mean"], pop["4.running_mean"].mean(0))


def test_configure_buffer_takes_a_module_path():
    pop = trained_population()
    version = pop.version
    kept = nf.configure_buffer(pop, "1", policy="keep")
    assert kept.version == version + 1  # one event for the three buffers
    assert [kept.schema.spec(f"1.{b}").policy for b in
            ("running_mean", "running_var", "num_batches_tracked")] == ["keep"] * 3
    assert kept.schema.spec("4.running_mean").policy == "mean"
    assert "configure_buffer 1 (every buffer) policy=keep" in str(nf.history(kept.species))
    soup = nf.mean(kept)
    assert torch.equal(soup["1.running_var"], pop["1.running_var"][0])
    assert int(soup["1.num_batches_tracked"]) == 1
    reset = nf.configure_buffer(pop[2], "", policy="reset")  # every buffer, member's own value
    soup = nf.mean(nf.touch(pop))
    for key in pop.buffers:
        assert torch.equal(soup[key], pop[key][2]), key
    assert reset.schema.spec("4.num_batches_tracked").reset == 3


def test_configure_buffer_module_path_errors_change_nothing():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    with unchanged(p):
        with pytest.raises(nf.SchemaError, match="no buffers under module '0'"):
            nf.configure_buffer(p, "0", policy="keep")
        with pytest.raises(nf.SchemaError, match="a value is for one buffer"):
            nf.configure_buffer(p, "1", policy="reset", value=torch.ones(2))
        with pytest.raises(nf.SchemaError, match="policy"):
            nf.configure_buffer(p, "1", policy="median")
        with pytest.raises(nf.SchemaError, match="no buffer at path '2'"):
            nf.configure_buffer(p, "2", policy="keep")
        with pytest.raises(nf.ArgumentTypeError, match="path must be"):
            nf.configure_buffer(p, 1, policy="keep")


def test_module_policies_survive_a_checkpoint(tmp_path):
    p = nf.configure_buffer(nf.from_module(bn_model()), "1", policy="reset")
    path = os.path.join(tmp_path, "p.safetensors")
    nf.save(path, p)
    back = nf.load(path)
    assert back.schema.spec("1.running_var").policy == "reset"
    assert torch.equal(back.schema.spec("1.running_var").reset, torch.ones(6))
    assert back.schema.spec("4.running_var").policy == "mean"


def test_reset_of_a_population_without_members_needs_a_value():
    empty = nf.population(bn_model(), 3)[0:0]
    with unchanged(empty):
        for path in ("1.running_mean", "1", ""):
            with pytest.raises(nf.SchemaError, match="has no members; pass value="):
                nf.configure_buffer(empty, path, policy="reset")
    assert len(empty.species) == 1
    q = nf.configure_buffer(empty, "1.running_mean", policy="reset", value=torch.full((6,), 2.0))
    assert q.batch_shape == (0,) and torch.equal(q.schema.spec("1.running_mean").reset,
                                                 torch.full((6,), 2.0))
    # a shared buffer has its one value even without members
    shared = nf.add_buffer(nf.from_module(nn.Linear(2, 2)), "scale", torch.ones(2), state=False)
    none = nf.population(shared, 2)[0:0]
    r = nf.configure_buffer(none, "scale", policy="reset")
    assert torch.equal(r.schema.spec("scale").reset, torch.ones(2))
