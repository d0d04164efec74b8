"""The version manager's events (the seed chapter in the functional API) and their refusals."""

import copy

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import NytorchFuncError, ParamConfig, SchemaError

from helpers import (bn_net, example_input, mlp, nested_sequential, tied_model, unchanged,
                     values)


class Affine(nn.Module):
    """The seed chapter's ``Linear(w, b)``."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([float(w)]))
        self.bias = nn.Parameter(torch.tensor([float(b)]))

    def forward(self, x):
        return self.weight * x + self.bias


class WithHead(nn.Module):
    """A forward pass that uses an optional submodule (None-able, as set_none leaves it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return h if self.head is None else self.head(h)


# the seed chapter, step by step ---------------------------------------------------------------

def test_seed_delete_then_touch():
    net1 = nf.from_module(Affine(1, 2))
    net2 = net1.randn()
    before = net1.schema
    net1 = nf.del_param(net1, "weight")
    after = net1.schema
    assert before is not after and before.version == 0 and after.version == 1
    assert "weight" in net2.params and net2.schema is before  # the recipient waits
    assert not before.is_newest and after.is_newest
    assert before.next is after and before.event.describe() == "del_param weight"
    net2 = nf.touch(net2)
    assert "weight" not in net2.params and net2.schema is after


def test_seed_added_param_initiator_object_recipient_clone():
    net1 = nf.from_module(Affine(1, 2))
    net2 = net1.randn()
    added = nn.Parameter(torch.randn(1))
    net1 = nf.add_param(net1, "add_parameter", added)
    net2 = nf.touch(net2)
    assert net1["add_parameter"] is added
    assert net2["add_parameter"] is not added and torch.equal(net2["add_parameter"], added)
    assert net2["add_parameter"].requires_grad and net2["add_parameter"].is_leaf
    assert net1.config("add_parameter") == ParamConfig() == net2.config("add_parameter")


def test_seed_added_module_initiator_object_recipient_clone():
    net1 = nf.from_module(Affine(1, 2))
    net2 = net1.randn()
    add_linear = nn.Linear(3, 4)
    net1 = nf.add_module(net1, "add_linear", add_linear)
    net2 = nf.touch(net2)
    for name in ("weight", "bias"):
        mine, theirs = net1[f"add_linear.{name}"], net2[f"add_linear.{name}"]
        assert mine is getattr(add_linear, name)
        assert theirs is not mine and torch.equal(theirs, mine) and theirs.requires_grad
    assert nf.to_module(net2).add_linear is not add_linear
    assert type(nf.to_module(net2).add_linear) is nn.Linear


@pytest.mark.parametrize("state", [True, False])
def test_seed_added_buffer_same_object(state):
    net1 = nf.from_module(Affine(1, 2))
    net2 = net1.randn()
    add_tensor = torch.randn(3, 3)
    net1 = nf.add_buffer(net1, "add_tensor", add_tensor, state=state)
    net2 = nf.touch(net2)
    assert net1["add_tensor"] is add_tensor and net2["add_tensor"] is add_tensor
    assert ("add_tensor" in net1.schema.leaf_keys) is state
    assert nf.to_module(net2, copy=False).add_tensor is add_tensor or state


def test_schemas_per_event_and_touched_particles_share_them():
    p = nf.from_module(mlp())
    others = [p.randn() for _ in range(3)]
    seen = [p.schema]
    p = nf.add_param(p, "a", torch.ones(1))
    seen.append(p.schema)
    p = nf.add_buffer(p, "b", torch.ones(1))
    seen.append(p.schema)
    p = nf.del_param(p, "a")
    seen.append(p.schema)
    assert len({id(s) for s in seen}) == 4 and [s.version for s in seen] == [0, 1, 2, 3]
    assert [s.is_newest for s in seen] == [False, False, False, True]
    assert all(s == s.species.version(s.version) for s in seen)
    touched = [nf.touch(o) for o in others]
    assert all(t.schema is p.schema for t in touched)
    assert len(p.species) == 4 and p.species.head is p.schema
    assert all(o.schema is seen[0] for o in others)  # inputs unchanged


def test_snapshot_determinism():
    p = nf.from_module(mlp())
    q = p.randn()
    w = nn.Parameter(torch.zeros(2))
    lin = nn.Linear(2, 2)
    lin_w = lin.weight.detach().clone()
    p = nf.add_param(p, "w", w)
    p = nf.add_module(p, "lin", lin)
    with torch.no_grad():  # the initiator's own objects change afterwards ...
        w.add_(5)
        lin.weight.mul_(0)
    q1 = nf.touch(q)
    assert torch.equal(q1["w"], torch.zeros(2))  # ... recipients still get the snapshot
    assert torch.equal(q1["lin.weight"], lin_w)
    assert p["w"] is w and torch.equal(p["w"], torch.full((2,), 5.0))
    q2 = nf.touch(q)  # and touching again gives the same values, fresh objects
    assert torch.equal(q2["w"], q1["w"]) and q2["w"] is not q1["w"]


# every event kind -----------------------------------------------------------------------------

def test_set_none_param_and_forward():
    net = nn.Linear(3, 2)
    p = nf.from_module(net)
    q = p.randn()
    p2 = nf.set_none(p, "bias")
    assert list(p2.params) == ["weight"] and p2.schema.skeleton.bias is None
    assert p.schema.skeleton.bias is not None  # the old version's skeleton is untouched
    x = torch.randn(4, 3)
    assert torch.allclose(nf.apply(p2, x), x @ net.weight.T)
    q2 = nf.touch(q)
    assert torch.allclose(nf.apply(q2, x), x @ q["weight"].T)
    assert nf.to_module(q2).bias is None
    assert nf.history(p.species)[-1] == (0, "set_none bias")


def test_set_none_module_and_forward():
    p = nf.from_module(WithHead())
    q = p.randn()
    p2 = nf.set_none(p, "head")
    assert sorted(p2.params) == ["body.bias", "body.weight"]
    x = torch.randn(5, 3)
    assert nf.apply(p, x).shape == (5, 2) and nf.apply(p2, x).shape == (5, 3)
    assert nf.apply(nf.touch(q), x).shape == (5, 3)
    assert nf.to_module(p2).head is None


def test_add_after_set_none_refills_the_slot():
    """Regression: a None slot left by set_none used to count as taken, so no re-add."""
    p = nf.set_none(nf.from_module(nn.Linear(2, 1)), "bias")
    q = p.randn()
    b = nn.Parameter(torch.ones(1))
    p = nf.add_param(p, "bias", b)
    assert p["bias"] is b and torch.equal(nf.apply(p, torch.zeros(1, 2)), torch.ones(1, 1))
    assert torch.equal(nf.touch(q)["bias"], torch.ones(1))
    s = nf.set_none(nf.from_module(WithHead()), "head")
    s = nf.add_module(s, "head", nn.Linear(3, 4))
    assert nf.apply(s, torch.randn(2, 3)).shape == (2, 4)
    with pytest.raises(SchemaError, match="'head' already exists"):
        nf.add_module(s, "head", nn.Linear(3, 4))
    with pytest.raises(SchemaError, match="'bias' already exists"):
        nf.add_buffer(p, "bias", torch.ones(1))


def test_add_module_used_by_sequential_forward():
    p = nf.from_module(nn.Sequential(nn.Linear(4, 3), nn.Tanh()))
    q = p.randn()
    x = torch.randn(2, 4)
    assert nf.apply(p, x).shape == (2, 3)
    p = nf.add_module(p, "2", nn.Linear(3, 5))
    assert nf.apply(p, x).shape == (2, 5)
    q = nf.touch(q)
    assert nf.apply(q, x).shape == (2, 5)
    ref = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5))
    ref.load_state_dict(nf.to_module(q).state_dict())
    assert torch.allclose(nf.apply(q, x), ref(x))


def test_add_module_with_buffers_and_ids():
    p = nf.from_module(mlp())
    q = p.randn()
    bn = nn.BatchNorm1d(3)
    p = nf.add_module(p, "norm", bn)
    assert p["norm.running_mean"] is bn.running_mean
    q = nf.touch(q)
    assert q["norm.running_mean"] is not bn.running_mean
    assert torch.equal(q["norm.running_var"], bn.running_var)
    ids = nf.param_ids(q)
    assert ids["norm.weight"] == 4 and ids["norm.bias"] == 5
    assert q.schema.spec("norm.num_batches_tracked").kind == "buffer"


def test_del_param_del_buffer():
    p = nf.from_module(bn_net())
    q = p.randn()
    p = nf.del_buffer(p, "1.num_batches_tracked")
    p = nf.del_param(p, "3.bias")
    q = nf.touch(q)
    for r in (p, q):
        assert "1.num_batches_tracked" not in r.buffers and "3.bias" not in r.params
        assert not hasattr(r.schema.skeleton[1], "num_batches_tracked")
        assert "bias" not in dict(r.schema.skeleton[3].named_parameters())


def test_del_module_nested():
    p = nf.from_module(nested_sequential())
    q = p.randn()
    p = nf.del_module(p, "0.1")
    gone = {"0.1.0.weight", "0.1.0.bias"}
    assert not gone & set(p.params) and "0.0.weight" in p.params
    assert set(nf.touch(q).params) == set(p.params)
    ids = nf.param_ids(p)
    p = nf.del_module(p, "0")  # a Sequential child: the later ones move down, as del seq[0]
    assert list(p.params) == ["0.0.weight", "0.0.bias"]
    assert nf.param_ids(p) == {"0.0.weight": ids["1.0.weight"], "0.0.bias": ids["1.0.bias"]}
    assert nf.touch(q).schema is p.schema and list(nf.touch(q).params) == list(p.params)
    assert torch.equal(nf.touch(q)["0.0.weight"], q["1.0.weight"])
    assert p.schema.module_paths() == ["", "0", "0.0"]
    assert isinstance(nf.to_module(p)[0], nn.Sequential)


@pytest.mark.parametrize("alias", ["emb.weight", "out.weight"])
def test_tied_alias_deletion(alias):
    p = nf.from_module(tied_model())
    q = p.randn()
    keep = ({"emb.weight", "out.weight"} - {alias}).pop()
    p2 = nf.del_param(p, alias)
    q2 = nf.touch(q)
    for before, after in ((p, p2), (q, q2)):
        assert after[keep] is before["emb.weight"]  # the one leaf, under its remaining name
        assert alias not in after.params
    assert p2.schema.spec(keep).paths == (keep,) and nf.param_ids(p2)[keep] == 0
    assert len(p2.leaves) == len(p.leaves)
    p3 = nf.del_param(p2, keep)  # deleting the last alias removes the tensor
    assert len(p3.leaves) == len(p.leaves) - 1 and len(nf.touch(q).leaves) == len(p3.leaves)


def test_del_module_holding_one_tied_alias():
    p = nf.from_module(tied_model())
    p2 = nf.del_module(p, "out")
    assert p2.schema.spec("emb.weight").paths == ("emb.weight",)
    assert p2["emb.weight"] is p["emb.weight"]


def test_configure_transitions_both_ways():
    p = nf.from_module(mlp())
    q = p.randn()
    w0 = p["0.weight"]
    # operational -> not operational: still a per-particle leaf, carried by arithmetic
    p1 = nf.configure(p, "0.weight", operational=False)
    assert "0.weight" in p1.schema.leaf_keys and p1["0.weight"] is w0
    assert (p1 * 3)["0.weight"] is w0
    # clone -> shared: the initiator's value becomes the species' one tensor
    p2 = nf.configure(p1, "0.weight", clone=False)
    assert "0.weight" not in p2.schema.leaf_keys and torch.equal(p2["0.weight"], w0)
    q2 = nf.touch(q)
    assert q2["0.weight"] is p2["0.weight"] and not torch.equal(q["0.weight"], w0)
    # shared -> per-particle: every particle gets its own copy of the shared value
    p3 = nf.configure(p2, "0.weight", clone=True)
    q3 = nf.touch(q2)
    assert "0.weight" in p3.schema.leaf_keys
    assert p3["0.weight"] is not q3["0.weight"] and torch.equal(q3["0.weight"], w0)
    assert q3["0.weight"] is not p2["0.weight"]
    # not operational -> operational again: arithmetic computes it
    p4 = nf.configure(p3, "0.weight", operational=True)
    assert torch.equal((p4 * 2)["0.weight"], 2 * w0)
    assert [p4.config("0.weight").shared, p2.config("0.weight").shared] == [False, True]
    # shared -> operational directly
    p5 = nf.configure(nf.configure(p4, "2", operational=False, clone=False), "2", operational=True)
    assert "2.weight" in p5.schema.leaf_keys and nf.touch(q).schema is p5.schema


def test_configure_attrs_and_prefix_and_all():
    p = nf.from_module(nested_sequential())
    p = nf.configure(p, "0.1", lr=0.1)
    assert {k for k in p.params if p.config(k).get("lr") == 0.1} == {"0.1.0.weight", "0.1.0.bias"}
    p = nf.configure(p, "", operational=False)
    assert not any(p.config(k).operational for k in p.params)
    assert p.config("0.1.0.weight").lr == 0.1  # other settings kept
    assert p.schema.op_index == ()
    assert (p * 5)["0.0.weight"] is p["0.0.weight"]


def test_configure_buffer():
    p = nf.from_module(bn_net())
    q = p.randn()
    p2 = nf.configure_buffer(p, "1.running_mean", policy="keep")
    assert p2.schema.spec("1.running_mean").policy == "keep"
    assert p.schema.spec("1.running_mean").policy == "mean"  # the default
    assert p2.leaves == p.leaves and nf.touch(q).leaves == q.leaves  # only the schema moved
    assert "policy=keep" in p2.schema.describe()


def test_population_recipient_and_initiator():
    p = nf.from_module(mlp())
    pop = nf.population(p, 4)
    extra = torch.arange(3.0)
    p2 = nf.add_param(p, "extra", extra)
    pop2 = nf.touch(pop)
    assert pop2["extra"].shape == (4, 3) and torch.equal(pop2["extra"][2], extra)
    grown = nf.add_param(pop2, "more", torch.ones(2))  # a population as initiator
    assert grown["more"].shape == (4, 2) and nf.touch(p2).schema is grown.schema
    with unchanged(grown, p2):
        with pytest.raises(SchemaError, match="'0.weight'.*population"):
            nf.configure(grown, "0.weight", operational=False, clone=False)


# failing events change nothing ----------------------------------------------------------------

class NoCopy(nn.Linear):
    def __deepcopy__(self, memo):
        raise RuntimeError("cannot be copied")


FAILURES = {
    "del_param unknown": (lambda p: nf.del_param(p, "0.wieght"), "'0.wieght'"),
    "del_param buffer": (lambda p: nf.del_param(p, "1.running_mean"), "'1.running_mean'"),
    "del_param non-str": (lambda p: nf.del_param(p, 5), "got 5"),
    "del_buffer param": (lambda p: nf.del_buffer(p, "0.weight"), "'0.weight'"),
    "del_module unknown": (lambda p: nf.del_module(p, "7"), "'7'"),
    "del_module param": (lambda p: nf.del_module(p, "0.weight"), "'0.weight'"),
    "del_module empty": (lambda p: nf.del_module(p, ""), "got ''"),
    "set_none buffer": (lambda p: nf.set_none(p, "1.running_var"), "'1.running_var'"),
    "set_none unknown": (lambda p: nf.set_none(p, "9.bias"), "'9.bias'"),
    "add_param duplicate": (lambda p: nf.add_param(p, "0.weight", torch.ones(1)), "'0.weight'"),
    "add_param over buffer": (lambda p: nf.add_param(p, "1.running_mean", torch.ones(1)),
                              "'1.running_mean'"),
    "add_param missing parent": (lambda p: nf.add_param(p, "9.w", torch.ones(1)), "'9'"),
    "add_param parent is param": (lambda p: nf.add_param(p, "0.weight.x", torch.ones(1)),
                                  "'0.weight'"),
    "add_param bad path": (lambda p: nf.add_param(p, "a..b", torch.ones(1)), "'a..b'"),
    "add_param non-tensor": (lambda p: nf.add_param(p, "w", [1.0]), "'w'"),
    "add_param bad config": (lambda p: nf.add_param(p, "w", torch.ones(1), {"clone": False}),
                             "'w'"),
    "add_param hides attr": (lambda p: nf.add_param(p, "forward", torch.ones(1)), "'forward'"),
    "add_buffer duplicate": (lambda p: nf.add_buffer(p, "0.bias", torch.ones(1)), "'0.bias'"),
    "add_buffer non-tensor": (lambda p: nf.add_buffer(p, "b", 3.0), "'b'"),
    "add_buffer bad state": (lambda p: nf.add_buffer(p, "b", torch.ones(1), state="yes"), "'b'"),
    "add_module duplicate": (lambda p: nf.add_module(p, "1", nn.Tanh()), "'1'"),
    "add_module missing parent": (lambda p: nf.add_module(p, "x.y", nn.Tanh()), "'x'"),
    "add_module non-module": (lambda p: nf.add_module(p, "m", torch.ones(1)), "'m'"),
    "add_module uncopyable": (lambda p: nf.add_module(p, "m", NoCopy(2, 2)), "'m'"),
    "configure unknown": (lambda p: nf.configure(p, "0.wieght", operational=False), "'0.wieght'"),
    "configure bad bool": (lambda p: nf.configure(p, "0.weight", operational="no"), "'0.weight'"),
    "configure bad clone": (lambda p: nf.configure(p, "0.weight", clone=1), "'0.weight'"),
    "configure unhashable": (lambda p: nf.configure(p, "0.weight", tag=[1]), "'0.weight'"),
    "configure bad path": (lambda p: nf.configure(p, 3, operational=False), "got 3"),
    "configure_buffer policy": (lambda p: nf.configure_buffer(p, "1.running_mean", policy="x"),
                                "'1.running_mean'"),
    "configure_buffer param": (lambda p: nf.configure_buffer(p, "0.weight", policy="mean"),
                               "'0.weight'"),
}


# wrong argument types: ArgumentTypeError (a TypeError); every other failure is a SchemaError
TYPE_FAILURES = {"del_param non-str", "add_param non-tensor", "add_param bad config",
                 "add_buffer non-tensor", "add_buffer bad state", "add_module non-module",
                 "configure bad bool", "configure bad clone", "configure unhashable",
                 "configure bad path"}


@pytest.mark.parametrize("case", FAILURES)
def test_failing_event_changes_nothing(case):
    fn, names = FAILURES[case]
    p0 = nf.from_module(bn_net())
    old = p0.randn()  # another particle, left at version 0
    p = nf.add_buffer(p0, "extra", torch.ones(2))
    other = nf.touch(old).randn()
    stale = p0.clone()  # an initiator behind the head: the event touches it first
    for initiator in (p, stale):
        with unchanged(p, old, other, stale):
            error = nf.ArgumentTypeError if case in TYPE_FAILURES else SchemaError
            with pytest.raises(error, match=None if names is None else
                               names.replace(".", r"\.").replace("[", r"\[")) as info:
                fn(initiator)
        assert isinstance(info.value, NytorchFuncError)
        assert not str(info.value).startswith(("TypeError", "AttributeError"))
    assert len(p.species) == 2
    # and the species still works afterwards
    assert nf.add_param(p, "fine", torch.ones(1)).version == 2


def test_event_functions_refuse_non_particles():
    for fn, args in ((nf.del_param, ("w",)), (nf.add_param, ("w", torch.ones(1))),
                     (nf.configure, ("",))):
        with pytest.raises(NytorchFuncError, match="expected a Particle"):
            fn(nn.Linear(1, 1), *args)


def test_inputs_of_successful_events_are_unchanged():
    p = nf.from_module(bn_net())
    snap = {k: v.clone() for k, v in values(p).items()}
    schema, leaves = p.schema, p.leaves
    nf.add_module(nf.del_param(nf.set_none(p, "3.bias"), "0.bias"), "4", nn.Linear(2, 2))
    nf.configure(p, "0", operational=False, clone=False)
    assert p.schema is schema and p.leaves is leaves
    for k, v in values(p).items():
        assert torch.equal(v, snap[k]), k
    assert schema.skeleton[3].bias is not None and len(list(schema.skeleton.children())) == 4


def test_forward_at_every_version():
    net = bn_net()
    x = example_input("bn_net")
    p = nf.from_module(copy.deepcopy(net))
    old = p.randn()
    steps = [
        lambda r: nf.set_none(r, "3.bias"),
        lambda r: nf.add_param(r, "3.bias", nn.Parameter(torch.zeros(2))),
        lambda r: nf.add_buffer(r, "scale", torch.ones(1)),
        lambda r: nf.configure(r, "0", operational=False, clone=False),
        lambda r: nf.add_module(r, "4", nn.Linear(2, 3)),
        lambda r: nf.configure(r, "0", clone=True),
        lambda r: nf.del_module(r, "4"),
        lambda r: nf.del_buffer(r, "scale"),
    ]
    for step in steps:
        p = step(p)
        for r in (p, nf.touch(old)):
            out = nf.apply(r, x)
            assert torch.isfinite(out).all()
            assert torch.allclose(out, nf.to_module(r)(x), atol=1e-6)
    assert nf.apply(p, x).shape == (5, 2)


def test_concurrent_initiators_serialise():
    import threading

    p = nf.from_module(nn.Linear(2, 2))
    starts = [p.randn() for _ in range(4)]
    errors, finals = [], [None] * 4

    def work(i):
        q = starts[i]
        try:
            for j in range(20):
                q = nf.add_param(q, f"t{i}_{j}", torch.full((1,), float(j)))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finals[i] = q

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(p.species) == 81
    head = nf.touch(p)
    assert len(head.params) == 2 + 80 and [s.version for s in [head.schema]] == [80]
    for i, q in enumerate(finals):
        assert torch.equal(nf.touch(q)[f"t{i}_19"], torch.full((1,), 19.0))
    assert sorted(nf.param_ids(head).values()) == list(range(82))  # ids never collide


def test_tied_param_made_shared_stays_tied():
    p = nf.from_module(tied_model())
    q = p.randn()
    p2 = nf.configure(p, "out.weight", operational=False, clone=False)
    assert list(p2.schema.shared) == ["emb.weight"] and p2["out.weight"] is p2["emb.weight"]
    q2 = nf.touch(q)
    assert q2["emb.weight"] is p2["emb.weight"] and "emb.weight" not in q2.schema.leaf_keys
    m = nf.to_module(q2)
    assert m.out.weight is m.emb.weight is p2["emb.weight"]
    x = example_input("tied")
    assert torch.allclose(nf.apply(q2, x), m(x), atol=1e-6)


def test_add_module_with_tied_weights_inside():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2)))
    q = p.randn()
    lm = tied_model()
    p2 = nf.add_module(p, "lm", lm)
    q2 = nf.touch(q)
    assert p2.schema.spec("lm.out.weight").paths == ("lm.emb.weight", "lm.out.weight")
    assert p2["lm.out.weight"] is lm.emb.weight
    assert q2["lm.out.weight"] is q2["lm.emb.weight"] and q2["lm.emb.weight"] is not lm.emb.weight
    m = nf.to_module(q2)
    assert m.lm.out.weight is m.lm.emb.weight


def test_non_persistent_buffers():
    p = nf.add_buffer(nf.from_module(nn.Linear(2, 2)), "tmp", torch.ones(2), persistent=False)
    q = nf.add_buffer(p, "kept", torch.ones(1))
    assert list(nf.to_module(q).state_dict()) == ["weight", "bias", "kept"]
    assert list(q.buffers) == ["tmp", "kept"] and not q.schema.spec("tmp").persistent


def test_add_bias_to_linear_without_bias():
    p = nf.from_module(nn.Linear(2, 2, bias=False))
    p = nf.add_param(p, "bias", torch.ones(2))
    assert torch.equal(nf.apply(p, torch.zeros(1, 2)), torch.ones(1, 2))


def test_shared_to_per_particle_is_a_snapshot():
    """Regression: recipients copied the shared tensor when *touched*, so an in-place change
    of the old versions' shared value after the event changed what late touches got."""
    p = nf.from_module(nn.Linear(2, 2))
    q = p.randn()
    p2 = nf.configure(p, "weight", operational=False, clone=False)
    p3 = nf.configure(p2, "weight", clone=True)
    early = nf.touch(q)
    with torch.no_grad():
        p2["weight"].add_(10)  # the shared tensor of versions 1, still held by p2
    late = nf.touch(q)
    assert torch.equal(early["weight"], late["weight"])
    assert torch.equal(p3["weight"], late["weight"]) and late["weight"].requires_grad
    assert not torch.equal(p2["weight"], late["weight"])
