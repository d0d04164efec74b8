"""The core's promises (DESIGN.md "Invariants", issue 14) tried as a hostile user would.

Every test here is a bug found by trying to break a promise: immutability, leaves that agree
with their schema, pure forward passes, failed calls that change nothing, typed errors,
lossless checkpoints, threads. Each is ``xfail(strict=True)`` naming the file and function at
fault until the core owner fixes it (then the marker goes and the test stays as a regression).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import evolution as ev


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


# 1. immutability: no mutable state of the species leaks through a frozen object ------------------

def test_skeleton_modules_from_a_schema_cannot_change_other_particles():
    torch.manual_seed(0)
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.01)))
    other = p.randn()
    x = torch.randn(5, 2)
    before = nf.apply(other, x)
    try:
        p.schema.module_at("1").negative_slope = 0.9
    except nf.FrozenError:
        pass
    assert torch.equal(nf.apply(other, x), before)


def test_configure_can_set_a_user_attribute_to_none():
    p = nf.configure(nf.from_module(nn.Linear(2, 2)), "weight", tag="x")
    q = nf.configure(p, "weight", tag=None)
    assert q.config("weight").tag is None


# 6. checkpoints ----------------------------------------------------------------------------------

def test_a_nan_config_attribute_survives_a_round_trip(tmp_path):
    p = nf.configure(nf.from_module(nn.Linear(2, 2)), "weight", scale=float("nan"))
    path = tmp_path / "p.nf"
    nf.save(path, p)
    assert nf.load(path).config("weight") == p.config("weight")
    assert nf.load(path, species=p.species).schema is p.schema


@pytest.mark.parametrize("make", ["SGD", "Adam", "AdamW"])
@pytest.mark.parametrize("how", ["set", "del"])
def test_optimizers_are_frozen_with_the_typed_error(make, how):
    from nytorch_func import optim
    opt = getattr(optim, make)(lr=0.1)
    with pytest.raises(nf.FrozenError):
        if how == "set":
            opt.lr = 0.5
        else:
            del opt.lr
    assert opt.lr == 0.1


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_save_a_particle_whose_leaves_are_conjugate_views(tmp_path, dtype):
    p = nf.to(nf.from_module(nn.Linear(3, 2)), dtype=dtype)
    q = nf.map_params(lambda t, cfg: t.conj(), p)
    assert q.leaves[0].is_conj()
    nf.save(tmp_path / "q.nf", q)
    r = nf.load(tmp_path / "q.nf")
    assert all(torch.equal(a.resolve_conj(), b.resolve_conj()) for a, b in zip(q.leaves, r.leaves))


# 2. leaves agree with their schema / operators ----------------------------------------------------

def test_numpy_scalar_times_population_is_a_particle():
    pop = nf.population(nn.Linear(3, 2), 3, generator=torch.Generator().manual_seed(0))
    w = np.linspace(0.0, 1.0, 5)[2]  # a np.float64, as indexing a numpy array gives
    out = w * pop
    assert isinstance(out, nf.Particle)
    assert torch.equal(out["weight"], (0.5 * pop)["weight"])


def test_subtracting_a_bool_is_typed_or_works():
    p = nf.from_module(nn.Linear(2, 2))
    try:
        r = p - True
    except nf.NytorchFuncError:
        return
    assert torch.equal(r["weight"], p["weight"] - 1)


# 3. pure forward passes ------------------------------------------------------------------------

class _CachesABuffer(nn.Module):
    """Registers a buffer on its first forward pass (a lazily built cache, as rotary
    embeddings do)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "cache" not in self._buffers:
            self.register_buffer("cache", self.lin.weight.detach() * 1.0, persistent=False)
        return x @ self.cache


def test_a_buffer_registered_in_forward_does_not_reach_another_particle():
    torch.manual_seed(0)
    p = nf.from_module(_CachesABuffer())
    q = p.randn()
    x = torch.ones(1, 2)
    nf.apply(q, x)  # q's forward caches q's weight in the skeleton
    assert torch.allclose(nf.apply(p, x), x @ p["lin.weight"])
    assert "cache" not in p.schema.skeleton._buffers


class _SwapsItsActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self._modules.get("act")
        self.act = nn.Identity() if isinstance(act, nn.Tanh) else nn.Tanh()
        return self.act(self.lin(x))


def test_a_submodule_assigned_in_forward_does_not_reach_the_next_call():
    torch.manual_seed(0)
    p = nf.from_module(_SwapsItsActivation())
    x = torch.randn(3, 2)
    first = nf.apply(p, x)
    assert torch.equal(nf.apply(p, x), first)
    assert "act" not in p.schema.skeleton._modules


def test_apply_of_an_embedding_with_max_norm_leaves_the_particle_unchanged():
    torch.manual_seed(0)
    p = nf.from_module(nn.Embedding(10, 4, max_norm=1.0))
    q = p.randn() * 5.0  # rows well above the max norm
    before = q["weight"].clone()
    nf.apply(q, torch.tensor([1, 2, 3]))
    assert torch.equal(q["weight"], before)


class _RunningMean(nn.Module):
    """The seed's running mean kept by reassigning a buffer in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("last", torch.zeros(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mean = 0.9 * self.mean + 0.1 * x.mean(0)  # float64 x promotes it
        self.last = x.detach().float()  # another batch size: another shape
        return self.lin(x.float())


def _agrees(p: nf.Particle) -> bool:
    batch = tuple(p.batch_shape)
    return all(spec.matches(t, batch) for spec, t in zip(p.schema.leaf_specs, p.leaves))


def test_apply_with_state_returns_leaves_that_agree_with_the_schema():
    p = nf.from_module(_RunningMean())
    x = torch.randn(5, 3, dtype=torch.float64)
    try:
        _, after = nf.apply_with_state(p, x)
    except nf.SchemaError:
        return
    assert _agrees(after)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_particle_mode_reaches_every_submodule(mode):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m[1].running_mean.fill_(1.0)
    if mode == "eval":
        m.eval()
        m[1].train()  # root in eval, one child still training
    else:
        m[1].eval()  # root training, a frozen BatchNorm
    p = nf.from_module(m)
    p = p.eval() if mode == "eval" else p.train()
    x = torch.randn(6, 3)
    want = (m.eval() if mode == "eval" else m.train())(x)  # nn.Module's rule: every module
    assert torch.allclose(nf.apply(p, x), nf.to_module(p)(x))
    assert torch.allclose(nf.apply(p, x), want)


# 2/6. from_module(like=): the joined particle is the module it came from --------------------------

def test_from_module_like_refuses_or_keeps_differing_attributes():
    torch.manual_seed(0)
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.01)))
    m = nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.5))
    x = torch.randn(6, 2)
    try:
        q = nf.from_module(m, like=p)
    except nf.SchemaError:
        return
    assert torch.allclose(nf.apply(q, x), m(x))


def test_from_module_like_keeps_the_modules_mode():
    torch.manual_seed(0)
    p = nf.from_module(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).eval()
    m[1].running_mean.fill_(2.0)
    x = torch.randn(6, 2)
    q = nf.from_module(m, like=p)
    assert q.training is False
    assert torch.allclose(nf.apply(q, x), m(x))


# 4. a call either works or changes nothing: container events on named children -------------------

def test_insert_module_into_a_named_sequential_keeps_the_species_usable():
    torch.manual_seed(0)
    p = nf.from_module(nn.Sequential(OrderedDict(
        [("fc1", nn.Linear(3, 4)), ("act", nn.ReLU()), ("fc2", nn.Linear(4, 2))])))
    x = torch.randn(5, 3)
    try:
        q = nf.insert_module(p, "", 1, nn.Identity())
    except nf.SchemaError:
        assert len(p.species) == 1
        return
    assert torch.allclose(nf.apply(q, x), nf.apply(p, x))
    assert torch.allclose(nf.to_module(q)(x), nf.apply(p, x))


def test_del_module_of_a_sequential_with_a_named_child_keeps_the_species_usable():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    m.add_module("head", nn.Linear(4, 2))
    p = nf.from_module(m)
    x = torch.randn(5, 3)
    try:
        q = nf.del_module(p, "1")
    except nf.SchemaError:
        assert len(p.species) == 1
        return
    want = m[2](m[0](x))  # torch's del m[1]: Linear, then the head
    assert torch.allclose(nf.apply(q, x), want)
    assert torch.allclose(nf.to_module(q)(x), want)


# 5. typed errors for bad arguments ---------------------------------------------------------------

@pytest.mark.parametrize("path", [5, ["w"]])
@pytest.mark.parametrize("add", ["param", "buffer", "module"])
def test_adding_at_a_non_string_path_is_an_argument_type_error(add, path):
    p = nf.from_module(nn.Linear(2, 2))
    call = {"param": lambda: nf.add_param(p, path, torch.ones(2)),
            "buffer": lambda: nf.add_buffer(p, path, torch.ones(2)),
            "module": lambda: nf.add_module(p, path, nn.Linear(2, 2))}[add]
    with pytest.raises(nf.ArgumentTypeError, match=f"add_{add}"):
        call()
    assert len(p.species) == 1


@pytest.mark.parametrize("path", [3, ["weight"], None])
def test_config_of_a_non_string_path_is_typed(path):
    p = nf.from_module(nn.Linear(2, 2))
    with pytest.raises(nf.ArgumentTypeError, match="config"):
        p.config(path)


def test_vmap_apply_takes_an_int_in_dims_like_torch_func_vmap():
    pop = nf.population(nn.Linear(3, 2), 4, generator=torch.Generator().manual_seed(0))
    xs = torch.randn(4, 5, 3)
    try:
        out = nf.vmap_apply(pop, xs, in_dims=0)
    except nf.NytorchFuncError:
        return
    assert torch.allclose(out, nf.vmap_apply(pop, xs, in_dims=(0,)))


@pytest.mark.parametrize("call", [lambda: nf.stack(3), lambda: nf.stack(None),
                                  lambda: nf.from_modules(nn.Linear(2, 2))],
                         ids=["stack_int", "stack_none", "from_modules_module"])
def test_stack_of_a_non_sequence_is_typed(call):
    with pytest.raises(nf.ArgumentTypeError):
        call()


def test_reset_policy_of_an_empty_population_is_typed():
    pop = nf.population(nn.BatchNorm1d(3), 3)[0:0]
    with pytest.raises(nf.NytorchFuncError, match="configure_buffer"):
        nf.configure_buffer(pop, "running_mean", policy="reset")
    assert len(pop.species) == 1


@pytest.mark.parametrize("call", [lambda p: ev.pso_init(p),
                                  lambda p: ev.greedy_soup(p, lambda q: 1.0)],
                         ids=["pso_init", "greedy_soup"])
def test_evolution_of_a_single_particle_is_typed(call):
    p = nf.from_module(nn.Linear(2, 2))
    with pytest.raises(nf.NytorchFuncError):
        call(p)


# 2. populations without per-particle tensors keep their batch shape ---------------------------------

class _NoTensors(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("op", ["mean_2d", "where", "uniform_crossover"])
def test_leafless_populations_keep_their_batch_shape(op):
    pop = nf.population(nf.from_module(_NoTensors()), 4)
    if op == "mean_2d":
        out, want = nf.mean(nf.stack([pop, pop])), (4,)
    elif op == "where":
        out, want = nf.where(torch.tensor([True, False, True, False]), pop, pop), (4,)
    else:
        out, want = ev.uniform_crossover(pop, pop[0]), (4,)
    assert tuple(out.batch_shape) == want
