"""nf.mean / take / topk / where against hand-written per-tensor references."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import nytorch_func as nf


def mlp():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def convbn():
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))


class Mixed(nn.Module):
    """Embedding + LSTM + nested Sequential with BatchNorm: every kind of leaf."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Linear(4, 2)))

    def forward(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.head(out[:, -1])


MODELS = {"mlp": mlp, "convbn": convbn, "mixed": Mixed}


def distinct_population(module, n, seed=0):
    """A population whose members differ in every leaf (buffers included)."""
    g = torch.Generator().manual_seed(seed)
    pop = nf.population(module, n, generator=g).detach()
    leaves = tuple(t + torch.randn(t.shape, generator=g) if t.is_floating_point()
                   else t + torch.arange(n).reshape(-1, *(1,) * (t.dim() - 1)).to(t.dtype)
                   for t in pop.leaves)
    return nf.Particle(pop.schema, leaves, None)


def snapshot(p):
    return [t.clone() for t in p.leaves]


def unchanged(p, before):
    return all(torch.equal(a, b) for a, b in zip(p.leaves, before))


def op_params(p):
    return [k for k in p.schema.leaf_keys if k in p.params and p.config(k).operational]


# mean --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_mean_uniform_matches_reference(name):
    pop = distinct_population(MODELS[name](), 5)
    before = snapshot(pop)
    soup = nf.mean(pop)
    assert soup.batch_shape == () and soup.species is pop.species
    for key in pop.params:
        assert torch.allclose(soup[key], pop[key].mean(0), atol=1e-6), key
    for key in pop.buffers:  # the default policy "mean": floats averaged, counters their maximum
        ref = pop[key].mean(0) if pop[key].is_floating_point() else pop[key].amax(0)
        assert torch.allclose(soup[key], ref, atol=1e-6), key
    kept = pop
    for key in pop.buffers:
        kept = nf.configure_buffer(kept, key, policy="keep")
    for key in pop.buffers:  # "keep": member 0
        assert torch.equal(nf.mean(kept)[key], pop[key][0]), key
    assert unchanged(pop, before)


@pytest.mark.parametrize("weights", [[1.0, 2.0, 0.0, 5.0], torch.tensor([3, 1, 1, 1]), (0.5, -0.25, 1.0, 0.0)])
def test_mean_weighted_is_normalised(weights):
    pop = distinct_population(mlp(), 4)
    w = torch.as_tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    soup = nf.mean(pop, weights=weights)
    for key in pop.params:
        ref = sum(w[i] * pop[key][i] for i in range(4))
        assert torch.allclose(soup[key], ref, atol=1e-6), key


def test_mean_gradient_flows_through_weights():
    pop = distinct_population(mlp(), 3)
    w = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    x = torch.randn(2, 4)
    nf.apply(nf.mean(pop, weights=w), x).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_mean_keeps_member0_for_non_operational_and_shared_untouched():
    pop = distinct_population(mlp(), 3)
    pop = nf.configure(pop, "0.bias", operational=False)
    soup = nf.mean(pop, weights=[1, 2, 3])
    assert torch.equal(soup["0.bias"], pop["0.bias"][0])
    assert not torch.equal(soup["0.weight"], pop["0.weight"][0])
    one = nf.configure(nf.from_module(mlp()), "2.weight", operational=False, clone=False)
    pop = nf.population(one, 3)
    assert nf.mean(pop)["2.weight"] is pop["2.weight"]


def test_mean_buffer_policies():
    pop = distinct_population(convbn(), 4)
    pop = nf.configure_buffer(pop, "1.running_mean", policy="mean")
    pop = nf.configure_buffer(pop, "1.num_batches_tracked", policy="mean")
    pop = nf.configure_buffer(pop, "1.running_var", policy="reset", value=torch.ones(3))
    soup = nf.mean(pop, weights=[1, 1, 2, 0])
    w = torch.tensor([0.25, 0.25, 0.5, 0.0])
    assert torch.allclose(soup["1.running_mean"], (w[:, None] * pop["1.running_mean"]).sum(0))
    # an integer counter: the maximum over the members with a non-zero weight
    assert torch.equal(soup["1.num_batches_tracked"], pop["1.num_batches_tracked"][:3].amax(0))
    assert torch.equal(soup["1.running_var"], torch.ones(3))


def test_reset_of_a_0_dim_buffer():
    """Regression: a 0-dim reset value (num_batches_tracked) was expanded with no sizes."""
    pop = nf.configure_buffer(distinct_population(convbn(), 3), "1.num_batches_tracked",
                              policy="reset", value=torch.tensor(0))
    soup = nf.mean(pop)
    assert soup["1.num_batches_tracked"].shape == () and int(soup["1.num_batches_tracked"]) == 0


def test_reset_snapshot_is_taken_when_policy_is_set():
    bn = nn.BatchNorm1d(2)
    p = nf.from_module(bn)
    p = nf.configure_buffer(p, "running_var", policy="reset")  # snapshot: ones
    _, trained = nf.apply_with_state(p.train(), torch.randn(8, 2) * 5)
    pop = nf.stack([trained, trained])
    assert not torch.equal(trained["running_var"], torch.ones(2))
    assert torch.equal(nf.mean(pop)["running_var"], torch.ones(2))
    with pytest.raises(nf.SchemaError, match="shape"):
        nf.configure_buffer(p, "running_var", policy="reset", value=torch.ones(3))
    with pytest.raises(nf.SchemaError, match="only used with policy='reset'"):
        nf.configure_buffer(p, "running_var", policy="mean", value=torch.ones(2))


def test_mean_errors_leave_input_unchanged():
    pop = distinct_population(mlp(), 3)
    before = snapshot(pop)
    with pytest.raises(nf.SchemaError, match=r"shape \(3,\)"):
        nf.mean(pop, weights=[1.0, 2.0])
    with pytest.raises(nf.SchemaError, match="non-zero sum"):
        nf.mean(pop, weights=[1.0, -1.0, 0.0])
    with pytest.raises(nf.SchemaError, match="no batch dimension"):
        nf.mean(pop[0])
    with pytest.raises(nf.NytorchFuncError, match="expected a population"):
        nf.mean([pop])
    assert unchanged(pop, before)


@given(st.lists(st.floats(0.1, 10.0), min_size=3, max_size=3), st.floats(0.1, 100.0))
def test_mean_weights_scale_invariant(ws, c):
    pop = distinct_population(mlp(), 3)
    a = nf.mean(pop, weights=ws)
    b = nf.mean(pop, weights=[c * w for w in ws])
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.leaves, b.leaves))


# take / topk ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_take_matches_reference(name):
    pop = distinct_population(MODELS[name](), 5)
    idx = [4, -5, 2, 2]
    sub = nf.take(pop, idx)
    assert len(sub) == 4
    for key, t in {**pop.params, **pop.buffers}.items():
        ref = torch.stack([t[i] for i in idx])
        assert torch.equal(sub[key], ref), key
    assert torch.equal(nf.take(pop, torch.tensor([1]))["0.weight" if name != "mixed" else "emb.weight"],
                       pop["0.weight" if name != "mixed" else "emb.weight"][1:2])


def test_take_errors():
    pop = distinct_population(mlp(), 3)
    with pytest.raises(nf.SchemaError, match="index 3 is out of range"):
        nf.take(pop, [0, 3])
    with pytest.raises(nf.SchemaError, match="index -4 is out of range"):
        nf.take(pop, [-4])
    with pytest.raises(nf.SchemaError, match="1-D integers"):
        nf.take(pop, torch.tensor([0.0]))
    with pytest.raises(nf.SchemaError, match="boolean mask"):
        nf.take(pop, torch.tensor([True, False, True]))


def test_topk_matches_reference():
    pop = distinct_population(convbn(), 6)
    fitness = torch.tensor([0.3, 2.0, -1.0, float("nan"), 2.0, 0.5])
    best, idx = nf.topk(pop, fitness, 3)
    assert idx.tolist() == [1, 4, 5]  # stable ties, NaN worst
    for key in pop.params:
        assert torch.equal(best[key], pop[key][[1, 4, 5]])
    worst, idx = nf.topk(pop, fitness.tolist(), 2, largest=False)
    assert idx.tolist() == [2, 0]
    with pytest.raises(nf.SchemaError, match="k must be"):
        nf.topk(pop, fitness, 7)
    with pytest.raises(nf.SchemaError, match=r"shape \(6,\)"):
        nf.topk(pop, fitness[:3], 2)


# where ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_where_matches_reference(name):
    a = distinct_population(MODELS[name](), 4, seed=1)
    b = nf.Particle(a.schema, tuple(t + 1 for t in a.leaves), None)
    mask = torch.tensor([True, False, False, True])
    before_a, before_b = snapshot(a), snapshot(b)
    out = nf.where(mask, a, b)
    for key in a.params:
        ref = torch.stack([a[key][i] if mask[i] else b[key][i] for i in range(4)])
        assert torch.equal(out[key], ref), key
    for key in a.buffers:  # the default "mean": selected like the parameters, counters too
        ref = torch.stack([a[key][i] if mask[i] else b[key][i] for i in range(4)])
        assert torch.equal(out[key], ref), key
    kept = nf.configure_buffer(a, "", policy="keep") if a.buffers else a  # every buffer at once
    for key in a.buffers:  # "keep": left operand
        assert torch.equal(nf.where(mask, kept, b)[key], a[key]), key
    assert unchanged(a, before_a) and unchanged(b, before_b)


def test_where_single_operand_broadcast_and_policies():
    pop = distinct_population(convbn(), 3)
    pop = nf.configure(pop, "3.bias", operational=False)
    pop = nf.configure_buffer(pop, "1.running_mean", policy="mean")
    pop = nf.configure_buffer(pop, "1.running_var", policy="reset", value=torch.full((3,), 2.0))
    elite = nf.mean(pop)
    mask = [False, True, False]
    out = nf.where(mask, elite, pop)
    assert out.batch_shape == (3,)
    assert torch.equal(out["0.weight"][1], elite["0.weight"])
    assert torch.equal(out["0.weight"][0], pop["0.weight"][0])
    assert torch.equal(out["3.bias"], elite["3.bias"].expand(3, 2))  # non-operational: from a
    assert torch.equal(out["1.running_mean"][0], pop["1.running_mean"][0])  # selected like params
    assert torch.equal(out["1.running_mean"][1], elite["1.running_mean"])
    assert torch.equal(out["1.running_var"], torch.full((3, 3), 2.0))


def test_where_errors():
    pop = distinct_population(mlp(), 3)
    other = distinct_population(mlp(), 3)
    with pytest.raises(nf.SpeciesMismatchError):
        nf.where(torch.tensor([True] * 3), pop, other)
    with pytest.raises(nf.SchemaError, match="1-D bool"):
        nf.where(torch.tensor([1, 0, 1]), pop, pop)
    with pytest.raises(nf.SchemaError, match="batch shape"):
        nf.where(torch.tensor([True, False]), pop, pop)


# commuting with touch ---------------------------------------------------------------------------

def grow(p):
    """An event made elsewhere in the species: a layer added at the end."""
    layer = nn.Linear(2, 2)
    return nf.add_module(nf.touch(p)[0] if p.batch_shape else p, "3", layer)


@pytest.mark.parametrize("op", ["mean", "weighted", "take", "topk", "where"])
def test_reductions_commute_with_touch(op):
    pop = distinct_population(mlp(), 4)
    pop = nf.configure_buffer(nf.add_buffer(pop, "2.count", torch.zeros(())), "2.count", policy="mean")
    fns = {
        "mean": nf.mean,
        "weighted": lambda p: nf.mean(p, weights=[1, 2, 3, 4]),
        "take": lambda p: nf.take(p, [3, 1]),
        "topk": lambda p: nf.topk(p, [0.1, 0.4, 0.2, 0.3], 2)[0],
        "where": lambda p: nf.where(torch.tensor([True, False, True, False]), p, nf.take(p, [1, 2, 3, 0])),
    }
    fn = fns[op]
    applied = fn(pop)
    grow(pop)
    a = nf.touch(applied)
    b = fn(nf.touch(pop))
    assert a.version == b.version == pop.version + 1
    assert a.schema.leaf_keys == b.schema.leaf_keys
    for key, x, y in zip(a.schema.leaf_keys, a.leaves, b.leaves):
        assert torch.allclose(x, y, atol=1e-6), key


# populations without per-particle tensors keep their batch shape ----------------------------------

def _all_shared():
    """A Linear whose tensors are all shared: a model with parameters but no leaves."""
    return nf.configure(nf.from_module(nn.Linear(3, 2)), "", operational=False, clone=False)


def _leafless_cases():
    from nytorch_func import evolution as ev
    return {
        "mean_2d": (lambda p, pop, grid: nf.mean(grid), (4,)),
        "weighted_mean_2d": (lambda p, pop, grid: nf.mean(grid, weights=[1.0, 2.0, 3.0]), (4,)),
        "mean": (lambda p, pop, grid: nf.mean(pop), ()),
        "where": (lambda p, pop, grid: nf.where(torch.tensor([True, False] * 2), pop, pop), (4,)),
        "where_singles": (lambda p, pop, grid: nf.where([True, False, True], p, p), (3,)),
        "take_2d": (lambda p, pop, grid: nf.take(grid, [2, 0]), (2, 4)),
        "topk": (lambda p, pop, grid: nf.topk(pop, [1.0, 3.0, 2.0, 0.0], 2)[0], (2,)),
        "uniform_crossover": (lambda p, pop, grid: ev.uniform_crossover(pop, p), (4,)),
        "tensor_crossover": (lambda p, pop, grid: ev.tensor_crossover(p, pop), (4,)),
        "gaussian_mutation": (lambda p, pop, grid: ev.gaussian_mutation(pop, 0.1), (4,)),
        "pso_velocity": (lambda p, pop, grid: ev.pso_velocity(pop, pop, pop, p), (4,)),
        "lerp_single_start": (lambda p, pop, grid: nf.lerp(p, pop, 0.5), (4,)),
        "lerp_member_weights": (lambda p, pop, grid: nf.lerp(p, pop, torch.ones(4)), (4,)),
        "grad": (lambda p, pop, grid: nf.grad(lambda q: torch.tensor(float(len(q))))(pop), (4,)),
        "single_plus_population": (lambda p, pop, grid: p + pop, (4,)),
    }


@pytest.mark.parametrize("make", [lambda: nf.from_module(nn.ReLU()), _all_shared],
                         ids=["no_tensors", "all_shared"])
@pytest.mark.parametrize("case", list(_leafless_cases()))
def test_leafless_populations_keep_their_batch_shape_everywhere(make, case):
    p = make()
    pop = nf.population(p, 4)
    grid = nf.stack([pop] * 3)
    assert not pop.leaves and grid.batch_shape == (3, 4)
    op, want = _leafless_cases()[case]
    out = op(p, pop, grid)
    assert isinstance(out, nf.Particle) and tuple(out.batch_shape) == want
