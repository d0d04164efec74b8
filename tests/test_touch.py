"""touch: targets, purity, composition, refusals, and a long chain of mixed events."""

import gc
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import NytorchFuncError, ParamConfig, VersionError

from helpers import assert_same_values, example_input, mlp, tied_model, unchanged


@pytest.fixture
def chain():
    """A particle at version 0 and the initiator after four events."""
    p = nf.from_module(mlp())
    old = p.randn(generator=torch.Generator().manual_seed(0))
    p = nf.add_param(p, "a", torch.ones(2))
    p = nf.del_param(p, "2.bias")
    p = nf.add_buffer(p, "b", torch.zeros(3))
    p = nf.add_module(p, "extra", nn.Linear(2, 2))
    return old, p


def test_targets_none_int_schema(chain):
    old, p = chain
    assert nf.touch(old).schema is p.schema
    assert nf.touch(old, to=None).schema is p.schema
    for v in range(5):
        by_int = nf.touch(old, to=v)
        assert by_int.version == v and by_int.schema is p.species.version(v)
        assert_same_values(by_int, nf.touch(old, to=by_int.schema))
    assert nf.touch(old, to=0) is old  # already there: the same particle


def test_idempotent_and_composable(chain):
    old, p = chain
    once = nf.touch(old)
    assert nf.touch(once) is once
    assert nf.touch(p) is p
    steps = nf.touch(nf.touch(nf.touch(old, to=1), to=3), to=4)
    assert_same_values(steps, once)
    two = nf.touch(nf.touch(old, to=2))
    assert_same_values(two, once)


def test_pure_and_unchanged_leaves_are_same_objects(chain):
    old, p = chain
    with unchanged(old, p):
        new = nf.touch(old)
    for key in ("0.weight", "0.bias", "2.weight"):
        assert new[key] is old[key]
    assert "2.bias" in old.params and "2.bias" not in new.params
    assert new.training == old.training and nf.touch(old.eval()).training is False


def test_refusals(chain):
    old, p = chain
    with unchanged(old, p):
        with pytest.raises(VersionError, match="cannot go back from version 4 to version 1"):
            nf.touch(p, to=1)
        with pytest.raises(VersionError, match="cannot go back"):
            nf.touch(p, to=old.schema)
        with pytest.raises(VersionError, match="has no version 5: versions made are 0..4"):
            nf.touch(old, to=5)
        with pytest.raises(VersionError, match="has no version -1"):
            nf.touch(old, to=-1)
        foreign = nf.from_module(mlp())
        with pytest.raises(VersionError, match="belongs to species"):
            nf.touch(old, to=foreign.schema)
        for bad in ("1", 1.0, True):
            with pytest.raises(nf.ArgumentTypeError, match="'to' must be None"):
                nf.touch(old, to=bad)
    with pytest.raises(NytorchFuncError, match="expected a Particle"):
        nf.touch(mlp())


def test_freed_version():
    p = nf.from_module(mlp())
    p = nf.add_param(p, "a", torch.ones(1))
    p = nf.add_param(p, "b", torch.ones(1))
    gc.collect()  # nothing references versions 0 and 1 any more
    assert [s.version for s in p.species.live_versions()] == [2]
    with pytest.raises(VersionError, match="version 0 of species .* was freed"):
        nf.touch(p, to=0)
    with pytest.raises(VersionError, match="freed"):
        p.species.version(1)
    assert "versions 0..1 freed" in str(nf.history(p.species))


def test_population_touch_equals_member_touch(chain):
    old, p = chain
    pop = nf.population(old, 3, generator=torch.Generator().manual_seed(1))
    touched = nf.touch(pop)
    assert touched.schema is p.schema and touched.batch_shape == (3,)
    for i, member in enumerate(nf.unstack(pop)):
        m = nf.touch(member)
        for k in p.schema.leaf_keys:
            assert torch.equal(touched[k][i], m[k]), k
        for k in p.schema.shared:
            assert touched[k] is m[k], k


def test_touch_via_operations_and_events(chain):
    old, p = chain
    mixed = old * 0.5
    assert mixed.version == 4  # every particle operation touches its operands first
    assert (-old).version == (old.randn()).version == old.clone().version == 4
    assert (old + p).version == 4 and (p - old).version == 4
    assert nf.add_param(old, "late", torch.ones(1)).version == 5
    assert p.version == 4 and nf.touch(p).version == 5 and not p.schema.is_newest


# a long chain of mixed events -------------------------------------------------------------------

def _random_events(rng: random.Random, n: int, snapshots: dict):
    """``n`` valid events on a TiedLM species, each a function of (particle) -> particle."""
    p = nf.from_module(tied_model())
    old = p.randn(generator=torch.Generator().manual_seed(0))
    others = [old.randn(generator=torch.Generator().manual_seed(1))]
    extras_p, extras_b, mods = [], [], []
    configurable = ["mid.weight", "emb.weight"]
    log = []
    for i in range(n):
        choices = ["add_param", "add_buffer", "add_module", "configure"]
        if extras_p:
            choices += ["del_param"]
        if extras_b:
            choices += ["del_buffer", "configure_buffer"]
        if mods:
            choices += ["del_module", "set_none", "add_param_in_module"]
        kind = rng.choice(choices)
        initiator = rng.choice([0, 1])
        q = nf.touch(p if initiator == 0 else others[0])
        if kind == "add_param":
            name = f"x{i}"
            cfg = rng.choice([None, ParamConfig(operational=False),
                              ParamConfig(operational=False, clone=False), ParamConfig(tag=i)])
            t = torch.randn(rng.randint(1, 3), generator=torch.Generator().manual_seed(i))
            q = nf.add_param(q, name, nn.Parameter(t), cfg)
            extras_p.append(name)
            snapshots[name] = t.clone()
            with torch.no_grad():
                t.add_(100)  # the initiator's object changes after the event
        elif kind == "add_param_in_module":
            mod = rng.choice(mods)
            name = f"{mod}.y{i}"
            q = nf.add_param(q, name, torch.full((2,), float(i)))
            extras_p.append(name)
        elif kind == "del_param":
            q = nf.del_param(q, extras_p.pop(rng.randrange(len(extras_p))))
        elif kind == "add_buffer":
            name = f"b{i}"
            q = nf.add_buffer(q, name, torch.full((2,), float(i)), state=rng.random() < 0.7)
            extras_b.append(name)
        elif kind == "del_buffer":
            q = nf.del_buffer(q, extras_b.pop(rng.randrange(len(extras_b))))
        elif kind == "configure_buffer":
            q = nf.configure_buffer(q, rng.choice(extras_b), policy=rng.choice(["keep", "mean"]))
        elif kind == "add_module":
            name = f"m{i}"
            q = nf.add_module(q, name, rng.choice([nn.Linear(2, 2), nn.BatchNorm1d(2)]))
            mods.append(name)
        elif kind == "del_module":
            mod = mods.pop(rng.randrange(len(mods)))
            q = nf.del_module(q, mod)
            extras_p = [x for x in extras_p if not x.startswith(mod + ".")]
        elif kind == "set_none":
            mod = mods.pop(rng.randrange(len(mods)))
            q = nf.set_none(q, mod)
            extras_p = [x for x in extras_p if not x.startswith(mod + ".")]
        elif kind == "configure":
            target = rng.choice(configurable + extras_p)
            snapshots.pop(target, None)  # its value may now come from the initiator
            shared = q.config(target).shared
            if shared or rng.random() < 0.5:
                q = nf.configure(q, target, clone=True, operational=rng.random() < 0.5)
            else:
                q = nf.configure(q, target, operational=False, clone=rng.random() < 0.5, k=i)
        log.append(kind)
        if initiator == 0:
            p = q
        else:
            others[0] = q
        yield kind, p, old


def test_long_chain_touch_once_equals_touch_every_event():
    rng = random.Random(1234)
    stepwise = None
    kinds = set()
    n = 0
    snapshots, checked = {}, set()
    for kind, p, old in _random_events(rng, 120, snapshots):
        stepwise = nf.touch(old if stepwise is None else stepwise)
        assert stepwise.schema is p.species.head
        # added params reach recipients as the snapshot, though the initiator's object moved on
        for k in snapshots.keys() & set(stepwise.params):
            assert torch.equal(stepwise[k], snapshots[k]), k
            checked.add(k)
        kinds.add(kind)
        n += 1
    assert n >= 100 and len(kinds) >= 9, kinds
    once = nf.touch(old)
    assert len(p.species) == 121 and once.version == 120
    assert_same_values(once, stepwise)
    assert once["mid.bias"] is old["mid.bias"]  # never touched by any event
    assert len(checked) >= 5
    # the forward pass works at the end, for every particle
    x = example_input("tied")
    for r in (once, nf.touch(p)):
        assert torch.allclose(nf.apply(r, x), nf.to_module(r)(x), atol=1e-6)
    # populations migrate the same way in one batched pass
    pop = nf.stack([old, old.clone()])
    pop_once = nf.touch(pop)
    for k in once.schema.leaf_keys:
        assert torch.equal(pop_once[k][0], once[k]), k


@settings(max_examples=10, deadline=None)
@given(rng=st.randoms(use_true_random=False), n=st.integers(1, 40))
def test_any_event_sequence_touch_once_equals_stepwise(rng, n):
    stepwise = None
    snapshots = {}
    for _, p, old in _random_events(rng, n, snapshots):
        stepwise = nf.touch(old if stepwise is None else stepwise)
    once = nf.touch(old)
    assert once.version == n
    assert_same_values(once, stepwise)
    assert_same_values(nf.touch(nf.touch(old, to=n // 2)), once)
