"""Each merge method against the naive per-tensor reference (merge_reference.py) on real models:
MLP, Conv, BatchNorm, a model with a 0-dim parameter; per-model weights and densities; lists
and populations; carried leaves and buffer policies; dtypes."""

import pytest
import torch

import nytorch_func as nf
from nytorch_func import merge

from merge_models import BUILDERS, INPUTS, family
from merge_reference import (merge_dicts, ref_linear, ref_magnitude, ref_outliers, ref_random,
                             ref_slerp, ref_stock, ref_task)

MODELS = sorted(BUILDERS)
W3 = [0.9, 0.4, 1.3]
D3 = [0.3, 0.55, 0.8]


def assert_matches(result, expected, *, atol=1e-6, rtol=1e-5):
    assert result.batch_shape == ()
    for key, want in expected.items():
        got = result[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        if got.is_floating_point():
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=key)
        else:
            assert torch.equal(got, want), key


def expected_task(base, models, weights, **kw):
    sparsify = kw.pop("sparsify_fn", None)
    def one(key, b, ms):
        sp = None if sparsify is None else (lambda i, d: sparsify(i, d))
        return ref_task(b, ms, weights, sparsify=sp, **kw)
    return merge_dicts(base, models, one,
                       mean_buffers=lambda k, b, ms: torch.stack(ms).float().mean(0))


@pytest.mark.parametrize("name", MODELS)
def test_task_arithmetic(name):
    base, models = family(name, 3)
    for normalize in (False, True):
        got = merge.task_arithmetic(base, models, W3, scale=0.8, normalize=normalize)
        assert_matches(got, expected_task(base, models, W3, normalize=normalize, scale=0.8))


@pytest.mark.parametrize("name", MODELS)
def test_ties_per_model_weights_and_densities(name):
    base, models = family(name, 3)
    got = merge.ties(base, nf.stack(models), W3, density=D3, scale=1.2)
    want = expected_task(base, models, W3, consensus=True, normalize=True, scale=1.2,
                         sparsify_fn=lambda i, d: ref_magnitude(d, D3[i]))
    assert_matches(got, want)


@pytest.mark.parametrize("name", MODELS)
def test_ties_one_density_unnormalized(name):
    base, models = family(name, 3, seed=1)
    got = merge.ties(base, models, density=0.25, normalize=False)
    want = expected_task(base, models, [1.0] * 3, consensus=True, normalize=False,
                         sparsify_fn=lambda i, d: ref_magnitude(d, 0.25))
    assert_matches(got, want)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rescale", [True, "inverse", False])
@pytest.mark.parametrize("consensus", [False, True])
def test_dare(name, rescale, consensus):
    base, models = family(name, 3, seed=2)
    got = merge.dare(base, models, W3, density=D3, rescale=rescale, consensus=consensus,
                     generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the reference draws tensor by tensor, model by model
    want = expected_task(base, models, W3, consensus=consensus, normalize=False,
                         sparsify_fn=lambda i, d: ref_random(d, D3[i], rescale, g))
    assert_matches(got, want)


def test_dare_mixed_densities_draw_only_below_one():
    base, models = family("mlp", 3, seed=3)
    dens = [0.5, 1.0, 0.2]
    got = merge.dare(base, models, density=dens, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    want = expected_task(base, models, [1.0] * 3,
                         sparsify_fn=lambda i, d: ref_random(d, dens[i], True, g))
    assert_matches(got, want)


def test_dare_drop_rate_and_rescale_are_right_on_a_large_tensor():
    base = nf.from_module(torch.nn.Linear(200, 200, bias=False)).detach()
    model = base + 1.0
    got = merge.dare(base, [model], density=0.3, rescale="inverse",
                     generator=torch.Generator().manual_seed(0))
    delta = got["weight"] - base["weight"]
    kept = delta.abs() > 1e-6
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(delta[kept], torch.full_like(delta[kept], 1 / 0.3))
    l1 = merge.dare(base, [model], density=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose((l1["weight"] - base["weight"]).abs().sum(), torch.tensor(40000.0),
                          rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("consensus", [False, True])
def test_breadcrumbs(name, consensus):
    base, models = family(name, 3, seed=4)
    gam = [0.05, 0.1, 0.3]
    got = merge.breadcrumbs(base, models, W3, density=D3, gamma=gam, consensus=consensus)
    want = expected_task(base, models, W3, consensus=consensus,
                         sparsify_fn=lambda i, d: ref_outliers(d, D3[i], gam[i]))
    assert_matches(got, want)


def test_breadcrumbs_when_density_and_gamma_overlap_keeps_the_smallest():
    base = nf.from_module(torch.nn.Linear(10, 1, bias=False)).detach()
    delta = torch.arange(1.0, 11.0).reshape(1, 10)
    model = nf.Particle(base.schema, (base["weight"] + delta,), None)
    got = merge.breadcrumbs(base, [model], density=0.8, gamma=0.5)  # 8 kept + 5 dropped > 10
    torch.testing.assert_close(got["weight"] - base["weight"],
                               torch.where(delta <= 8, delta, 0.0))
    got = merge.breadcrumbs(base, [model], density=0.3, gamma=0.2)  # drop 10, 9; keep 8, 7, 6
    torch.testing.assert_close(got["weight"] - base["weight"],
                               torch.where((delta >= 6) & (delta <= 8), delta, 0.0))
    got = merge.breadcrumbs(base, [model], density=0.05, gamma=0.2)  # int(0.5) = 0 kept
    assert torch.equal(got["weight"], base["weight"])


@pytest.mark.parametrize("name", MODELS)
def test_linear(name):
    base, models = family(name, 3, seed=5)
    for normalize in (True, False):
        got = merge.linear(models, W3, normalize=normalize)
        want = merge_dicts(None, models, lambda k, b, ms: ref_linear(ms, W3, normalize),
                           mean_buffers=lambda k, b, ms: ref_linear(ms, W3, True))
        assert_matches(got, want)
    uniform = merge.linear(nf.stack(models))
    for key, t in uniform.params.items():
        if uniform.config(key).operational:
            torch.testing.assert_close(t, torch.stack([m[key] for m in models]).mean(0))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp(name, t):
    base, (a, b) = family(name, 2, seed=6, spread=1.0)
    got = merge.slerp(a, b, t)
    want = merge_dicts(None, [a, b], lambda k, _, ms: ref_slerp(ms[0], ms[1], t),
                       mean_buffers=lambda k, _, ms: torch.lerp(ms[0], ms[1], t))
    assert_matches(got, want, atol=1e-5)


def test_slerp_parallel_antiparallel_and_zero_tensors():
    a = nf.from_module(torch.nn.Linear(4, 4)).detach()
    for b, t in ((a * 3.0, 0.25), (a * -2.0, 0.5), (a * 0.0, 0.4)):
        got = merge.slerp(a, b, t)
        for key in ("weight", "bias"):
            torch.testing.assert_close(got[key], ref_slerp(a[key], b[key], t))
    got = merge.slerp(a, a * 3.0, 0.25)
    torch.testing.assert_close(got["weight"], a["weight"] * 1.5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("n", [2, 4])
def test_model_stock(name, filter_wise, n):
    base, models = family(name, n, seed=7)
    got = merge.model_stock(base, models, filter_wise=filter_wise)
    want = merge_dicts(base, models, lambda k, b, ms: ref_stock(b, ms, filter_wise),
                       mean_buffers=lambda k, b, ms: torch.stack(ms).float().mean(0))
    assert_matches(got, want, atol=1e-5)


def test_model_stock_opposed_models_keep_the_base():
    base = nf.from_module(torch.nn.Linear(3, 3)).detach()
    delta = base.randn(generator=torch.Generator().manual_seed(0))
    got = merge.model_stock(base, [base + delta, base - delta])  # cos = -1: 1 + (n-1)cos = 0
    torch.testing.assert_close(got["weight"], base["weight"])


# carried leaves, buffer policies, populations -------------------------------------------------

def test_non_operational_and_integer_leaves_come_from_the_base():
    base, models = family("scaled", 3)
    assert not torch.equal(models[0]["offset"], base["offset"])
    for got in (merge.ties(base, models, density=0.5), merge.task_arithmetic(base, models),
                merge.model_stock(base, models), merge.dare(base, models, density=0.5),
                merge.breadcrumbs(base, models, density=0.5, gamma=0.1)):
        assert got["offset"] is base["offset"]
    assert torch.equal(merge.linear(models)["offset"], models[0]["offset"])
    assert torch.equal(merge.slerp(models[1], models[2], 0.5)["offset"], models[1]["offset"])


def test_buffer_policies():
    base, models = family("bn", 3)
    base = nf.configure_buffer(base, "1.running_mean", policy="mean")
    base = nf.configure_buffer(base, "1.running_var", policy="reset", value=torch.full((4,), 2.0))
    base = nf.configure_buffer(base, "5", policy="keep")  # every buffer of module 5
    models = [nf.touch(m) for m in models]
    for got in (merge.ties(base, models, density=0.5), merge.task_arithmetic(base, models)):
        torch.testing.assert_close(got["1.running_mean"],
                                   torch.stack([m["1.running_mean"] for m in models]).mean(0))
        assert torch.equal(got["1.running_var"], torch.full((4,), 2.0))
        assert got["5.running_mean"] is base["5.running_mean"]  # "keep": the base's
    soup = merge.linear(models, [1.0, 0.0, 3.0])
    torch.testing.assert_close(soup["1.running_mean"],
                               (models[0]["1.running_mean"] + 3 * models[2]["1.running_mean"]) / 4)
    assert torch.equal(soup["5.running_var"], models[0]["5.running_var"])
    plain = [nf.touch(m) for m in family("bn", 3)[1]]  # the default policy: floats averaged
    torch.testing.assert_close(merge.linear(plain)["5.running_mean"],
                               torch.stack([m["5.running_mean"] for m in plain]).mean(0))


def test_list_and_population_give_the_same_merge_and_result_runs():
    base, models = family("bn", 3)
    pop = nf.stack(models)
    x = INPUTS["bn"]()
    for fn in (lambda ms: merge.ties(base, ms, W3, density=D3),
               lambda ms: merge.linear(ms, W3),
               lambda ms: merge.model_stock(base, ms),
               lambda ms: merge.breadcrumbs(base, ms, density=0.5, gamma=0.1)):
        a, b = fn(models), fn(pop)
        for ta, tb in zip(a.leaves, b.leaves):
            assert torch.equal(ta, tb)
        assert nf.apply(a.eval(), x).shape == (3, 3)


def test_models_at_an_older_version_are_touched_first():
    base, models = family("mlp", 2)
    base2 = nf.add_param(base, "extra", torch.nn.Parameter(torch.ones(3)))
    got = merge.task_arithmetic(base2, models)  # models at version 0: touched (extra = ones)
    assert got.version == base2.version and torch.equal(got["extra"], torch.ones(3))
    got = merge.ties(base, models, density=0.5)  # base at version 0 too: both touched
    assert got.version == base2.version


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_are_kept_and_half_types_merge_in_float32(dtype):
    base, models = family("mlp", 3, dtype=dtype)
    got = merge.ties(base, models, W3, density=D3)
    want = expected_task(base, models, W3, consensus=True, normalize=True,
                         sparsify_fn=lambda i, d: ref_magnitude(d, D3[i]))
    assert_matches(got, want, atol=1e-2 if dtype != torch.float64 else 1e-12,
                   rtol=1e-2 if dtype != torch.float64 else 1e-12)
    for fn in (lambda: merge.linear(models), lambda: merge.slerp(models[0], models[1], 0.3),
               lambda: merge.model_stock(base, models),
               lambda: merge.dare(base, models, density=0.5),
               lambda: merge.breadcrumbs(base, models, density=0.5, gamma=0.1)):
        out = fn()
        assert all(t.dtype == dtype for t in out.leaves)
        assert all(bool(torch.isfinite(t).all()) for t in out.leaves)


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_parameters_merge_linearly_and_are_refused_by_sign_methods():
    base = nf.from_module(torch.nn.Linear(3, 3).to(torch.complex64)).detach()
    models = [base + 1.0, base * 2.0]
    got = merge.task_arithmetic(base, models, [0.5, 0.5])
    torch.testing.assert_close(got["weight"], base["weight"] * 1.5 + 0.5)
    assert merge.linear(models)["weight"].dtype == torch.complex64
    with pytest.raises(nf.SchemaError, match="ties: parameter 'weight' is complex"):
        merge.ties(base, models, density=0.5)
    with pytest.raises(nf.SchemaError, match="slerp"):
        merge.slerp(base, models[0], 0.5)


def test_ties_keeps_exactly_k_on_ties_lower_index_first():
    base = nf.from_module(torch.nn.Linear(8, 1, bias=False)).detach()
    delta = torch.tensor([[1.0, -2.0, 2.0, 1.0, 2.0, -1.0, 0.5, 2.0]])
    model = nf.Particle(base.schema, (base["weight"] + delta,), None)
    got = merge.ties(base, [model], density=0.25)  # k = 2 of the four 2.0 magnitudes
    torch.testing.assert_close(got["weight"] - base["weight"],
                               torch.tensor([[0.0, -2.0, 2.0, 0, 0, 0, 0, 0]]))
    dens = torch.tensor([0.25])  # the traced path (a sort) gives the same entries
    pop = torch.func.vmap(lambda d: merge.ties(base, [model], density=d))(dens.unsqueeze(0))
    torch.testing.assert_close(pop["weight"][0], got["weight"])


def test_empty_and_zero_dim_parameters():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.empty = torch.nn.Parameter(torch.zeros(0, 3))
            self.s = torch.nn.Parameter(torch.tensor(1.5))

    base = nf.from_module(Odd()).detach()
    models = [base + 1.0, base - 3.0]
    for got in (merge.ties(base, models, density=0.5), merge.dare(base, models, density=0.5),
                merge.breadcrumbs(base, models, density=0.5, gamma=0.2),
                merge.model_stock(base, models), merge.linear(models),
                merge.slerp(models[0], models[1], 0.5)):
        assert got["empty"].shape == (0, 3) and got["s"].shape == ()
    # TIES on a 0-dim parameter: k = max(1, 0) = 1; +1 and -3 elect '-' (sum -2)
    assert float(merge.ties(base, models, density=0.5)["s"]) == pytest.approx(1.5 - 3.0)


def test_gradients_flow_to_weights():
    base, models = family("mlp", 3)
    x = INPUTS["mlp"]()

    def loss(w, fn):
        return nf.apply(fn(w), x).pow(2).mean()

    for fn in (lambda w: merge.linear(models, w),
               lambda w: merge.task_arithmetic(base, models, w),
               lambda w: merge.ties(base, models, w, density=0.5)):
        w = torch.tensor(W3, requires_grad=True)
        g = torch.func.grad(loss)(torch.tensor(W3), fn)
        loss(w, fn).backward()
        torch.testing.assert_close(g, w.grad)
        assert bool(g.abs().sum() > 0)


def test_ties_elects_plus_on_an_exact_tie():
    base = nf.from_module(torch.nn.Linear(3, 2)).detach() * 0.0  # exact deltas of +-1
    got = merge.ties(base, [base + 1.0, base - 1.0], density=1.0)  # sum 0 at every entry: '+'
    torch.testing.assert_close(got["weight"], base["weight"] + 1.0)


def test_slerp_falls_back_to_lerp_exactly_above_the_threshold():
    class Vec(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = torch.nn.Parameter(v)

    def pair(cos):
        theta = torch.tensor(cos, dtype=torch.float64).acos()
        a = nf.from_module(Vec(torch.tensor([1.0, 0.0], dtype=torch.float64))).detach()
        b = nf.Particle(a.schema, (torch.stack([theta.cos(), theta.sin()]),), None)
        return a, b

    a, b = pair(0.9997)  # |cos| > 0.9995: linear
    torch.testing.assert_close(merge.slerp(a, b, 0.5)["v"], (a["v"] + b["v"]) / 2,
                               rtol=1e-12, atol=0)
    a, b = pair(0.999)  # below: on the circle (norm 1)
    mid = merge.slerp(a, b, 0.5)["v"]
    assert abs(float(mid.norm()) - 1.0) < 1e-12
    torch.testing.assert_close(mid, torch.tensor(ref_slerp(a["v"], b["v"], 0.5).tolist(),
                                                 dtype=torch.float64))
