"""Merging many candidates at once: torch.func.vmap over weights, densities, gamma, scale and
t equals a loop of single merges; populations come out; torch.compile traces every method."""

import pytest
import torch

import nytorch_func as nf
from nytorch_func import merge

from merge_models import INPUTS, family

C = 5  # candidates


def assert_population_equals_loop(pop, singles, *, atol=1e-6):
    assert pop.batch_shape == (len(singles),)
    for i, single in enumerate(singles):
        for key, t in zip(pop.schema.leaf_keys, pop.leaves):
            torch.testing.assert_close(t[i], single[key], atol=atol, rtol=1e-5,
                                       msg=f"candidate {i}, {key}")


def candidates(seed=0, m=3):
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(C, m, generator=g) * 2 - 0.5
    D = torch.rand(C, m, generator=g) * 0.9 + 0.05
    D[0] = 1.0  # a candidate that keeps everything
    return W, D


@pytest.mark.parametrize("name", ["mlp", "conv", "bn", "scaled"])
def test_ties_vmap_over_weights_and_densities_equals_loop(name):
    base, models = family(name, 3)
    pop_in = nf.stack(models)
    W, D = candidates()
    pop = torch.func.vmap(lambda w, d: merge.ties(base, pop_in, w, density=d))(W, D)
    singles = [merge.ties(base, models, W[i].tolist(), density=D[i].tolist()) for i in range(C)]
    assert_population_equals_loop(pop, singles)
    if name == "bn":  # the population runs: one forward pass per candidate
        out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop.eval(), INPUTS[name]())
        assert out.shape == (C, 3, 3)


def test_ties_vmap_over_weights_only_uses_the_selection_path():
    base, models = family("mlp", 3)
    W, _ = candidates(1)
    pop = torch.func.vmap(lambda w: merge.ties(base, models, w, density=[0.2, 0.5, 0.7]))(W)
    singles = [merge.ties(base, models, W[i], density=[0.2, 0.5, 0.7]) for i in range(C)]
    assert_population_equals_loop(pop, singles)


def test_task_arithmetic_and_linear_vmap():
    base, models = family("bn", 3)
    W, _ = candidates(2)
    S = torch.linspace(0.5, 1.5, C)
    pop = torch.func.vmap(lambda w, s: merge.task_arithmetic(base, models, w, scale=s))(W, S)
    assert_population_equals_loop(pop, [merge.task_arithmetic(base, models, W[i],
                                                              scale=float(S[i]))
                                        for i in range(C)])
    pos = W.abs() + 0.1
    pop = torch.func.vmap(lambda w: merge.linear(models, w))(pos)
    assert_population_equals_loop(pop, [merge.linear(models, pos[i]) for i in range(C)])


@pytest.mark.parametrize("consensus", [False, True])
def test_dare_vmap_same_randomness_equals_reseeded_loop(consensus):
    base, models = family("conv", 3)
    W, D = candidates(3)
    D[0] = 0.5
    torch.manual_seed(11)
    pop = torch.func.vmap(lambda w, d: merge.dare(base, models, w, density=d,
                                                  consensus=consensus),
                          randomness="same")(W, D)
    singles = []
    for i in range(C):
        torch.manual_seed(11)
        singles.append(merge.dare(base, models, W[i], density=D[i], consensus=consensus))
    assert_population_equals_loop(pop, singles, atol=1e-5)


def test_dare_vmap_different_randomness_draws_per_candidate():
    base, models = family("mlp", 2)
    W = torch.ones(2, 2)
    pop = torch.func.vmap(lambda w: merge.dare(base, models, w, density=0.5),
                          randomness="different")(W)
    assert not torch.equal(pop["0.weight"][0], pop["0.weight"][1])


def test_breadcrumbs_vmap_over_density_and_gamma():
    base, models = family("mlp", 3)
    W, D = candidates(4)
    G = torch.rand(C, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    pop = torch.func.vmap(lambda w, d, g: merge.breadcrumbs(base, models, w, density=d,
                                                            gamma=g, consensus=True))(W, D, G)
    singles = [merge.breadcrumbs(base, models, W[i], density=D[i].tolist(),
                                 gamma=G[i].tolist(), consensus=True) for i in range(C)]
    assert_population_equals_loop(pop, singles)


def test_slerp_vmap_over_t():
    _, (a, b) = family("bn", 2, spread=1.0)
    T = torch.linspace(0, 1, C)
    pop = torch.func.vmap(lambda t: merge.slerp(a, b, t))(T)
    assert_population_equals_loop(pop, [merge.slerp(a, b, float(T[i])) for i in range(C)],
                                  atol=1e-5)


def test_vmapped_population_is_a_population_of_the_species():
    base, models = family("mlp", 3)
    W, D = candidates(5)
    pop = torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))(W, D)
    assert pop.species is base.species and len(nf.unstack(pop)) == C
    best, idx = nf.topk(pop, torch.arange(C, dtype=torch.float32), k=2)
    assert idx.tolist() == [4, 3]
    soup = nf.mean(pop)
    assert soup.batch_shape == ()


def test_densities_as_concrete_and_traced_tensors_agree_with_floats():
    base, models = family("mlp", 3)
    dens = torch.tensor([0.7, 0.3, 0.55], dtype=torch.float32)
    a = merge.ties(base, models, density=dens)  # concrete: read as Python floats
    b = merge.ties(base, models, density=dens.tolist())
    c = torch.func.vmap(lambda d: merge.ties(base, models, density=d))(dens.unsqueeze(0))
    for ta, tb, tc in zip(a.leaves, b.leaves, c.leaves):
        assert torch.equal(ta, tb)
        torch.testing.assert_close(tc[0], ta)
    # a float32 0.7 is 0.69999999: int(0.69999999 * 10) = 6 entries, traced or not (a float32
    # product would round to 7.0)
    base = nf.from_module(torch.nn.Linear(10, 1, bias=False)).detach()
    model = nf.Particle(base.schema, (base["weight"] + torch.linspace(1, 2, 10)[None],), None)
    d = torch.tensor([0.7])
    traced = torch.func.vmap(lambda d: merge.ties(base, [model], density=d))(d.unsqueeze(0))
    kept = int(((traced["weight"][0] - base["weight"]).abs() > 0.5).sum())
    assert kept == 6 == int(float(d) * 10)


# torch.compile ---------------------------------------------------------------------------------

def _methods(base, models):
    return {
        "linear": lambda w, d: merge.linear(models, w.abs() + 0.1),
        "task_arithmetic": lambda w, d: merge.task_arithmetic(base, models, w, scale=0.5),
        "ties": lambda w, d: merge.ties(base, models, w, density=d),
        "ties_floats": lambda w, d: merge.ties(base, models, w, density=0.4),
        "dare": lambda w, d: merge.dare(base, models, w, density=d, rescale="inverse"),
        "breadcrumbs": lambda w, d: merge.breadcrumbs(base, models, w, density=d, gamma=0.1),
        "slerp": lambda w, d: merge.slerp(models[0], models[1], w[0].sigmoid()),
        "model_stock": lambda w, d: merge.model_stock(base, models),
    }


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "ties_floats", "dare",
                                    "breadcrumbs", "slerp", "model_stock"])
def test_every_method_traces_in_one_graph(method):
    torch._dynamo.reset()
    base, models = family("bn", 3)
    fn = _methods(base, models)[method]
    w, d = torch.tensor([0.5, 1.0, 0.25]), torch.tensor([0.3, 0.6, 0.9])
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.manual_seed(0)
    got = compiled(w, d)
    torch.manual_seed(0)
    want = fn(w, d)
    for a, b in zip(got.leaves, want.leaves):
        torch.testing.assert_close(a, b)


def test_ties_compiles_with_inductor_and_vmap():
    torch._dynamo.reset()
    base, models = family("mlp", 3)
    W, D = candidates(6)

    def search(W, D):
        return torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))(W, D)

    got = torch.compile(search)(W, D)
    want = search(W, D)
    for a, b in zip(got.leaves, want.leaves):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vmap_over_densities_with_exact_zeros_in_the_task_vectors():
    """Entries a model did not change (delta exactly 0) never agree and never count in TIES's
    divisor, in the traced path too."""
    base, models = family("mlp", 3)
    g = torch.Generator().manual_seed(9)
    models = [nf.Particle(m.schema, tuple(
        torch.where(torch.rand(t.shape, generator=g) < 0.5, b, t)
        for b, t in zip(base.leaves, m.leaves)), None) for m in models]
    W, D = candidates(7)
    pop = torch.func.vmap(lambda w, d: merge.ties(base, models, w, density=d))(W, D)
    singles = [merge.ties(base, models, W[i].tolist(), density=D[i].tolist()) for i in range(C)]
    assert_population_equals_loop(pop, singles)
