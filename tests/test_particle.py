"""Particle: immutability, read-only views, pytree registration (optree and torch pytree)."""

import copy
import dataclasses
import pickle

import optree
import pytest
import torch
import torch.utils._pytree as torch_pytree
from torch import nn

import nytorch_func as nf
from nytorch_func import SchemaError

from helpers import bn_net, nested_sequential, tied_model


@pytest.fixture
def p():
    return nf.from_module(bn_net())


def test_frozen_attributes(p):
    for name in ("_schema", "_leaves", "weight", "training"):
        with pytest.raises(dataclasses.FrozenInstanceError, match="immutable"):
            setattr(p, name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p._leaves
    assert isinstance(p.leaves, tuple)


def test_views_are_read_only(p):
    with pytest.raises(TypeError):
        p.params["0.weight"] = torch.zeros(6, 4)
    with pytest.raises(TypeError):
        p.buffers["1.running_mean"] = torch.zeros(6)
    with pytest.raises(TypeError):
        del p.params["0.weight"]
    assert list(p.params) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert list(p.buffers) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_views_match_module_tensors():
    net = bn_net()
    p = nf.from_module(net)
    for path, t in net.named_parameters():
        assert p[path] is t and p.params[path] is t
    for path, t in net.named_buffers():
        assert p[path] is t and p.buffers[path] is t
    assert p.species is p.schema.species and p.version == 0 and p.batch_shape == torch.Size()
    assert p.numel() == sum(t.numel() for t in [*net.parameters(), *net.buffers()])


def test_getitem_unknown_path_suggests(p):
    with pytest.raises(SchemaError, match=r"'0\.weigth'.*did you mean '0\.weight'"):
        p["0.weigth"]


def test_len_of_single_particle_is_refused(p):
    with pytest.raises(TypeError, match="single particle"):
        len(p)
    assert bool(p) is True


def test_train_eval_are_new_particles(p):
    e = p.eval()
    assert e is not p and e.training is False and p.training is True
    assert e.leaves is p.leaves and e.schema is p.schema
    assert e.train().training is True


def test_config_and_param_ids():
    p = nf.from_module(tied_model())
    assert nf.param_ids(p) == {"emb.weight": 0, "out.weight": 0, "mid.weight": 1, "mid.bias": 2}
    assert p.config("out.weight") == nf.ParamConfig()
    with pytest.raises(SchemaError, match="no parameter at path 'emb'"):
        p.config("emb")
    with pytest.raises(nf.NytorchFuncError, match="expected a Particle"):
        nf.param_ids(nn.Linear(1, 1))


def test_param_ids_stable_across_versions():
    p = nf.from_module(nested_sequential())
    ids = nf.param_ids(p)
    q = nf.del_param(p, "0.0.bias")
    q = nf.add_param(q, "extra", nn.Parameter(torch.ones(2)))
    expected = {k: v for k, v in ids.items() if k != "0.0.bias"}
    expected["extra"] = max(ids.values()) + 1
    assert nf.param_ids(q) == expected


def test_no_pickle_and_copies(p):
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(p)
    assert copy.copy(p) is p
    d = copy.deepcopy(p)
    assert d.schema is p.schema
    for a, b in zip(d.leaves, p.leaves):
        assert a is not b and torch.equal(a, b)


def test_repr(p):
    assert repr(p).startswith(f"Particle(species={p.species.name!r}, version=0, params=6, buffers=3")
    pop = nf.population(p, 3)
    assert "batch_shape=(3,)" in repr(pop)


# pytrees ---------------------------------------------------------------------------------------

def test_optree_round_trip(p):
    leaves, spec = optree.tree_flatten(p)
    assert len(leaves) == len(p.leaves) and all(a is b for a, b in zip(leaves, p.leaves))
    back = optree.tree_unflatten(spec, leaves)
    assert isinstance(back, nf.Particle) and back.schema is p.schema
    assert all(a is b for a, b in zip(back.leaves, p.leaves))
    assert optree.tree_paths(p)[0] == ("0.weight",)
    doubled = optree.tree_map(lambda t: t * 2, p)
    assert doubled.schema is p.schema
    assert torch.equal(doubled["0.weight"], 2 * p["0.weight"])
    # a particle nested in other containers
    nested = {"a": [p, p.eval()], "b": 3}
    flat, spec2 = optree.tree_flatten(nested)
    assert len(flat) == 2 * len(p.leaves) + 1
    again = optree.tree_unflatten(spec2, flat)
    assert again["a"][1].training is False and again["a"][0].training is True


def test_torch_pytree_round_trip_with_paths(p):
    leaves, spec = torch_pytree.tree_flatten(p)
    back = torch_pytree.tree_unflatten(leaves, spec)
    assert back.schema is p.schema and all(a is b for a, b in zip(back.leaves, p.leaves))
    with_path, _ = torch_pytree.tree_flatten_with_path(p)
    names = [torch_pytree.keystr(k) for k, _ in with_path]
    assert names == [f"[{k!r}]" for k in p.schema.leaf_keys]
    assert names[0] == "['0.weight']"
    mapped = torch_pytree.tree_map(torch.zeros_like, p)
    assert mapped.schema is p.schema and not mapped["0.weight"].any()


def test_tied_paths_are_one_leaf():
    p = nf.from_module(tied_model())
    assert p.schema.leaf_keys == ("emb.weight", "mid.weight", "mid.bias")
    assert p["out.weight"] is p["emb.weight"]
    assert len(optree.tree_leaves(p)) == 3


def test_schema_identity_and_reading():
    p = nf.from_module(nested_sequential())
    s = p.schema
    q = nf.add_param(p, "extra", torch.ones(1))
    assert s == p.schema and s != q.schema and p.randn().schema == q.schema and hash(s) == hash(p.species.version(0))
    assert s != nf.from_module(nested_sequential()).schema  # same version, other species
    assert copy.deepcopy(s) is s and copy.copy(s) is s
    assert [x.key for x in s.specs_under("0.1")] == ["0.1.0.weight", "0.1.0.bias"]
    assert [x.key for x in s.specs_under("0.1.0.weight")] == ["0.1.0.weight"]
    assert s.specs_under("0.1.0.w") == []  # a prefix of a name is not a module
    assert len(s.specs_under("")) == 6
    assert isinstance(s.module_at("0.1.0"), nn.Linear) and s.module_at("9") is None
    assert s.module_at("") == s.skeleton  # read-only views of one module
    assert s.describe().splitlines()[1] == ("  param 0.0.weight [5x4 float32] id=0 "
                                            "ParamConfig(operational=True, clone=True)")
    assert repr(s) == f"Schema(species={p.species.name!r}, version=0, params=6, buffers=0)"
    assert s.event.describe().startswith("add_param extra") and s.next is q.schema
