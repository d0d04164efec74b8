"""The small core hooks the NytoModule facade stands on, tested through the core API alone.

``new_species`` (ids in a given order, starting configs), the ``Batch`` event (several events as
one version, all or nothing), ``Tie`` (a second name for a parameter or submodule),
``AddModuleSharingBuffers`` (an added module's buffers reach recipients by reference), removing
a ``None`` slot, and the event builders of ``_edit`` that validate without committing.
"""

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func._bridge import new_species
from nytorch_func._edit import commit, module_addition, param_addition
from nytorch_func._batch import Batch
from nytorch_func._events import DelModule, DelParam
from nytorch_func._sharing import Tie


class _Net(nn.Module):
    def forward(self, x):
        return self.l(x) * self.w


def _net():
    m = _Net()
    m.l = nn.Linear(2, 2)
    m.bn = nn.BatchNorm1d(2)
    m.w = nn.Parameter(torch.ones(2))
    return m


def test_new_species_gives_ids_in_the_order_asked_and_starting_configs():
    m = _net()
    frozen = nf.ParamConfig(operational=False, clone=False)
    p = new_species(m, order=["w", "bn.bias"], configs={"l.bias": frozen})
    assert nf.param_ids(p) == {"l.weight": 2, "l.bias": 3, "bn.weight": 4, "bn.bias": 1, "w": 0}
    assert p.config("l.bias").shared and p.schema.shared["l.bias"] is m.l.bias
    assert "l.bias" not in p.schema.leaf_keys
    assert nf.param_ids(nf.from_module(_net())) == {"w": 0, "l.weight": 1, "l.bias": 2,
                                                    "bn.weight": 3, "bn.bias": 4}
    tied = nn.Module()
    tied.a, tied.b = nn.Linear(2, 2), nn.Linear(2, 2)
    tied.b.weight = tied.a.weight
    assert nf.param_ids(new_species(tied, order=["b.weight", "b.bias"])) == {
        "a.weight": 0, "b.weight": 0, "b.bias": 1, "a.bias": 2}


def test_batch_is_one_version_and_all_or_nothing(tmp_path):
    p = nf.from_module(_net())
    other = p.randn()
    new = nn.Parameter(torch.zeros(3))
    event, own = param_addition("w", new)
    q = commit(p, lambda _: (Batch((DelParam("w"), event)), own), "replace")
    assert q.version == 1 and q["w"] is new and nf.touch(other)["w"].shape == (3,)
    assert "del_param w; add_param w" in str(nf.history(p.species))
    # a failing step leaves the chain as it was, though the first step alone would apply
    bad, own = param_addition("bn", torch.ones(1))
    with pytest.raises(nf.SchemaError, match="already exists"):
        commit(q, lambda _: (Batch((DelParam("l.bias"), bad)), own), "replace")
    assert q.schema.is_newest and len(q.species) == 2
    path = tmp_path / "old.safetensors"  # an old version saves the chain, the batch included
    nf.save(path, other)
    loaded = nf.touch(nf.load(path))
    assert loaded.version == 1 and loaded["w"].shape == (3,)


def test_tie_gives_a_second_name_to_a_parameter_or_a_module():
    p = nf.from_module(_net())
    other = p.clone()
    q = commit(p, lambda _: (Tie("w2", "w"), {}), "tie")
    q = commit(q, lambda _: (Tie("l2", "l"), {}), "tie")
    assert q.schema.by_path["w2"] is q.schema.by_path["w"]
    assert q.schema.skeleton.l2 == q.schema.skeleton.l  # views of one module
    assert q.leaves is not p.leaves and len(q.leaves) == len(p.leaves)
    r = nf.touch(other)
    assert r["l2.weight"] is r["l.weight"] is other["l.weight"]  # the recipient's own tensor
    module = nf.to_module(r)  # (not nf.apply: functional_call mishandles aliased modules)
    assert module.l2 is module.l and module.w2 is module.w
    assert torch.equal(module(torch.ones(1, 2)), nf.to_module(other)(torch.ones(1, 2)))
    for path, target, message in [("l.l", "l", "inside itself"), ("x", "nothing", "no parameter"),
                                  ("w", "l.bias", "already exists"),
                                  ("b2", "bn.running_mean", "buffer")]:
        with pytest.raises(nf.SchemaError, match=message):
            commit(q, lambda _: (Tie(path, target), {}), "tie")


def test_an_added_module_can_share_its_buffers_with_recipients():
    p = nf.from_module(_net())
    other = p.clone()
    bn = nn.BatchNorm1d(2)
    event, own = module_addition("bn2", bn, share_buffers=True)
    q = commit(p, lambda _: (event, own), "add_module")
    r = nf.touch(other)
    assert q["bn2.running_mean"] is bn.running_mean is r["bn2.running_mean"]
    assert r["bn2.weight"] is not bn.weight and torch.equal(r["bn2.weight"], bn.weight)
    pop = nf.touch(nf.population(p, 3))
    assert pop["bn2.running_mean"].shape == (3, 2)
    # the default stays a copy for recipients (nf.add_module)
    q2 = nf.add_module(q, "bn3", nn.BatchNorm1d(2))
    assert nf.touch(other)["bn3.running_mean"] is not q2["bn3.running_mean"]


def test_a_none_slot_can_be_removed():
    p = nf.set_none(nf.set_none(nf.from_module(_net()), "l"), "w")
    other = p.clone()
    q = commit(p, lambda _: (DelModule("l"), {}), "del_module")
    q = commit(q, lambda _: (DelParam("w"), {}), "del_param")
    assert "l" not in q.schema.skeleton._modules and "w" not in q.schema.skeleton._parameters
    assert nf.touch(other).schema is q.schema
    with pytest.raises(nf.SchemaError, match="no submodule"):
        nf.del_module(q, "l")


def test_builders_validate_like_the_public_functions_and_commit_nothing():
    p = nf.from_module(_net())
    with pytest.raises(nf.SchemaError, match="meta device"):
        param_addition("x", nn.Parameter(torch.empty(2, device="meta")))
    with pytest.raises(nf.SchemaError, match="meta device"):
        module_addition("x", nn.Linear(2, 2, device="meta"))
    with pytest.raises(TypeError, match="setting 'x'"):
        param_addition("x", "not a tensor", what="setting 'x'")
    assert len(p.species) == 1
