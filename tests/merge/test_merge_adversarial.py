"""Trying to break the merges: tied weights, LSTM/Embedding models, shared parameters, mixed
dtypes, non-contiguous inputs, checkpoints, reference cycles, long loops."""

import gc
import sys

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import merge

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
from helpers import BUILDERS as MODELS, example_input  # noqa: E402

METHODS = {
    "linear": lambda b, ms: merge.linear(ms, [0.5, 1.0, 1.5]),
    "task_arithmetic": lambda b, ms: merge.task_arithmetic(b, ms, scale=0.3),
    "ties": lambda b, ms: merge.ties(b, ms, density=0.4),
    "dare": lambda b, ms: merge.dare(b, ms, density=0.4, consensus=True,
                                     generator=torch.Generator().manual_seed(0)),
    "breadcrumbs": lambda b, ms: merge.breadcrumbs(b, ms, density=0.5, gamma=0.1),
    "slerp": lambda b, ms: merge.slerp(ms[0], ms[1], 0.4),
    "model_stock": lambda b, ms: merge.model_stock(b, ms),
}


def tuned(p, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [p + 0.1 * p.randn(generator=g) for _ in range(n)]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_every_helper_model(model, method):
    """LSTM tagger, Embedding, nested Sequential, tied weights, BatchNorm, Conv: the merge has
    the species' schema, keeps dtypes and runs forward."""
    base = nf.from_module(MODELS[model]()).detach()
    models = tuned(base)
    out = METHODS[method](base, models)
    assert out.schema is base.schema
    assert all(t.dtype == s.dtype and t.shape == s.shape
               for t, s in zip(out.leaves, base.schema.leaf_specs))
    nf.apply(out.eval(), example_input(model))


def test_tied_weights_stay_tied():
    base = nf.from_module(MODELS["tied"]()).detach()
    out = merge.ties(base, tuned(base), density=0.5)
    module = nf.to_module(out)
    assert module.out.weight is module.emb.weight


def test_shared_parameters_are_not_merged_and_stay_shared():
    base = nf.configure(nf.from_module(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))),
                        "1.weight", operational=False, clone=False).detach()
    models = tuned(base)
    out = merge.task_arithmetic(base, models)
    assert out["1.weight"] is base["1.weight"]


def test_mixed_dtypes_in_one_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    net[0].to(torch.float16)
    net[1].to(torch.float64)
    base = nf.from_module(net).detach()
    models = tuned(base)
    for fn in METHODS.values():
        out = fn(base, models)
        assert [t.dtype for t in out.leaves] == [torch.float16] * 2 + [torch.float64] * 2
    got = merge.task_arithmetic(base, models, [1.0, 2.0, 3.0])
    want = base["1.weight"] + sum(w * (m["1.weight"] - base["1.weight"])
                                  for w, m in zip([1.0, 2.0, 3.0], models))
    torch.testing.assert_close(got["1.weight"], want, rtol=1e-12, atol=1e-12)


def test_non_contiguous_and_expanded_populations():
    base = nf.from_module(nn.Linear(6, 4)).detach()
    pop = nf.stack(tuned(base, 4))
    shuffled = nf.take(pop, [3, 1, 2])
    strided = nf.Particle(pop.schema, tuple(t[::2] for t in pop.leaves), None)
    for models in (shuffled, strided):
        want = merge.ties(base, [m.clone() for m in nf.unstack(models)], density=0.5)
        got = merge.ties(base, models, density=0.5)
        for a, b in zip(got.leaves, want.leaves):
            torch.testing.assert_close(a, b)
    # a vmapped population (leaves expanded with stride 0 where nothing varied) merges too
    W = torch.ones(4, 4)
    cands = torch.func.vmap(lambda w: merge.linear(pop, w))(W)
    assert merge.model_stock(base, cands).batch_shape == ()


def test_merged_particle_survives_a_checkpoint(tmp_path):
    base = nf.from_module(MODELS["bn_net"]()).detach()
    out = merge.ties(base, tuned(base), density=0.3)
    path = tmp_path / "merged.safetensors"
    nf.save(path, out)
    back = nf.load(path)
    for a, b in zip(back.leaves, out.leaves):
        assert torch.equal(a, b)


def test_no_reference_cycles_and_no_growth_in_a_long_search():
    base = nf.from_module(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))).detach()
    models = nf.stack(tuned(base, 4))
    three = nf.unstack(models)[:3]
    for fn in METHODS.values():  # eager merges create no garbage for the cycle collector
        fn(base, three)
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                fn(base, three)
            assert gc.collect() == 0
        finally:
            gc.enable()
    # a long vmapped search (vmap itself makes collectable cycles) does not grow
    W, D = torch.rand(16, 4), torch.rand(16, 4) * 0.9 + 0.1
    search = torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))
    for _ in range(20):
        search(W, D)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(200):
        search(W, D)
    gc.collect()
    assert len(gc.get_objects()) <= before + 50


def test_tensor_weights_requiring_grad_and_lists_of_tensors():
    base = nf.from_module(nn.Linear(3, 2)).detach()
    models = tuned(base, 2)
    w0, w1 = torch.tensor(0.3, requires_grad=True), torch.tensor(0.9, requires_grad=True)
    out = merge.ties(base, models, [w0, w1], density=0.5)
    out["weight"].sum().backward()
    assert w0.grad is not None and w1.grad is not None
