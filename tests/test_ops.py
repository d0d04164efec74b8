"""Particle arithmetic against a hand-written per-tensor reference, configs, random init, errors."""

import operator
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import NytorchFuncError, SchemaError, SpeciesMismatchError

from helpers import bn_net, mlp, unchanged

BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
          "truediv": operator.truediv, "pow": operator.pow}


def _positive(p):
    """Operational params moved into (0.5, 1.5): keeps ``**`` real-valued."""
    return nf.map_params(lambda t, cfg: t.detach().abs().remainder(1.0) + 0.5, p)


@pytest.fixture
def pair():
    """Two particles of one species with a non-operational param and BatchNorm buffers."""
    p = nf.configure(nf.from_module(bn_net()), "3.bias", operational=False)
    p = _positive(p)
    return p, _positive(p.randn(generator=torch.Generator().manual_seed(1)))


def _reference(p, fn):
    """What an op must give, tensor by tensor: fn on operational params, the rest from p."""
    out = {}
    for spec in p.schema.specs:
        t = p[spec.key]
        if spec.kind == "param" and spec.config.operational and spec.leaf:
            out[spec.key] = fn(spec.key, t)
        else:
            out[spec.key] = t
    return out


def _check(result, p, expected):
    assert isinstance(result, nf.Particle) and result.schema is p.schema
    for spec in p.schema.specs:
        got = result[spec.key]
        if spec.kind == "param" and spec.config.operational and spec.leaf:
            assert torch.allclose(got, expected[spec.key], atol=1e-6, equal_nan=True), spec.key
        else:  # carried over from the left particle operand: the very object
            assert got is p[spec.key], spec.key


@pytest.mark.parametrize("name", BINARY)
def test_particle_op_particle(pair, name):
    p, q = pair
    fn = BINARY[name]
    _check(fn(p, q), p, _reference(p, lambda k, t: fn(t, q[k])))
    _check(fn(q, p), q, _reference(q, lambda k, t: fn(t, p[k])))


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("scalar", [3, -2, 0.5, -1.25, "tensor0"], ids=str)
def test_particle_op_scalar_and_reverse(pair, name, scalar):
    p, _ = pair
    fn = BINARY[name]
    s = torch.tensor(1.5) if scalar == "tensor0" else scalar
    _check(fn(p, s), p, _reference(p, lambda k, t: fn(t, s)))
    _check(fn(s, p), p, _reference(p, lambda k, t: fn(s, t)))


@pytest.mark.parametrize("name", BINARY)
def test_population_op_per_member_tensor(name):
    pop = nf.population(_positive(nf.from_module(mlp())), 4, init="rand",
                        generator=torch.Generator().manual_seed(2))
    pop = pop + 0.5
    c = torch.tensor([0.5, 1.0, 2.0, 3.0])
    fn = BINARY[name]

    def col(t):
        return c.reshape(4, *([1] * (t.dim() - 1)))

    _check(fn(pop, c), pop, _reference(pop, lambda k, t: fn(t, col(t))))
    _check(fn(c, pop), pop, _reference(pop, lambda k, t: fn(col(t), t)))
    # member i of the result is member i combined with its own coefficient
    for i, member in enumerate(nf.unstack(fn(pop, c))):
        ref = fn(nf.unstack(pop)[i], float(c[i]))
        assert torch.allclose(member["0.weight"], ref["0.weight"], atol=1e-6)


def test_unary_ops(pair):
    p, _ = pair
    _check(-p, p, _reference(p, lambda k, t: -t))
    _check(abs(-p), p, _reference(p, lambda k, t: t.abs()))
    pos = +p
    _check(pos, p, _reference(p, lambda k, t: t))
    assert pos is not p


def test_mixing_expression_matches_reference(pair):
    p, q = pair
    r = 0.3 * p + (1 - 0.3) * q - p / 4 + 2 ** (q * 0.1)
    _check(r, p, _reference(p, lambda k, t: 0.3 * t + 0.7 * q[k] - t / 4 + 2 ** (q[k] * 0.1)))


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.ones(3), torch.ones(2, 3)],
                         ids=["len2", "len3", "2x3"])
def test_single_particle_refuses_shaped_tensor(bad):
    """Regression: a tensor with dims used to broadcast silently along a parameter's first dim."""
    p = nf.from_module(nn.Linear(3, 2))
    with unchanged(p):
        for fn in BINARY.values():
            with pytest.raises(SchemaError, match=r"one coefficient per population member"):
                fn(p, bad)
            with pytest.raises(SchemaError, match=r"got shape"):
                fn(bad, p)


def test_population_refuses_wrong_member_count():
    pop = nf.population(mlp(), 4)
    with pytest.raises(SchemaError, match=r"shape \(4,\).*got shape \(3,\)"):
        pop * torch.ones(3)
    with pytest.raises(SchemaError, match=r"got shape \(4, 1\)"):
        pop * torch.ones(4, 1)


@pytest.mark.parametrize("other", ["a", None, [1.0]], ids=repr)
def test_unsupported_operands(pair, other):
    p, _ = pair
    with pytest.raises(TypeError):
        p + other
    with pytest.raises(TypeError):
        other * p


@pytest.mark.parametrize("other", [1j, torch.tensor(1j), torch.ones(4, dtype=torch.complex64)],
                         ids=["1j", "tensor(1j)", "per-member complex"])
def test_complex_coefficients_refused_for_real_parameters(pair, other):
    p, _ = pair
    pop = nf.population(p, 4)
    for operand in (p, pop):
        with unchanged(operand):
            for call in (lambda: operand + other, lambda: other * operand):
                with pytest.raises(SchemaError, match="complex coefficient cannot be stored"):
                    call()


# numpy operands and bools ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("make", [np.float64, np.float32, np.int64, float],
                         ids=["float64", "float32", "int64", "python"])
def test_numpy_scalars_on_either_side_are_numbers(name, make):
    pop = _positive(nf.population(mlp(), 3, generator=torch.Generator().manual_seed(0)))
    op = BINARY[name]
    w = make(2)
    for got, want in ((op(w, pop), op(2.0, pop)), (op(pop, w), op(pop, 2.0))):
        assert isinstance(got, nf.Particle) and got.batch_shape == (3,)
        for a, b in zip(got.leaves, want.leaves):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_numpy_arrays_are_per_member_coefficients():
    pop = nf.population(mlp(), 4, generator=torch.Generator().manual_seed(0))
    w = np.linspace(0.0, 1.0, 4)  # float64: cast to each float32 leaf, as a tensor would be
    want = pop * torch.tensor(w)
    for got in (w * pop, pop * w, nf.lerp(pop, pop[0], w) * 1.0):
        assert isinstance(got, nf.Particle) and got.batch_shape == (4,)
        assert all(a.dtype == torch.float32 for a in got.leaves)
    assert all(torch.equal(a, b) for a, b in zip((w * pop).leaves, want.leaves))
    assert torch.equal(nf.lerp(pop, pop[0], w)["0.weight"],
                       nf.lerp(pop, pop[0], torch.tensor(w))["0.weight"])
    with unchanged(pop):
        with pytest.raises(SchemaError, match="one coefficient per population member"):
            np.ones(3) * pop
        with pytest.raises(nf.ArgumentTypeError, match="numpy array of dtype object"):
            pop * np.array([object()] * 4)
        with pytest.raises(SchemaError, match="complex coefficient"):
            np.complex128(1j) * pop
        with pytest.raises(TypeError):  # a numpy ufunc refuses particles, as for any object
            np.add(pop, 1.0)


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("flag", [True, False, np.bool_(True), torch.tensor(True)],
                         ids=["True", "False", "np_bool", "tensor_bool"])
def test_bools_are_the_numbers_0_and_1(name, flag):
    p = _positive(nf.from_module(mlp()))
    op = BINARY[name]
    n = int(bool(flag))
    for got, want in ((op(p, flag), op(p, n)), (op(flag, p), op(n, p))):
        for a, b in zip(got.leaves, want.leaves):
            assert a.dtype == b.dtype and torch.allclose(a, b, equal_nan=True)
    pop = nf.population(p, 2)
    per_member = torch.tensor([True, False])
    assert torch.equal((pop - per_member)["0.weight"], (pop - torch.tensor([1.0, 0.0]))["0.weight"])
    assert torch.equal(nf.lerp(p, p.zeros(), True)["0.weight"], p.zeros()["0.weight"])


# configs -------------------------------------------------------------------------------------

def test_shared_params_stay_the_schema_tensor():
    p = nf.configure(nf.from_module(mlp()), "0", operational=False, clone=False)
    shared_w = p.schema.shared["0.weight"]
    assert "0.weight" not in p.schema.leaf_keys and p["0.weight"] is shared_w
    q = p.randn()
    for r in (p + q, 2 * p, p - 1, -q, q ** 2, p.clone(), p.detach(), nf.zeros_like(q),
              nf.map_params(lambda t, c: t * 0, p, operational_only=False)):
        assert r["0.weight"] is shared_w and r["0.bias"] is p.schema.shared["0.bias"]
    assert not torch.equal((p + q)["2.weight"], p["2.weight"])


def test_custom_attrs_follow_the_schema():
    p = nf.configure(nf.from_module(mlp()), "2.weight", mutation_scale=0.1, tag="head")
    r = 2 * p + p.randn()
    assert r.config("2.weight").mutation_scale == 0.1 and r.config("2.weight").tag == "head"
    assert r.config("0.weight") == nf.ParamConfig()
    seen = {}
    nf.map_params(lambda t, cfg: seen.setdefault(cfg.get("tag"), t) is None or t, r)
    assert set(seen) == {None, "head"}


def test_map_params(pair):
    p, q = pair
    calls = []

    def fn(a, b, cfg):
        calls.append(cfg)
        return a * 10 + b

    r = nf.map_params(fn, p, q)
    _check(r, p, _reference(p, lambda k, t: t * 10 + q[k]))
    assert len(calls) == len(p.schema.op_index)
    r2 = nf.map_params(lambda t, cfg: torch.zeros_like(t), p, operational_only=False)
    assert not r2["3.bias"].any() and not r2["0.weight"].any()
    assert r2["1.running_var"] is p["1.running_var"]  # buffers are never mapped
    with pytest.raises(NytorchFuncError, match=r"fn returned float for '0\.weight'"):
        nf.map_params(lambda t, cfg: 1.0, p)


def test_clone_and_detach(pair):
    p, _ = pair
    w = p["0.weight"].detach().requires_grad_(True)
    p = nf.map_params(lambda t, cfg: w * 1 if t.shape == w.shape else t, p)
    c, d = p.clone(), p.detach()
    assert c["0.weight"] is not p["0.weight"] and torch.equal(c["0.weight"], p["0.weight"])
    assert c["0.weight"].grad_fn is not None and d["0.weight"].grad_fn is None
    assert c.schema is p.schema and d.schema is p.schema


@pytest.mark.parametrize("how", ["randn", "rand"])
def test_random_init_reproduces_with_generators(pair, how):
    p, _ = pair
    like = {"randn": nf.randn_like, "rand": nf.rand_like}[how]
    a = like(p, generator=torch.Generator().manual_seed(7))
    b = getattr(p, how)(generator=torch.Generator().manual_seed(7))
    c = like(p, generator=torch.Generator().manual_seed(8))
    for spec in p.schema.leaf_specs:
        k = spec.key
        if spec.kind == "param" and spec.config.operational:
            assert torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k]), k
            assert a[k].requires_grad == p[k].requires_grad and a[k].dtype == p[k].dtype
            assert a[k].is_leaf
        else:
            assert a[k] is p[k], k
    if how == "rand":
        assert all(((a[k] >= 0) & (a[k] < 1)).all() for k in ("0.weight", "3.weight"))
    torch.manual_seed(5)
    x = getattr(p, how)()
    torch.manual_seed(5)
    y = getattr(p, how)()
    assert torch.equal(x["0.weight"], y["0.weight"])


def test_zeros_and_full_like(pair):
    p, _ = pair
    _check(nf.zeros_like(p), p, _reference(p, lambda k, t: torch.zeros_like(t)))
    _check(p.zeros(), p, _reference(p, lambda k, t: torch.zeros_like(t)))
    _check(nf.full_like(p, 2.5), p, _reference(p, lambda k, t: torch.full_like(t, 2.5)))


# species and versions -------------------------------------------------------------------------

def test_cross_species_is_refused():
    a, b = nf.from_module(mlp()), nf.from_module(mlp())
    with unchanged(a, b):
        for fn in BINARY.values():
            with pytest.raises(SpeciesMismatchError, match=a.species.name):
                fn(a, b)
        with pytest.raises(SpeciesMismatchError, match="map_params"):
            nf.map_params(lambda x, y, cfg: x + y, a, b)


def test_different_versions_are_touched_first():
    old = nf.from_module(mlp())
    q = old.randn(generator=torch.Generator().manual_seed(0))
    extra = nn.Parameter(torch.full((2,), 3.0))
    new = nf.add_param(nf.del_param(q, "2.bias"), "extra", extra)
    for r in (old + new, new + old, nf.map_params(lambda x, y, c: x + y, old, new)):
        assert r.schema is new.schema and "2.bias" not in r.params
        assert torch.equal(r["extra"], torch.full((2,), 6.0))  # snapshot clone + the object
        assert torch.allclose(r["0.weight"], old["0.weight"] + q["0.weight"])
    assert old.version == 0 and "2.bias" in old.params  # inputs unchanged


# python -O ----------------------------------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import torch, nytorch_func as nf
    torch.set_num_threads(1)
    print(__debug__)
    torch.manual_seed(0)
    p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)))
    q = p.randn(generator=torch.Generator().manual_seed(1))
    p = nf.configure(p, "1.bias", operational=False)
    r = 0.5 * p + 0.5 * q - 2 / (abs(q) + 1) + q ** 2
    r = nf.add_param(r, "extra", torch.nn.Parameter(torch.ones(2)))
    out = nf.apply(nf.touch(q), torch.ones(1, 3))
    print([round(float(t.sum()), 5) for t in r.leaves], round(float(out.sum()), 5))
    for bad in (lambda: nf.ParamConfig(operational=1), lambda: nf.del_param(r, "nope"),
                lambda: r + nf.from_module(torch.nn.Linear(1, 1)), lambda: nf.touch(r, to=0),
                lambda: r * torch.ones(3)):
        try:
            bad()
            print("no error")
        except nf.NytorchFuncError as err:
            print(type(err).__name__, str(err).split(":")[0])
    print(len(r.species), r.version)
""")


def test_python_O_parity(tmp_path):
    script = tmp_path / "parity.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, *flags, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for flags in ([], ["-O"])]  # both at once: each start pays torch's import
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out)
    (debug, normal), (optimized, rest) = (out.split("\n", 1) for out in outs)
    assert (debug, optimized) == ("True", "False")  # -O really removed asserts
    assert normal == rest
    assert outs[0].count("Error") == 5 and "no error" not in outs[0]


_floats = st.floats(-4, 4, allow_nan=False, width=32)


@given(a=_floats, b=_floats)
def test_linear_combination_matches_reference(a, b):
    p = nf.configure(nf.from_module(bn_net()), "0.bias", operational=False)
    q = p.randn(generator=torch.Generator().manual_seed(0))
    r = a * p + b * q - q * a
    _check(r, p, _reference(p, lambda k, t: a * t + b * q[k] - q[k] * a))
    zero = p - p
    _check(zero, p, _reference(p, lambda k, t: torch.zeros_like(t)))


# mixed batch shapes: a single particle with a population ---------------------------------------

def test_single_particle_with_population_broadcasts_every_leaf():
    """Regression: p + pop gave q['bias'].shape == (1,) with q.batch_shape == (3,): the leaves
    carried over from the left (single) operand kept no batch dimension."""
    p = nf.configure(nf.from_module(nn.Linear(2, 1)), "bias", operational=False)
    pop = nf.population(p, 3, generator=torch.Generator().manual_seed(0))
    for q in (p + pop, pop + p, p - pop, p * pop, pop / p):
        assert q.batch_shape == (3,)
        assert q["bias"].shape == (3, 1) and q["weight"].shape == (3, 1, 2)
    q = p + pop
    assert torch.equal(q["weight"], p["weight"] + pop["weight"])
    assert torch.equal(q["bias"], p["bias"].expand(3, 1))  # from the left operand, per member
    assert q["bias"].is_contiguous() and q["bias"].data_ptr() != p["bias"].data_ptr()
    assert (pop + p)["bias"] is pop["bias"]  # a left operand of the result's shape: carried as is
    members = nf.unstack(q)
    assert all(torch.equal(m["bias"], p["bias"]) for m in members)


def test_single_bn_particle_with_population_keeps_buffers_per_member(pair):
    p, q = pair
    pop = nf.stack([q, q.randn(), q.randn()])
    r = 0.5 * p + 0.5 * pop
    assert r.batch_shape == (3,)
    for spec in r.schema.leaf_specs:
        assert r[spec.key].shape == (3, *spec.shape), spec.key
    assert torch.equal(r["1.running_var"][2], p["1.running_var"])
    assert r["1.num_batches_tracked"].dtype == torch.long
    out, after = torch.func.vmap(nf.apply_with_state, in_dims=(0, None))(r, torch.randn(5, 4))
    assert after["1.running_mean"].shape == (3, 6)
    assert not torch.equal(after["1.running_mean"][0], after["1.running_mean"][1])


def test_populations_broadcast_like_numpy():
    p = nf.from_module(bn_net())
    pop = nf.population(p, 3)
    grid = nf.stack([pop, pop.randn()])  # batch (2, 3)
    r = pop + grid
    assert r.batch_shape == (2, 3)
    assert all(t.shape[:2] == (2, 3) for t in r.leaves)
    assert torch.equal(r["1.running_mean"][1], pop["1.running_mean"])
    with pytest.raises(SchemaError, match=r"\(2,\) and \(3,\) do not broadcast"):
        nf.stack([p, p]) + pop


def test_mixed_batch_shapes_compile_without_graph_breaks():
    p = nf.configure(nf.from_module(bn_net()), "3.bias", operational=False).detach()
    pop = nf.population(p, 4).detach()

    @torch.compile(fullgraph=True, backend="eager")
    def step(a, b):
        return 0.5 * a + 0.5 * b

    out = step(p, pop)
    assert out.batch_shape == (4,) and out["3.bias"].shape == (4, 2)
    assert torch.allclose(out["0.weight"], 0.5 * p["0.weight"] + 0.5 * pop["0.weight"])


def test_map_params_broadcasts_a_single_particle_with_a_population():
    p = nf.from_module(bn_net())
    pop = nf.population(p, 2)
    r = nf.map_params(lambda a, b, cfg: a - b, p, pop)
    assert r.batch_shape == (2,) and r["1.running_mean"].shape == (2, 6)
    assert torch.equal(r["0.weight"], p["0.weight"] - pop["0.weight"])


def test_map_params_refuses_results_that_do_not_fit_the_schema():
    p = nf.from_module(bn_net())
    pop = nf.population(p, 3)
    with unchanged(pop):
        with pytest.raises(SchemaError, match=r"for '0\.weight'; it must keep shape \(3, 6, 4\)"):
            nf.map_params(lambda t, cfg: t.sum(0), pop)  # a reduction is not a map: use nf.mean
        with pytest.raises(SchemaError, match=r"float16 for '0\.weight'.*dtype torch\.float32"):
            nf.map_params(lambda t, cfg: t.half(), pop)


# particles without tensors, integer parameters, devices -----------------------------------------

def test_arithmetic_on_particles_without_tensors():
    """Regression: the all-operational fast path handed an empty list to torch._foreach_*."""
    e = nf.from_module(nn.Sequential(nn.ReLU()))
    for r in (2 * e + e, -e, e / 3, e ** e, abs(e), e.randn(), nf.full_like(e, 1.0)):
        assert r.leaves == () and r.schema is e.schema and r.batch_shape == ()
    pop = nf.population(e, 4)
    assert (0.5 * pop + e).batch_shape == (4,) and (e + pop).batch_shape == (4,)
    assert nf.map_params(lambda t, cfg: t, pop).batch_shape == (4,)


class IntParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.idx = nn.Parameter(torch.tensor([1, 0]), requires_grad=False)

    def forward(self, x):
        return self.lin(x)[:, self.idx]


def test_integer_parameters_keep_their_dtype():
    """Regression: p / 2 (and 0.5 * p, p ** 0.5) turned integer parameters into floats, so the
    particle no longer matched its schema. Integer parameters are never operational."""
    p = nf.from_module(IntParam())
    assert p.config("idx") == nf.ParamConfig(operational=False)
    q = p.randn()
    for r in (p / 2, 0.5 * p + 0.5 * q, p ** 0.5, -p, nf.zeros_like(p), q / p):
        assert r["idx"].dtype == torch.int64 and r["idx"] is p["idx"]
    assert torch.equal(nf.apply(p / 2, torch.eye(2)), nf.apply(p, torch.eye(2)) / 2)
    with unchanged(p):
        with pytest.raises(SchemaError, match="'idx' is int64; integer parameters cannot be "
                                              "operational"):
            nf.configure(p, "idx", operational=True)
        with pytest.raises(SchemaError, match="integer parameters cannot be operational"):
            nf.add_param(p, "k", torch.arange(2), config=nf.ParamConfig(tag=1))
    everything = nf.configure(p, "", operational=True, tag=2)  # under a prefix: floats only
    assert not everything.config("idx").operational and everything.config("idx").tag == 2
    assert everything.config("lin.weight").operational
    grown = nf.add_param(p, "k", torch.arange(2))
    assert not grown.config("k").operational and (grown / 2)["k"].dtype == torch.int64
    mapped = nf.map_params(lambda t, cfg: t.flip(-1), p, operational_only=False)
    assert torch.equal(mapped["idx"], torch.tensor([0, 1]))


def test_coefficient_tensors_must_be_on_the_parameters_device():
    p = nf.from_module(mlp())
    pop = nf.population(p, 2)
    with unchanged(p, pop):
        with pytest.raises(SchemaError, match="tensor is on meta, the parameters on cpu"):
            p * torch.tensor(2.0, device="meta")
        with pytest.raises(SchemaError, match="on meta"):
            torch.ones(2, device="meta") * pop
    assert torch.equal((p * torch.tensor(2.0))["0.weight"], 2 * p["0.weight"])


@pytest.mark.parametrize("call", [
    lambda p: nf.randn_like(p, generator=1),
    lambda p: nf.rand_like(p, generator="seed"),
    lambda p: nf.full_like(p, "a"),
    lambda p: nf.full_like(p, torch.ones(2)),
])
def test_random_and_fill_refuse_bad_arguments(call):
    p = nf.from_module(mlp())
    with unchanged(p):
        with pytest.raises(nf.ArgumentTypeError):
            call(p)


@pytest.mark.parametrize("fn", [nf.randn_like, nf.rand_like, nf.zeros_like,
                                lambda x: nf.full_like(x, 1.0),
                                lambda x: nf.map_params(lambda t, c: t, x)])
def test_ops_refuse_non_particles(fn):
    with pytest.raises(NytorchFuncError, match="expected a Particle"):
        fn(mlp())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalar_times_leaves_equals_the_foreach_scalar_overload_bit_for_bit(dtype):
    """fe_mul sends a Python number as a 0-dim tensor of the leaves' dtype (faster on CPU): the
    products must be those of torch._foreach_mul's Scalar overload, edge values included."""
    from nytorch_func._kernels import fe_mul
    torch.manual_seed(0)
    xs = [torch.randn(40, 7, dtype=dtype) * s for s in (1e-30, 1.0, 1e30)]
    xs.append(torch.tensor([float("inf"), float("nan"), -0.0, 1e-45], dtype=dtype))
    for c in [0.5, 1 / 3, 0.1, -7.3, 3, 0, -0.0, 1e-300, 5e-324, 2 ** 40, 3e38, 1e300,
              float("inf"), float("nan")]:
        for got, want in zip(fe_mul(xs, c), torch._foreach_mul(xs, c)):
            assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(want, nan=7.0))
            assert torch.equal(torch.signbit(got), torch.signbit(want))
