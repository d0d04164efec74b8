"""nytorch_func.evolution: operators against hand-written per-tensor references, configs,
seeds, commuting with touch, PSO / SNES following an event, greedy soup."""

import dataclasses
import gc
import math

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import evolution as ev

from test_reduce import Mixed, convbn, distinct_population, mlp, op_params, snapshot, unchanged

MODELS = {"mlp": mlp, "convbn": convbn, "mixed": Mixed}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pair(name="mlp", n=4):
    a = distinct_population(MODELS[name](), n, seed=1)
    b = nf.Particle(a.schema, tuple(t * 2 + 1 for t in a.leaves), None)
    return a, b


# crossover --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per_tensor", [False, True])
def test_crossover_matches_reference(name, per_tensor):
    a, b = pair(name)
    a = nf.configure(a, op_params(a)[1], operational=False)
    before = snapshot(a), snapshot(b)
    fn = ev.tensor_crossover if per_tensor else ev.uniform_crossover
    child = fn(a, b, p=0.3, generator=gen(5))
    g = gen(5)
    for key in op_params(a):  # reference: one draw per operational leaf, in leaf order
        ta, tb = a[key], b[key]
        if per_tensor:
            u = torch.rand(4, generator=g)
            ref = torch.stack([tb[i] if u[i] < 0.3 else ta[i] for i in range(4)])
        else:
            u = torch.rand(ta.shape, generator=g)
            ref = torch.where(u < 0.3, tb, ta)
        assert torch.equal(child[key], ref), key
    for key in set(a.params) - set(op_params(a)):
        assert torch.equal(child[key], a[key]), key  # never varied
    for key in a.buffers:  # the default policy "mean": floats averaged, counters the larger
        ref = (a[key] + b[key]) / 2 if a[key].is_floating_point() else torch.maximum(a[key], b[key])
        assert torch.allclose(child[key], ref), key
    assert unchanged(a, before[0]) and unchanged(b, before[1])


def test_crossover_buffer_policies_and_broadcast():
    a, b = pair("convbn")
    a = nf.configure_buffer(a, "1.running_mean", policy="mean")
    a = nf.configure_buffer(a, "1.running_var", policy="reset", value=torch.ones(3))
    child = ev.uniform_crossover(a, b[2], generator=gen())
    assert child.batch_shape == (4,)
    assert torch.allclose(child["1.running_mean"], (a["1.running_mean"] + b["1.running_mean"][2]) / 2)
    assert torch.equal(child["1.running_var"], torch.ones(4, 3))
    assert torch.equal(child["1.num_batches_tracked"],  # default "mean": the larger counter
                       torch.maximum(a["1.num_batches_tracked"], b["1.num_batches_tracked"][2]))
    chosen = child["0.weight"]
    assert torch.all((chosen == a["0.weight"]) | (chosen == b["0.weight"][2]))


def test_crossover_complement_and_seeds():
    a, b = pair()
    c1 = ev.uniform_crossover(a, b, generator=gen(3))
    c2 = ev.uniform_crossover(b, a, generator=gen(3))
    for key in op_params(a):
        assert torch.equal(torch.where(c1[key] == a[key], b[key], a[key]), c2[key])
    again = ev.uniform_crossover(a, b, generator=gen(3))
    other = ev.uniform_crossover(a, b, generator=gen(4))
    assert all(torch.equal(x, y) for x, y in zip(c1.leaves, again.leaves))
    assert not all(torch.equal(x, y) for x, y in zip(c1.leaves, other.leaves))


def test_crossover_errors():
    a, b = pair()
    with pytest.raises(nf.SchemaError, match="probability"):
        ev.uniform_crossover(a, b, p=1.5)
    with pytest.raises(nf.SpeciesMismatchError):
        ev.uniform_crossover(a, distinct_population(mlp(), 4))
    with pytest.raises(nf.SchemaError, match="batch shape"):
        ev.tensor_crossover(a, nf.take(b, [0, 1]))
    with pytest.raises(nf.SchemaError, match="at least one operand"):
        ev.uniform_crossover(a[0], b[0])


# mutation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rate", [1.0, 0.4])
def test_mutation_matches_reference_with_config_scales(name, rate):
    pop, _ = pair(name)
    keys = op_params(pop)
    pop = nf.configure(pop, keys[0], mutation_scale=0.5)
    pop = nf.configure(pop, keys[1], mutation_scale=0.0)
    pop = nf.configure(pop, keys[2], operational=False)
    before = snapshot(pop)
    out = ev.gaussian_mutation(pop, 0.1, rate=rate, generator=gen(7))
    g = gen(7)
    for key in op_params(pop):
        scale = pop.config(key).get("mutation_scale", 0.1)
        t = pop[key]
        if scale == 0.0:
            assert torch.equal(out[key], t), key
            continue
        z = torch.randn(t.shape, generator=g)
        if rate < 1:
            z = z * (torch.rand(t.shape, generator=g) < rate)
        assert torch.allclose(out[key], t + scale * z, atol=1e-6), key
    assert torch.equal(out[keys[2]], pop[keys[2]])
    for key in pop.buffers:
        assert torch.equal(out[key], pop[key])
    assert unchanged(pop, before)


def test_mutation_needs_a_scale():
    pop, _ = pair()
    with pytest.raises(nf.SchemaError, match="no scale for"):
        ev.gaussian_mutation(pop)
    pop = nf.configure(pop, "", mutation_scale=0.2)
    assert not torch.equal(ev.gaussian_mutation(pop)["0.weight"], pop["0.weight"])
    with pytest.raises(nf.SchemaError, match="non-negative"):
        ev.gaussian_mutation(nf.configure(pop, "0.bias", mutation_scale=-1.0))


# PSO velocity -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_pso_velocity_matches_reference(name):
    x, best = pair(name)
    v = nf.Particle(x.schema, tuple(t * 0.1 for t in x.leaves), None)
    leader = best[1]
    out = ev.pso_velocity(v, x, best, leader, inertia=0.6, c1=1.2, c2=0.8, max_speed=0.5,
                          generator=gen(2))
    g = gen(2)
    keys = [k for k in op_params(x) if x[k].is_floating_point()]
    r1, r2 = {}, {}
    for k in keys:
        r1[k] = torch.rand(x[k].shape, generator=g)
        r2[k] = torch.rand(x[k].shape, generator=g)
    for k in keys:
        ref = 0.6 * v[k] + 1.2 * r1[k] * (best[k] - x[k]) + 0.8 * r2[k] * (leader[k] - x[k])
        assert torch.allclose(out[k], ref.clamp(-0.5, 0.5), atol=1e-6), k
    for k in v.buffers:
        assert torch.equal(out[k], v[k])


# commuting with touch ---------------------------------------------------------------------------

def add_layer(p):
    layer = nn.Linear(2, 2)
    return nf.add_module(p, "3", layer)


@pytest.mark.parametrize("op", ["uniform", "tensor", "mutation", "velocity"])
def test_operators_commute_with_touch(op):
    """apply-then-touch == touch-then-apply on every entry the operator also saw before the event;
    added entries are the event's snapshot, which crossover of equal snapshots keeps too."""
    a, b = pair()
    fns = {
        "uniform": lambda a, b: ev.uniform_crossover(a, b, generator=gen(1)),
        "tensor": lambda a, b: ev.tensor_crossover(a, b, generator=gen(1)),
        "mutation": lambda a, b: ev.gaussian_mutation(a, 0.3, generator=gen(1)),
        "velocity": lambda a, b: ev.pso_velocity(nf.zeros_like(a), a, b, b[0], generator=gen(1)),
    }
    first = fns[op](a, b)
    grown = add_layer(a[0])
    applied_then_touched = nf.touch(first)
    touched_then_applied = fns[op](nf.touch(a), nf.touch(b))
    new = {"3.weight", "3.bias"}
    for key in grown.schema.leaf_keys:
        x, y = applied_then_touched[key], touched_then_applied[key]
        if key in new and op in ("mutation", "velocity"):
            continue  # the later operator also varies the added layer (by design)
        assert torch.allclose(x, y), key


# PSO and SNES -----------------------------------------------------------------------------------

def quadratic(target):
    def fitness(pop):
        return -sum(((pop[k] - target[k]) ** 2).flatten(1).sum(1) for k in target)
    return fitness


def test_pso_step_reproducible_and_improves():
    net = mlp()
    target = {k: torch.randn_like(v) for k, v in nf.from_module(net).params.items()}
    f = quadratic(target)
    pop = nf.population(net, 16, generator=gen(0)).detach()
    runs = []
    for _ in range(2):
        state, g = ev.pso_init(pop, velocity_scale=0.1, generator=gen(9)), gen(9)
        for _ in range(30):
            state = ev.pso_step(state, f, generator=g)
        runs.append(state)
    assert all(torch.equal(x, y) for x, y in zip(runs[0].position.leaves, runs[1].position.leaves))
    assert float(runs[0].best_fitness.max()) > float(f(pop).max())
    assert runs[0].generation == 30


def test_pso_follows_add_module():
    pop = nf.population(mlp(), 6, generator=gen(0)).detach()
    f = lambda p: -sum(t.flatten(1).pow(2).sum(1) for t in p.params.values())
    state = ev.pso_step(ev.pso_init(pop), f, generator=gen(1))
    layer = nn.Linear(2, 2)
    nf.add_module(state.global_best, "3", layer)  # an event made on one particle
    assert torch.equal(state.touch(velocity_scale=0.0).velocity["3.weight"], torch.zeros(6, 2, 2))
    speed = float(torch.cat([t.flatten() for t in state.velocity.params.values()]).pow(2).mean().sqrt())
    old_velocity = state.velocity
    state = state.touch(generator=gen(3))
    assert state.position.version == state.velocity.version == state.best.version == 1
    new_v = state.velocity["3.weight"]
    assert torch.allclose(new_v, speed * torch.randn(6, 2, 2, generator=gen(3)))
    assert state.velocity["0.weight"] is old_velocity["0.weight"]
    assert torch.equal(state.position["3.weight"], layer.weight.detach().expand(6, 2, 2))
    assert torch.isinf(state.best_fitness).all()
    state = ev.pso_step(state, f, generator=gen(1))
    state = ev.pso_step(state, f, generator=gen(2))
    assert not torch.equal(state.position["3.weight"][0], layer.weight.detach())


def test_snes_generation_matches_hand_written_reference():
    p = nf.from_module(mlp()).detach()
    target = {k: torch.randn_like(v) for k, v in p.params.items()}
    f = quadratic(target)
    state = ev.snes_init(p, 8, sigma=0.3)
    new = ev.snes_step(state, f, generator=gen(4))
    # reference on raw tensors
    g = gen(4)
    keys = list(p.schema.leaf_keys)
    mu = {k: p[k] for k in keys}
    sig = {k: torch.full_like(p[k], 0.3) for k in keys}
    eps = {k: torch.randn((8, *p[k].shape), generator=g) for k in keys}
    xs = {k: mu[k] + sig[k] * eps[k] for k in keys}
    fit = -sum(((xs[k] - target[k]) ** 2).flatten(1).sum(1) for k in keys)
    ranks = torch.argsort(torch.argsort(fit, descending=True))  # 0 = best
    util = torch.clamp(math.log(8 / 2 + 1) - torch.log(ranks.double() + 1), min=0)
    util = (util / util.sum() - 1 / 8).float()
    d = sum(t.numel() for t in mu.values())
    lr_s = (3 + math.log(d)) / (5 * math.sqrt(d))
    for k in keys:
        w = util.reshape(8, *(1,) * mu[k].dim())
        gm = (w * eps[k]).sum(0)
        gs = (w * (eps[k] ** 2 - 1)).sum(0)
        assert torch.allclose(new.mean[k], mu[k] + sig[k] * gm, atol=1e-5), k
        assert torch.allclose(new.sigma[k], sig[k] * torch.exp(lr_s / 2 * gs), atol=1e-5), k
    assert torch.equal(new.fitness, fit)


def test_snes_improves_and_follows_add_module():
    p = nf.from_module(mlp()).detach()
    target = {k: torch.randn_like(v) for k, v in p.params.items()}
    f = quadratic(target)
    state = ev.snes_init(p, 16, sigma=0.5)
    g = gen(0)
    start = float(f(nf.stack([p]))[0])
    for _ in range(20):
        state = ev.snes_step(state, f, generator=g)
    assert float(f(nf.stack([state.mean]))[0]) > start
    layer = nn.Linear(2, 2)
    nf.add_module(state.mean, "3", layer)
    touched = state.touch()
    assert torch.equal(touched.sigma["3.weight"], torch.full((2, 2), 0.5))
    assert torch.equal(touched.mean["3.weight"], layer.weight.detach())
    assert touched.sigma["0.weight"] is state.sigma["0.weight"]
    state = ev.snes_step(state, f, generator=g)  # steps touch first
    assert state.mean.version == 1 and not torch.equal(state.mean["3.weight"], layer.weight.detach())


def test_snes_respects_non_operational():
    p = nf.configure(nf.from_module(mlp()).detach(), "0.bias", operational=False)
    state = ev.snes_init(p, 6)
    for _ in range(3):
        state = ev.snes_step(state, lambda pop: -pop["0.weight"].pow(2).sum((1, 2)), generator=gen())
    assert torch.equal(state.mean["0.bias"], p["0.bias"])
    samples, _ = ev.snes_ask(state, generator=gen())
    assert torch.equal(samples["0.bias"], p["0.bias"].expand(6, 3))


# greedy soup ------------------------------------------------------------------------------------

def test_greedy_soup_skips_harmful_members_and_honours_buffer_policy():
    pop = distinct_population(convbn(), 4)
    pop = nf.configure_buffer(pop, "1.running_mean", policy="mean")
    centre = nf.mean(pop)
    # member 3 is far away; the others are close to the centre
    leaves = tuple(torch.cat([t[:3], t[3:] + 50]) if t.is_floating_point() else t for t in pop.leaves)
    pop = nf.Particle(pop.schema, leaves, None)
    score = lambda p: -sum(float((p[k] - centre[k]).pow(2).sum()) for k in op_params(p))
    soup = ev.greedy_soup(pop, score)
    assert 3 not in soup.indices.tolist()
    chosen = soup.indices.tolist()
    assert torch.allclose(soup.particle["0.weight"], pop["0.weight"][chosen].mean(0))
    assert torch.allclose(soup.particle["1.running_mean"], pop["1.running_mean"][chosen].mean(0))
    # the default policy of running_var ("mean") averages it too
    assert torch.allclose(soup.particle["1.running_var"], pop["1.running_var"][chosen].mean(0))
    assert soup.score >= max(score(m) for m in pop)


# hygiene ----------------------------------------------------------------------------------------

def test_no_reference_cycles():
    pop = nf.population(mlp(), 8, generator=gen())
    f = quadratic({k: torch.zeros_like(v) for k, v in pop[0].params.items()})
    gc.collect()
    gc.disable()
    try:
        state = ev.pso_init(pop)
        for _ in range(3):
            state = ev.pso_step(state, f, generator=gen())
        s2 = ev.snes_init(pop[0], 8)
        s2 = ev.snes_step(s2, f, generator=gen())
        ev.greedy_soup(pop, lambda p: float(f(nf.stack([p]))[0]))
        del state, s2
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0


def test_bench_cases_run():
    cases = ev.bench_cases(n=8, batch=16)
    for name, fn in cases.items():
        fn()
        assert callable(fn), name


@pytest.mark.parametrize("make", ["pso", "snes"])
@pytest.mark.parametrize("how", ["set", "del"])
def test_states_are_frozen_with_the_typed_error(make, how):
    pop = nf.population(nn.Linear(2, 2), 3, generator=torch.Generator().manual_seed(0))
    state = ev.pso_init(pop) if make == "pso" else ev.snes_init(pop[0], 4)
    with pytest.raises(nf.FrozenError, match="immutable"):
        if how == "set":
            state.generation = 5
        else:
            del state.generation
    assert state.generation == 0
    assert dataclasses.replace(state, generation=5).generation == 5  # the way to a new one


def _pop(n=3):
    return nf.population(nn.Linear(2, 1), n, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("call, error, match", [
    (lambda: ev.pso_init(_pop()[0]), nf.SchemaError, "pso_init: expected a population, got a single"),
    (lambda: ev.pso_init(_pop()[0:0]), nf.SchemaError, "pso_init: the population has no members"),
    (lambda: ev.pso_init(nf.stack([_pop()] * 2)), nf.SchemaError,
     r"one batch dimension, got batch shape \(2, 3\)"),
    (lambda: ev.pso_init(nn.Linear(2, 1)), nf.ArgumentTypeError, "pso_init: expected a population"),
    (lambda: ev.pso_step("state", lambda p: 0), nf.ArgumentTypeError, "pso_step: state must be the PSOState"),
    (lambda: ev.greedy_soup(_pop()[1], lambda q: 1.0), nf.SchemaError, "greedy_soup: expected a population"),
    (lambda: ev.greedy_soup(_pop()[0:0], lambda q: 1.0), nf.SchemaError, "greedy_soup: the population has no members"),
    (lambda: ev.greedy_soup(_pop(), "score"), nf.ArgumentTypeError, "greedy_soup: score_fn must be a callable"),
    (lambda: ev.greedy_soup(_pop(), lambda q: 1.0, scores=[1.0, 2.0]), nf.SchemaError, r"greedy_soup: scores must hold one number per member, shape \(3,\)"),
    (lambda: ev.greedy_soup(_pop(), lambda q: 1.0, scores=["a", "b", "c"]), nf.ArgumentTypeError, "greedy_soup: scores must be numbers"),
    (lambda: ev.snes_init(nn.Linear(2, 1), 4), nf.ArgumentTypeError, "snes_init: center must be a Particle"),
    (lambda: ev.snes_init(_pop(), 4), nf.SchemaError, r"snes_init: center must be a single particle, got a population of batch shape \(3,\)"),
    (lambda: ev.snes_ask(None), nf.ArgumentTypeError, "snes_ask: state must be the SNESState"),
    (lambda: ev.snes_tell(ev.snes_init(_pop()[0], 4), 3, torch.zeros(4)), nf.ArgumentTypeError, "snes_tell: noise must be"),
    (lambda: ev.snes_step(ev.pso_init(_pop()), lambda p: 0), nf.ArgumentTypeError, "snes_step: state must be the SNESState"),
], ids=["pso_single", "pso_empty", "pso_2d", "pso_module", "pso_step_state", "soup_single", "soup_empty",
        "soup_score_fn", "soup_scores_len", "soup_scores_kind", "snes_module", "snes_population",
        "snes_ask_state", "snes_tell_noise", "snes_step_state"])
def test_algorithms_refuse_bad_arguments_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_one_member_population_runs_every_algorithm():
    pop = _pop(1)
    soup = ev.greedy_soup(pop, lambda q: -float(q["weight"].abs().sum()))
    assert soup.indices.tolist() == [0] and torch.equal(soup.particle["weight"], pop[0]["weight"])
    state = ev.pso_step(ev.pso_init(pop), lambda p: -p["weight"].abs().sum((1, 2)))
    assert state.generation == 1 and state.best_fitness.shape == (1,)
