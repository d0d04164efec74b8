"""The core invariants of issue 14, each as it was reproduced: immutability, leaves that agree with
their schema, pure forward passes, and typed errors for bad inputs (and things that must work).
"""

from __future__ import annotations

import dataclasses
import threading
from fractions import Fraction

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import unchanged


def agrees(p: nf.Particle) -> None:
    """Every leaf has its spec's dtype, device and per-member shape."""
    batch = tuple(p.batch_shape)
    for spec, leaf in zip(p.schema.leaf_specs, p.leaves):
        assert leaf.dtype == spec.dtype, (spec.key, leaf.dtype, spec.dtype)
        assert leaf.device == spec.device, spec.key
        assert tuple(leaf.shape) == batch + spec.shape, (spec.key, leaf.shape)


# 1. immutability --------------------------------------------------------------------------------

def _frozen_objects():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    q = nf.configure(p, "0.bias", operational=False)
    event = p.schema.event
    return [(p, "_leaves"), (p.schema, "version"), (p.schema, "shared"), (p.schema, "_next"),
            (p.schema.specs[0], "shape"), (p.config("0.weight"), "operational"),
            (event, "configs"), (event, "anything"), (p.species, "name"), (p.species, "uid"),
            (p.species, "_head"), (q, "x")]


@pytest.mark.parametrize("index", range(12))
def test_assignment_to_frozen_objects_raises_a_typed_error(index):
    obj, name = _frozen_objects()[index]
    before = getattr(obj, name, None)
    with pytest.raises(nf.FrozenError, match="immutable"):
        setattr(obj, name, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(obj, name)
    assert getattr(obj, name, None) is before


def test_schema_mappings_are_read_only_and_version_stays():
    p = nf.from_module(nn.Linear(2, 1))
    with pytest.raises(TypeError):
        p.schema.shared["w"] = torch.ones(1)  # type: ignore[index]
    with pytest.raises(TypeError):
        p.schema.by_key["weight"] = None  # type: ignore[index]
    with pytest.raises(nf.FrozenError):
        p.schema.version = 7
    assert p.version == 0


def test_events_hold_no_caches_written_after_construction():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    old = p.clone()
    q = nf.del_param(nf.configure(p, "0", operational=False, clone=False), "1.bias")
    events = [s.event for s in q.species.live_versions() if s.event is not None]
    before = [dict(vars(e)) for e in events]
    nf.touch(old)
    nf.configure(q, "0", clone=True)
    nf.touch(old)
    assert [dict(vars(e)) for e in events] == before


# 2. leaves agree with their schema ---------------------------------------------------------------

def test_per_member_coefficients_keep_a_half_population_half():
    pop = nf.population(nn.Linear(3, 2).half(), 4)
    out = pop * torch.linspace(0, 1, 4)
    agrees(out)
    agrees(torch.linspace(0, 1, 4) * pop)
    agrees(pop + torch.tensor(2.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_operation_keeps_the_schema_dtype(dtype):
    p = nf.from_module(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).to(dtype))
    pop = nf.population(p, 3)
    w = torch.rand(3, dtype=torch.float64)
    for r in (p + p, 0.5 * p, p ** 2, 2 ** p, -p, abs(p), p / 3, 1 / p.randn(), p.randn(),
              p.rand(), p.zeros(), nf.full_like(p, 2), pop * w, w * pop, pop - w,
              nf.lerp(pop, p, w), nf.lerp(p, pop, 0.25), nf.lerp(pop, pop, torch.tensor(0.5)),
              p * Fraction(1, 2), nf.mean(pop), nf.mean(pop, weights=w)):
        agrees(r)


def test_complex_particles_stay_complex():
    p = nf.from_module(nn.Linear(2, 2, dtype=torch.complex64))
    agrees(abs(p))
    assert torch.allclose(abs(p)["weight"].real, p["weight"].abs())
    agrees(p * 1j)
    agrees(p + torch.tensor(1j))
    agrees(nf.full_like(p, 1 + 2j))
    agrees(p.randn())


def test_complex_into_real_is_refused_and_changes_nothing():
    p = nf.from_module(nn.Linear(2, 2))
    pop = nf.population(p, 2)
    with unchanged(p, pop):
        for call in (lambda: p + torch.tensor(1j), lambda: p * 1j, lambda: nf.full_like(p, 1j),
                     lambda: pop * torch.tensor([1j, 2j]), lambda: nf.lerp(p, p, 1j)):
            with pytest.raises(nf.SchemaError, match="complex"):
                call()


def test_user_callables_must_return_the_schema_dtype_and_shape():
    lin = nn.Linear(3, 2)
    with pytest.raises(nf.SchemaError, match="'weight'.*float32"):
        nf.population(lin, 2, init=lambda base, spec: base.double())
    with pytest.raises(nf.SchemaError, match="'weight'"):
        nf.population(lin, 2, init=lambda base, spec: base[:1])
    p = nf.from_module(lin)
    state = p.zeros()
    nf.add_param(p, "gain", torch.ones(2))
    with pytest.raises(nf.SchemaError, match="'gain'.*float32"):
        nf.touch(state, fill=lambda value, spec: value.half())


def test_nf_to_converts_the_species_and_its_old_snapshots():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    p = nf.from_module(net)
    old = p.randn()  # version 0: will travel through an add_param snapshot in float32
    p = nf.add_param(p, "gain", nn.Parameter(torch.ones(2)))
    pop = nf.population(p, 3)
    half = nf.to(p, dtype=torch.bfloat16)
    agrees(half)
    assert half["1.num_batches_tracked"].dtype == torch.int64  # integers keep their dtype
    assert half["gain"].requires_grad and half["0.weight"].requires_grad
    for q in (nf.touch(old), nf.touch(pop)):
        agrees(q)
        assert q["gain"].dtype == torch.bfloat16
    assert torch.equal(nf.touch(old)["0.weight"], old["0.weight"].bfloat16())
    x = torch.randn(5, 3, dtype=torch.bfloat16)
    assert nf.apply(half.eval(), x).dtype == torch.bfloat16
    back = nf.to(half, dtype=torch.float32)
    agrees(back)
    assert nf.history(p.species)[-1][1] == "to float32"


def test_nf_to_shared_parameters_and_reset_values_follow():
    p = nf.from_module(nn.BatchNorm1d(3))
    p = nf.configure(p, "weight", operational=False, clone=False)
    p = nf.configure_buffer(p, "running_var", policy="reset")
    d = nf.to(p, dtype=torch.float64)
    assert d.schema.shared["weight"].dtype == torch.float64
    assert isinstance(d.schema.shared["weight"], nn.Parameter)
    assert d.schema.spec("running_var").reset.dtype == torch.float64
    assert d.schema.spec("running_var").dtype == torch.float64
    agrees(nf.mean(nf.population(d, 2)))


def test_nf_to_refusals_change_nothing():
    p = nf.from_module(nn.Linear(2, 2, dtype=torch.complex64))
    with unchanged(p):
        with pytest.raises(nf.SchemaError, match="imaginary"):
            nf.to(p, dtype=torch.float32)
        with pytest.raises(nf.SchemaError, match="floating point or complex"):
            nf.to(p, dtype=torch.int32)
        with pytest.raises(nf.ArgumentTypeError):
            nf.to(p, dtype="float16")
        with pytest.raises(nf.ArgumentTypeError, match="give a dtype"):
            nf.to(p)
        with pytest.raises(nf.SchemaError, match="meta"):
            nf.to(p, device="meta")
    assert len(p.species) == 1


# 3. pure forward passes --------------------------------------------------------------------------

class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(2, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last = x
        return self.l(x) * self.calls


def test_forward_attribute_changes_do_not_leak_across_particles():
    a = nf.from_module(Counter())
    b = a.randn()
    x = torch.ones(1, 2)
    first = nf.apply(b, x)
    nf.apply(a, x)
    nf.apply_with_state(a, x)
    assert torch.equal(nf.apply(b, x), first)
    m = nf.to_module(b)
    assert m.calls == 0 and not hasattr(m, "last")
    pop = nf.population(a, 3)
    torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    assert "last" not in a.schema.skeleton.__dict__  # no BatchedTensor left behind
    compiled = torch.compile(lambda p, x: nf.apply(p, x), fullgraph=True)
    assert torch.allclose(compiled(b, x), first)
    assert torch.allclose(compiled(b, x), first)
    assert a.schema.skeleton.calls == 0


def test_forward_attribute_restoring_holds_under_threads():
    a = nf.from_module(Counter())
    ps = [a.randn() for _ in range(4)]
    x = torch.ones(3, 2)
    want = [nf.apply(p, x) for p in ps]
    bad = []

    def run(i: int) -> None:
        for _ in range(50):
            if not torch.equal(nf.apply(ps[i], x), want[i]):
                bad.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


# 5. typed errors for bad inputs, and things that must work ---------------------------------------

def test_bad_inputs_give_typed_errors_naming_the_function():
    p = nf.from_module(nn.Linear(2, 2))
    with unchanged(p):
        with pytest.raises(nf.ArgumentTypeError, match="population: generator"):
            nf.population(p, 2, generator=3)
        with pytest.raises(nf.SchemaError, match="full_like"):
            nf.full_like(p, 1j)
        with pytest.raises(nf.SchemaError, match="mean: .*no members"):
            nf.mean(nf.population(p, 2)[0:0])
        with pytest.raises(nf.SchemaError, match="touch: fill"):
            nf.touch(p, fill="ones")  # p is already at the head: checked before the fast path
        with pytest.raises(nf.VersionError, match="touch: .*no version 5.*to=None"):
            nf.touch(p, to=5)
    with pytest.raises(nf.SchemaError, match="from_module: .*forward"):
        nf.from_module(nn.LazyLinear(3))


def test_fraction_and_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    p = nf.from_module(nn.Linear(2, 2))
    for c in (Fraction(1, 2), np.float32(0.5), np.float64(0.5)):
        assert torch.allclose((p * c)["weight"], 0.5 * p["weight"])
        assert torch.allclose((c * p)["weight"], 0.5 * p["weight"])


def test_lerp_with_double_weights_on_a_float_population():
    pop = nf.population(nn.Linear(2, 2), 4)
    p = pop[0]
    w = torch.linspace(0, 1, 4, dtype=torch.float64)
    out = nf.lerp(pop, p, w)
    agrees(out)
    assert torch.allclose(out["weight"][3], p["weight"])


def test_fills_work_inside_grad_and_vmap():
    p = nf.from_module(nn.Linear(2, 2))
    pop = nf.population(p, 3)

    def loss(q, x):
        noise = q.randn()
        z = q.zeros() + nf.full_like(q, 0.5)
        return nf.apply(q + 0.0 * noise + z, x).sum()

    g = nf.grad(loss)(p, torch.ones(1, 2))
    agrees(g)
    draws = torch.func.vmap(lambda q: q.randn().leaves[0], randomness="different")(pop)
    assert draws.shape == (3, 2, 2) and not torch.equal(draws[0], draws[1])
    zs = torch.func.vmap(lambda q: (q.zeros() + nf.full_like(q, 1.0)).leaves[0])(pop)
    assert torch.equal(zs, torch.ones(3, 2, 2))


def test_vmap_apply_runs_a_two_dimensional_population():
    p = nf.from_module(nn.Linear(3, 2))
    pop = nf.stack([nf.population(p, 3) for _ in range(2)])  # batch shape (2, 3)
    x = torch.randn(5, 3)
    out = nf.vmap_apply(pop, x)
    assert out.shape == (2, 3, 5, 2)
    assert torch.allclose(out[1, 2], nf.apply(pop[1][2], x))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv", "pow"])
@pytest.mark.parametrize("tensor_first", [False, True])
def test_compile_fullgraph_per_member_coefficients(op, tensor_first):
    import operator

    pop = nf.population(nn.Linear(3, 2), 4, init="rand")
    w = torch.linspace(1, 2, 4)
    fn = getattr(operator, op)
    call = (lambda q, w: fn(w, q)) if tensor_first else (lambda q, w: fn(q, w))
    out = torch.compile(call, fullgraph=True)(pop, w)
    want = call(pop, w)
    for k in ("weight", "bias"):
        assert torch.allclose(out[k], want[k]), k
