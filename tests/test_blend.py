"""nf.lerp: one foreach call that equals (1 - w) * a + w * b on the operational parameters."""

import pytest
import torch
from torch import nn

import nytorch_func as nf


def particle():
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    return nf.configure(nf.from_module(net), "2.bias", operational=False)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0, torch.tensor(0.7)], ids=["0", "0.3", "1", "tensor"])
def test_lerp_equals_operator_form(weight):
    a = particle()
    b = a.randn()
    mixed = nf.lerp(a, b, weight)
    reference = (1 - weight) * a + weight * b
    for x, y in zip(mixed.leaves, reference.leaves):
        torch.testing.assert_close(x, y)
    assert mixed["2.bias"] is a["2.bias"]  # non-operational: from start
    assert mixed["1.running_mean"] is a["1.running_mean"]  # buffers: from start


def test_lerp_per_member_weights_and_gradient_through_weight():
    a = particle().detach()
    pop = nf.population(a, 3)
    w = torch.tensor([0.0, 0.5, 1.0])
    mixed = nf.lerp(pop, a, w)
    torch.testing.assert_close(mixed["0.weight"][0], pop["0.weight"][0])
    torch.testing.assert_close(mixed["0.weight"][2], a["0.weight"])
    weight = torch.tensor(0.25, requires_grad=True)
    nf.lerp(a, a.randn(), weight)["0.weight"].sum().backward()
    assert weight.grad is not None


def test_lerp_touches_and_refuses_other_species():
    a = particle()
    old = a.randn()
    grown = nf.add_param(a, "gain", torch.ones(1))
    assert nf.lerp(old, grown, 0.5).version == grown.version == 2  # configure made v1
    with pytest.raises(nf.SpeciesMismatchError):
        nf.lerp(a, particle(), 0.5)
    with pytest.raises(nf.ArgumentTypeError, match="weight must be"):
        nf.lerp(a, a, "half")
    with pytest.raises(nf.ArgumentTypeError, match="expected a Particle"):
        nf.lerp(a, {"w": 1}, 0.5)


def test_lerp_single_start_with_population_end_broadcasts_carried_leaves():
    a = particle().detach()  # "2.bias" is non-operational: carried from start
    pop = nf.population(a, 3)
    mixed = nf.lerp(a, pop, torch.tensor([0.0, 0.5, 1.0]))
    assert all(t.shape[:1] == (3,) for t in mixed.leaves) and mixed.batch_shape == (3,)
    torch.testing.assert_close(mixed["2.bias"], a["2.bias"].expand(3, 2))
    torch.testing.assert_close(mixed["0.weight"][2], pop["0.weight"][2])
    with pytest.raises(nf.SchemaError, match="per-member weights"):
        nf.lerp(a, pop, torch.ones(4))


def test_lerp_touches_a_stale_pair_first():
    a = particle()
    b = a.randn()
    nf.add_param(a.clone(), "gain", torch.ones(1))
    assert nf.lerp(a, b, 0.5).schema is a.species.head
