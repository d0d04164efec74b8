"""Refusals: typed errors that name the function and leave every input unchanged."""

import threading

import pytest
import torch

import nytorch_func as nf
from nytorch_func import merge

from merge_models import family


def snapshot(*ps):
    return [[t.clone() for t in p.leaves] for p in ps]


def same(ps, snap):
    return all(torch.equal(a, b) for p, s in zip(ps, snap) for a, b in zip(p.leaves, s))


@pytest.fixture
def setup():
    base, models = family("bn", 3)
    return base, models, nf.stack(models)


ALL = {
    "linear": lambda base, ms, **kw: merge.linear(ms, **kw),
    "task_arithmetic": lambda base, ms, **kw: merge.task_arithmetic(base, ms, **kw),
    "ties": lambda base, ms, **kw: merge.ties(base, ms, density=kw.pop("density", 0.5), **kw),
    "dare": lambda base, ms, **kw: merge.dare(base, ms, density=kw.pop("density", 0.5), **kw),
    "breadcrumbs": lambda base, ms, **kw: merge.breadcrumbs(
        base, ms, density=kw.pop("density", 0.5), gamma=0.1, **kw),
    "model_stock": lambda base, ms, **kw: merge.model_stock(base, ms, **kw),
}


@pytest.mark.parametrize("method", sorted(ALL))
def test_mixed_species_is_refused(method, setup):
    base, models, pop = setup
    other = nf.from_module(torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3), torch.nn.BatchNorm1d(3))).detach()
    snap = snapshot(base, *models)
    with pytest.raises(nf.SpeciesMismatchError, match=f"^{method}: models\\[1\\] is of species"):
        ALL[method](base, [models[0], other, models[2]])
    if method != "linear":
        with pytest.raises(nf.SpeciesMismatchError, match=f"^{method}: "):
            ALL[method](other, pop)
    with pytest.raises(nf.SpeciesMismatchError, match="slerp: a is of species"):
        merge.slerp(models[0], other, 0.5)
    assert issubclass(nf.SpeciesMismatchError, TypeError)
    assert same([base, *models], snap)


@pytest.mark.parametrize("method", sorted(ALL))
def test_mismatched_integer_buffers_are_refused_unless_reset(method, setup):
    base, models, _ = setup
    bumped = list(models[1].leaves)
    i = models[1].schema.leaf_index["1.num_batches_tracked"]
    bumped[i] = bumped[i] + 7
    odd = nf.Particle(models[1].schema, tuple(bumped), None)
    ms = [models[0], odd, models[2]]
    snap = snapshot(base, *ms)
    with pytest.raises(nf.SchemaError, match=f"^{method}: integer buffer '1.num_batches_tracked' "
                                             "differs across the models"):
        ALL[method](base, ms)
    assert same([base, *ms], snap)
    reset = nf.configure_buffer(base, "1.num_batches_tracked", policy="reset")
    got = ALL[method](reset, ms)
    assert int(got["1.num_batches_tracked"]) == int(base["1.num_batches_tracked"])


def test_slerp_integer_buffers_must_agree(setup):
    _, models, _ = setup
    leaves = list(models[1].leaves)
    i = models[1].schema.leaf_index["5.num_batches_tracked"]
    leaves[i] = leaves[i] + 1
    with pytest.raises(nf.SchemaError, match="slerp: integer buffer '5.num_batches_tracked'"):
        merge.slerp(models[0], nf.Particle(models[1].schema, tuple(leaves), None), 0.5)


@pytest.mark.parametrize("method", ["ties", "dare", "breadcrumbs"])
@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), [0.5, 0.0, 0.5],
                                     torch.tensor([0.5, 2.0, 0.5])])
def test_density_outside_0_1_is_refused(method, density, setup):
    base, models, pop = setup
    snap = snapshot(base, pop)
    with pytest.raises(nf.SchemaError, match=rf"^{method}: every density must be in \(0, 1\]"):
        ALL[method](base, pop, density=density)
    assert same([base, pop], snap)
    assert issubclass(nf.SchemaError, ValueError)


def test_gamma_outside_0_1_is_refused(setup):
    base, models, _ = setup
    with pytest.raises(nf.SchemaError, match=r"breadcrumbs: every gamma must be in \[0, 1\]"):
        merge.breadcrumbs(base, models, density=0.5, gamma=1.5)


def test_one_model_where_two_are_needed(setup):
    base, models, pop = setup
    with pytest.raises(nf.SchemaError, match="^model_stock: needs at least two models, got 1"):
        merge.model_stock(base, [models[0]])
    with pytest.raises(nf.SchemaError, match="^model_stock: needs at least two models, got 1"):
        merge.model_stock(base, nf.take(pop, [1]))
    with pytest.raises(nf.SchemaError, match="^ties: needs at least one model, got 0"):
        merge.ties(base, [], density=0.5)
    with pytest.raises(nf.SchemaError, match="^linear: needs at least one model, got 0"):
        merge.linear([])


@pytest.mark.parametrize("weights", [[1.0, 2.0], torch.ones(4), torch.ones(2, 3), [[1.0] * 3]])
def test_bad_weight_shapes(weights, setup):
    base, models, pop = setup
    with pytest.raises(nf.SchemaError, match="^ties: weights must be one number or one per "
                                             "model"):
        merge.ties(base, pop, weights, density=0.5)


def test_wrong_types_are_type_errors(setup):
    base, models, pop = setup
    cases = [
        (lambda: merge.ties(base, pop, "heavy", density=0.5), "ties: weights must be"),
        (lambda: merge.ties(base, pop, ["a", 1, 2], density=0.5), "ties: weights must be"),
        (lambda: merge.ties(base, pop, density="half"), "ties: density must be"),
        (lambda: merge.ties(base, pop, density=None), "ties: density is required"),
        (lambda: merge.ties(base["0.weight"], pop, density=0.5), "ties: expected base"),
        (lambda: merge.ties(base, [base, 3], density=0.5), r"ties: expected models .*\[1\]"),
        (lambda: merge.linear(torch.ones(3)), "linear: expected models"),
        (lambda: merge.ties(base, pop, normalize="yes", density=0.5), "ties: normalize"),
        (lambda: merge.dare(base, pop, density=0.5, rescale="l2"), "dare: rescale"),
        (lambda: merge.dare(base, pop, density=0.5, consensus=1), "dare: consensus"),
        (lambda: merge.dare(base, pop, density=0.5, generator=0), "dare: generator"),
        (lambda: merge.slerp(models[0], models[1], "mid"), "slerp: t must be"),
        (lambda: merge.slerp(models[0], pop, 0.5), "slerp: b must be a single"),
        (lambda: merge.task_arithmetic(base, pop, scale=[1.0]), "task_arithmetic: scale"),
        (lambda: merge.model_stock(base, pop, filter_wise="rows"), "model_stock: filter_wise"),
        (lambda: merge.ties(base, pop, torch.tensor([True, False, True]), density=0.5),
         "ties: weights must be real"),
    ]
    snap = snapshot(base, pop)
    for call, match in cases:
        with pytest.raises((TypeError, ValueError), match=f"^{match}") as info:
            call()
        assert isinstance(info.value, nf.NytorchFuncError), match
    assert same([base, pop], snap)
    with pytest.raises(TypeError):
        merge.ties(base, pop, density="half")


def test_population_shapes_are_checked(setup):
    base, models, pop = setup
    with pytest.raises(nf.SchemaError, match="ties: base must be a single particle"):
        merge.ties(pop, pop, density=0.5)
    deep = nf.stack([pop, pop])
    with pytest.raises(nf.SchemaError, match="ties: models must be a population with one batch"):
        merge.ties(base, deep, density=0.5)
    with pytest.raises(nf.SchemaError, match=r"ties: models\[0\] is a population"):
        merge.ties(base, [pop, pop], density=0.5)
    with pytest.raises(nf.SchemaError, match="ties: models must be a population"):
        merge.ties(base, base, density=0.5)
    with pytest.raises(nf.SchemaError, match="task_arithmetic: scale must be one number"):
        merge.task_arithmetic(base, pop, scale=torch.ones(3))


def test_zero_weight_sum_and_non_finite_weights(setup):
    base, models, pop = setup
    with pytest.raises(nf.SchemaError, match="linear: weights sum to zero"):
        merge.linear(pop, torch.tensor([1.0, -1.0, 0.0]))
    merge.linear(pop, [1.0, -1.0, 0.0], normalize=False)
    with pytest.raises(nf.SchemaError, match="ties: every weights must be finite"):
        merge.ties(base, pop, [1.0, float("inf"), 1.0], density=0.5)
    # task arithmetic's normalize: a zero sum counts as 1 (mergekit), no error
    got = merge.task_arithmetic(base, pop, [1.0, -1.0, 0.0], normalize=True)
    plain = merge.task_arithmetic(base, pop, [1.0, -1.0, 0.0])
    torch.testing.assert_close(got["0.weight"], plain["0.weight"])


def test_concurrent_merges_agree():
    base, models = family("mlp", 3)
    want = merge.ties(base, models, density=0.4)
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                results.append(merge.ties(base, models, density=0.4))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 40
    for r in results:
        assert all(torch.equal(a, b) for a, b in zip(r.leaves, want.leaves))
