"""Inserting into and deleting from Sequentials and ModuleLists that have named children.

Regression: ``insert_module``/``del_module`` renumbered every child of the skeleton to ``"0"``,
``"1"``, ... while the specs kept ``"fc1.weight"`` or ``"head.weight"``, so the committed
version could not run (found by the adversarial pass of 2026-12-02). Named children now keep
their names; numbered ones are keyed by their place, as torch renumbers them.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import nytorch_func as nf

torch.manual_seed(0)
X = torch.randn(5, 3, dtype=torch.float64)


def named() -> nn.Sequential:
    return nn.Sequential(OrderedDict([("fc1", nn.Linear(3, 4)), ("act", nn.ReLU()),
                                      ("fc2", nn.Linear(4, 2))])).double()


def mixed() -> nn.Sequential:
    """``["0", "1", "head", "3"]``: numbered children around one added by name."""
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    m.add_module("head", nn.Linear(4, 2))
    m.append(nn.Tanh())
    return m.double()


def test_insert_into_a_named_sequential_keeps_names_ids_and_the_function():
    p = nf.from_module(named())
    q = nf.insert_module(p, "", 1, nn.Identity())
    assert list(nf.to_module(q)._modules) == ["fc1", "1", "act", "fc2"]
    assert nf.param_ids(q) == nf.param_ids(p)
    assert torch.equal(nf.apply(q, X), nf.apply(p, X))
    assert torch.equal(nf.to_module(q)(X), nf.apply(p, X))
    q2 = nf.insert_module(q, "", 1, nn.Identity())  # the numbered child moves, names stay
    assert list(nf.to_module(q2)._modules) == ["fc1", "1", "2", "act", "fc2"]


def test_deepen_a_named_sequential_after_a_named_child():
    p = nf.from_module(named())
    q = nf.deepen(p, "act", activation=nn.ReLU)
    assert list(nf.to_module(q)._modules) == ["fc1", "act", "2", "3", "fc2"]
    assert torch.allclose(nf.apply(q, X), nf.apply(p, X), atol=1e-12, rtol=0)


def test_del_numbered_child_before_a_named_one_matches_torch():
    m = mixed()
    p = nf.from_module(m)
    q = nf.del_module(p, "1")
    assert list(nf.to_module(q)._modules) == ["0", "head", "2"]
    want = m[3](m[2](m[0](X)))  # torch's del m[1]: the rest in order
    assert torch.equal(nf.apply(q, X), want)
    assert torch.equal(nf.to_module(q)(X), want)
    assert nf.param_ids(q)["head.weight"] == nf.param_ids(p)["head.weight"]


def test_deleting_a_named_child_renumbers_the_numbered_ones_after_it():
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    ml.add_module("x", nn.Linear(2, 2))
    ml.append(nn.Linear(2, 2))  # key "4"
    p = nf.from_module(ml)
    q = nf.del_module(p, "x")
    back = nf.to_module(q)
    assert list(back._modules) == ["0", "1", "2", "3"]
    assert torch.equal(back[3].weight, p["4.weight"])  # ModuleList indexes by key
    assert nf.param_ids(q)["3.weight"] == nf.param_ids(p)["4.weight"]


@pytest.mark.parametrize("edit", [
    lambda p: nf.insert_module(p, "", 2, nn.Linear(4, 4).double()),
    lambda p: nf.del_module(p, "1"),
    lambda p: nf.del_module(p, "head"),
])
def test_stale_particles_and_populations_follow_with_their_own_values(edit, tmp_path):
    p = nf.from_module(mixed())
    pop = nf.population(p, 3, init="randn", generator=torch.Generator().manual_seed(1))
    q = edit(p)
    moved = nf.touch(pop)
    assert moved.version == q.version and moved.batch_shape == (3,)
    for i in range(3):
        member = nf.touch(pop[i])
        for key in member.params:
            assert torch.equal(moved[key][i], member[key])
            pid = nf.param_ids(member)[key]
            old = next((k for k, v in nf.param_ids(pop[i]).items() if v == pid), None)
            if old is not None:  # an old parameter keeps this member's own values
                assert torch.equal(member[key], pop[i][old])
    nf.save(tmp_path / "grown", moved)
    back = nf.load(tmp_path / "grown", species=p.species)
    assert all(torch.equal(a, b) for a, b in zip(back.leaves, moved.leaves))
