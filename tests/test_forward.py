"""Pure forward passes on the shared skeleton (nytorch_func/_forward.py, issue 14 item 3).

Each nf.apply / nf.apply_with_state sees the attributes its schema recorded, whatever other calls
did, eagerly, under vmap and under torch.compile; parameters are never written; p_after's
buffers agree with the schema.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import unchanged


class CachesABuffer(nn.Module):
    """Registers a buffer on its first forward pass, as lazily built caches do."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "cache" not in self._buffers:
            self.register_buffer("cache", self.lin.weight.detach() * 1.0, persistent=False)
        return x @ self.cache


class SwapsItsActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self._modules.get("act")
        self.act = nn.Identity() if isinstance(act, nn.Tanh) else nn.Tanh()
        return self.act(self.lin(x))


class DeletesABuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("scale", torch.full((2,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x) * self.scale
        del self.scale
        return y


def _clean(p: nf.Particle) -> bool:
    sk = p.schema._skeleton
    return ("cache" not in sk._buffers and "cache" not in sk._non_persistent_buffers_set
            and "act" not in sk._modules and sk._buffers.get("scale", 0) is not None)


@pytest.mark.parametrize("cls", [CachesABuffer, SwapsItsActivation, DeletesABuffer])
@pytest.mark.parametrize("how", ["eager", "vmap", "compile", "with_state"])
def test_module_state_a_forward_pass_changes_does_not_reach_the_next_call(cls, how):
    torch.manual_seed(0)
    p = nf.from_module(cls())
    q = p.randn()
    x = torch.randn(3, 2)
    want = [nf.apply(p, x), nf.apply(q, x)]
    assert _clean(p)
    if cls is DeletesABuffer and how == "compile":
        pytest.skip("torch 2.13's dynamo asserts on a buffer deleted in forward ('Guard failed "
                    "on the same frame it was created'), with or without nytorch_func")
    if cls is DeletesABuffer and how == "with_state":
        with unchanged(p):  # a per-particle buffer cannot be deleted by one particle's call
            with pytest.raises(nf.SchemaError, match="deleted the buffer 'scale'"):
                nf.apply_with_state(p, x)
        assert _clean(p) and torch.equal(nf.apply(p, x), want[0])
        return
    if how == "eager":
        got = [nf.apply(q, x), nf.apply(p, x)][::-1]
    elif how == "vmap":
        got = list(torch.func.vmap(nf.apply, in_dims=(0, None))(nf.stack([p, q]), x))
    elif how == "compile":
        run = torch.compile(lambda r, y: nf.apply(r, y), fullgraph=True, backend="eager")
        got = [run(p, x), run(q, x)]
    else:
        got = [nf.apply_with_state(p, x)[0], nf.apply_with_state(q, x)[0]]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    assert _clean(p) and torch.equal(nf.apply(p, x), want[0])


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("how", ["eager", "vmap", "compile"])
def test_a_particles_mode_reaches_every_module_and_only_for_its_call(mode, how):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.0))
    m[1].running_mean.fill_(1.0)
    if mode == "eval":
        m.eval()
        m[1].train()  # root in eval, one child still training
    else:
        m[1].eval()  # root training, a frozen BatchNorm
    p = nf.from_module(m)
    modes = [x.training for x in p.schema._skeleton.modules()]
    p = p.eval() if mode == "eval" else p.train()
    x = torch.randn(6, 3)
    want = (m.eval() if mode == "eval" else m.train())(x)
    if how == "eager":
        got = nf.apply(p, x)
    elif how == "vmap":
        got = torch.func.vmap(nf.apply, in_dims=(0, None))(nf.stack([p, p]), x)[1]
    else:
        got = torch.compile(lambda r, y: nf.apply(r, y), fullgraph=True, backend="eager")(p, x)
    assert torch.allclose(got, want, atol=1e-5)
    assert [x.training for x in p.schema._skeleton.modules()] == modes


def test_threads_with_forward_state_and_modes_see_their_own_calls():
    torch.manual_seed(0)
    p = nf.from_module(nn.Sequential(SwapsItsActivation(), nn.BatchNorm1d(2)))
    ps = [p.randn().eval() if i % 2 else p.randn().train() for i in range(4)]
    x = torch.randn(5, 2)
    want = [nf.apply(q, x) for q in ps]
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


def test_an_lstm_leaves_no_tensor_of_a_particle_in_the_skeleton():
    p = nf.from_module(nn.LSTM(3, 4, num_layers=2))
    x = torch.randn(5, 2, 3)
    nf.apply(p.randn(), x)
    nf.apply_with_state(p.randn(), x)
    flat = p.schema._skeleton._flat_weights
    assert all(t.is_meta for t in flat)


# parameters are never written --------------------------------------------------------------------

class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, max_norm=1.0)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, i: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(i))


@pytest.mark.parametrize("make", [lambda: nn.Embedding(10, 4, max_norm=1.0),
                                  lambda: nn.EmbeddingBag(10, 4, max_norm=1.0, mode="sum"),
                                  TiedLM], ids=["Embedding", "EmbeddingBag", "tied"])
@pytest.mark.parametrize("how", ["eager", "vmap", "grad", "compile"])
def test_modules_that_renormalise_their_weight_leave_the_particle_unchanged(make, how):
    torch.manual_seed(0)
    module = make()
    p = nf.from_module(module)
    q = p.randn() * 5.0  # rows well above the max norm
    idx = torch.tensor([[1, 2], [3, 1]])
    before = [t.clone() for t in q.leaves]
    reference = make()
    reference.load_state_dict(nf.state_dict(q))
    want = reference(idx)  # torch's module renormalises its own weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap has no batching rule for embedding_renorm_
        if how == "eager":
            got = nf.apply(q, idx)
        elif how == "vmap":
            got = torch.func.vmap(nf.apply, in_dims=(0, None))(nf.stack([q, q]), idx)[0]
        elif how == "grad":
            got = nf.apply(q, idx)
            torch.func.grad(lambda r: nf.apply(r, idx).sum())(q)
        else:
            got = torch.compile(lambda r, i: nf.apply(r, i), fullgraph=True, backend="eager")(q, idx)
    assert torch.allclose(got, want, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(q.leaves, before))


def test_a_shared_embedding_weight_is_not_renormalised_for_the_species():
    p = nf.configure(nf.from_module(nn.Embedding(6, 3, max_norm=0.1)), "weight",
                     operational=False, clone=False)
    shared = p.schema.shared["weight"].detach().clone()
    nf.apply(p, torch.tensor([0, 1, 2]))
    assert torch.equal(p.schema.shared["weight"], shared)


class Clamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.lin.weight.clamp_(-0.1, 0.1)
        return self.lin(x)


def test_another_in_place_write_into_a_parameter_is_a_typed_error():
    p = nf.from_module(Clamps())
    with pytest.raises(nf.SchemaError, match=r"apply: the forward pass of Clamps wrote into the "
                                             r"parameter 'lin.weight' in place"):
        nf.apply(p.randn() * 10, torch.ones(1, 2))
    with pytest.raises(nf.SchemaError, match="apply_with_state: .*'lin.weight'"):
        nf.apply_with_state(p.randn() * 10, torch.ones(1, 2))


# apply_with_state: p_after agrees with the schema -----------------------------------------------

class Reassigns(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.lin = nn.Linear(3, 3)
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "promote":
            self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
            self.count = self.count + 1
        elif self.how == "shape":
            self.mean = x.mean(1)
        elif self.how == "none":
            self.mean = None
        elif self.how == "complex":
            self.mean = self.mean + 1j
        elif self.how == "float_into_int":
            self.count = self.count + 0.5
        return self.lin(x.float())


def _agrees(p: nf.Particle) -> bool:
    batch = tuple(p.batch_shape)
    return all(spec.matches(t, batch) for spec, t in zip(p.schema.leaf_specs, p.leaves))


@pytest.mark.parametrize("how", ["eager", "vmap", "compile"])
def test_a_promoted_buffer_is_cast_back_to_its_schema_dtype(how):
    p = nf.from_module(Reassigns("promote"))
    x = torch.randn(5, 3, dtype=torch.float64)
    if how == "eager":
        _, after = nf.apply_with_state(p, x)
    elif how == "vmap":
        p = nf.population(p, 3)
        _, after = torch.func.vmap(nf.apply_with_state, in_dims=(0, None))(p, x)
    else:
        run = torch.compile(lambda r, y: nf.apply_with_state(r, y), fullgraph=True,
                            backend="eager")
        _, after = run(p, x)
    assert _agrees(after)
    want = (0.1 * x.mean(0)).float()
    assert torch.allclose(after["mean"], want.expand_as(after["mean"]))
    assert (after["count"] == 1).all() and not p["mean"].any()


@pytest.mark.parametrize("how, match", [
    ("shape", r"shape \(5,\); its schema holds shape \(3,\)"),
    ("none", "set the buffer 'mean' to None"),
    ("complex", "complex64 tensor, which its schema dtype torch.float32 cannot hold"),
    ("float_into_int", "float32 tensor, which its schema dtype torch.int64 cannot hold")])
def test_a_buffer_the_schema_cannot_hold_is_refused_and_changes_nothing(how, match):
    p = nf.from_module(Reassigns(how))
    with unchanged(p):
        with pytest.raises(nf.SchemaError, match="apply_with_state: .*" + match):
            nf.apply_with_state(p, torch.randn(5, 3, dtype=torch.float64))
    assert _clean(p) and p.schema._skeleton._buffers["mean"].is_meta
