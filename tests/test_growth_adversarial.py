"""Growth as an adversary would use it, beyond tests/test_growth.py: residual blocks, tied
weights, half precision, one-member and empty populations, repeated growth, stale particles
across many growth events, checkpoints, the facade, threads, readable history and the
distributed codec. Every recipient must keep *its own* function.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import unchanged
from nytorch_func._migrate import events_between
from nytorch_func._resize import resize_tensor
from nytorch_func.optim import Adam, AdamState

D = torch.float64
ROOT = Path(__file__).resolve().parent.parent


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def outputs(p: nf.Particle, x: torch.Tensor) -> torch.Tensor:
    """Every member's output, one member at a time (no vmap: the reference for vmap)."""
    with torch.no_grad():
        if p.batch_shape:
            return torch.stack([nf.apply(m, x) for m in p]) if p.batch_shape[0] else torch.empty(0)
        return nf.apply(p, x)


def same_function(before: nf.Particle, after: nf.Particle, x: torch.Tensor,
                  tol: float = 1e-12) -> None:
    for mode in (True, False):
        a, b = outputs(before.train(mode), x), outputs(after.train(mode), x)
        assert a.shape == b.shape
        err = float((a - b).abs().max()) if a.numel() else 0.0
        assert err <= tol, (mode, err)


def with_stats(pop: nf.Particle, x: torch.Tensor) -> nf.Particle:
    """``pop`` with running statistics that differ per member (a train-mode pass each)."""
    return nf.stack([nf.apply_with_state(m.train(), x * (i + 1))[1] for i, m in enumerate(pop)])


# residual blocks --------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(torch.relu(self.bn(self.inner(x))))


class ResMLP(nn.Module):
    def __init__(self, dim: int = 5, hidden: int = 4, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(3, dim)
        self.blocks = nn.ModuleList([Block(dim, hidden) for _ in range(depth)])
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class ConvBlock(nn.Module):
    def __init__(self, c: int = 3, hidden: int = 4) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                               nn.ReLU(), nn.Conv2d(hidden, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.f(x))


def test_residual_blocks_widened_one_after_another_keep_every_members_function():
    torch.manual_seed(0)
    pop = nf.population(ResMLP().to(D), 4, init="randn", generator=gen())
    x = torch.randn(16, 3, dtype=D)
    pop = with_stats(pop, x)
    stale = pop[2]
    wide = pop
    for i, by in enumerate((4, 3, 9)):  # 4 -> 8, 4 -> 7, 4 -> 13 (units replicated many times)
        wide = nf.widen(wide, f"blocks.{i}.inner", f"blocks.{i}.outer", by,
                        between=f"blocks.{i}.bn", generator=gen(i))
    assert [wide[f"blocks.{i}.bn.running_var"].shape[-1] for i in range(3)] == [8, 7, 13]
    same_function(pop, wide, x)
    same_function(stale, nf.touch(stale), x)
    m = nf.to_module(wide[0])
    assert m.blocks[2].bn.num_features == 13 and m.blocks[2].outer.in_features == 13


def test_residual_conv_block_widened_and_deepened():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), ConvBlock(), ConvBlock(),
                        nn.Flatten(), nn.Linear(3 * 5 * 5, 2)).to(D)
    pop = nf.population(net, 3, init="randn", generator=gen())
    x = torch.randn(4, 1, 5, 5, dtype=D)
    pop = with_stats(pop, x)
    grown = nf.widen(pop, "1.f.0", "1.f.3", 5, between="1.f.1", generator=gen())
    grown = nf.deepen(grown, "1.f.2", activation=nn.ReLU)  # inside the residual branch
    grown = nf.widen(grown, "2.f.0", "2.f.3", 2, between="2.f.1", method="zeros",
                     generator=gen(1))
    assert [type(c).__name__ for c in nf.to_module(grown[0])[1].f] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    same_function(pop, grown, x)


def test_widening_the_residual_stream_itself_is_not_preserving_and_fails_loudly():
    # A layer whose output also feeds a skip connection cannot be widened alone: widen only
    # sees modules, not the addition. The documented limit: the forward pass then fails, it
    # does not silently compute something else.
    torch.manual_seed(2)
    p = nf.from_module(ResMLP().to(D))
    q = nf.widen(p, "stem", "blocks.0.inner", 2)
    with pytest.raises(RuntimeError):
        nf.apply(q, torch.randn(2, 3, dtype=D))


# tied weights -----------------------------------------------------------------------------------

class TiedConsumer(nn.Module):
    """The consumer ``c`` of the widened layer shares its weight with ``d``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.d = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.d.weight = self.c.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(torch.relu(self.c(torch.relu(self.a(x)))))


class SharedModule(nn.Module):
    """One module object used at two names (weight sharing across depth)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = self.a
        self.ha, self.hb = nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ha(torch.relu(self.a(x))) + self.hb(torch.relu(self.b(x)))


class TiedElsewhere(nn.Module):
    """Embedding and output projection tied; the widened layer sits between them."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.up, self.down = nn.Linear(4, 6), nn.Linear(6, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.down(torch.tanh(self.up(self.emb(tokens)))))


@pytest.mark.parametrize("make, layer, consumers", [
    (TiedConsumer, "a", "c"),  # a consumer whose weight is tied elsewhere
    (SharedModule, "a", ["ha", "hb"]),  # a module reused under two names
])
def test_tied_growth_is_refused_and_changes_nothing(make, layer, consumers):
    torch.manual_seed(3)
    p = nf.from_module(make().to(D))
    other = p.randn(generator=gen())
    with unchanged(p, other):
        with pytest.raises(nf.SchemaError, match="tied"):
            nf.widen(p, layer, consumers, 2)
    assert len(p.species) == 1


def test_a_tie_elsewhere_survives_growth():
    torch.manual_seed(4)
    p = nf.from_module(TiedElsewhere().to(D))
    pop = nf.population(p, 3, init="randn", generator=gen())
    tokens = torch.randint(0, 7, (2, 5), generator=gen())
    wide = nf.widen(pop, "up", "down", 5, generator=gen())
    same_function(pop, wide, tokens)
    assert wide.schema.by_path["out.weight"].key == "emb.weight"  # still one tensor
    m = nf.to_module(wide[1])
    assert m.out.weight is m.emb.weight and m.up.out_features == 11


# dtypes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2),
                                        (torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("method", ["net2net", "zeros"])
def test_half_precision_growth_keeps_dtypes_and_the_function_within_the_dtype(dtype, tol, method):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)
    pop = nf.population(net, 3, init="randn", generator=gen())
    opt = Adam(lr=1e-2)
    state = opt.init(pop)
    x = torch.randn(8, 4).to(dtype)
    g = outputs(pop, x)
    state = state._replace(m=pop.randn(generator=gen(1)), v=pop.rand(generator=gen(2)))
    wide = nf.widen(pop, "0", "2", 9, method=method, generator=gen())  # counts up to 4: 1/3 etc.
    for spec, leaf in zip(wide.schema.leaf_specs, wide.leaves):
        assert leaf.dtype == spec.dtype == dtype and leaf.shape[1:] == spec.shape
    scale = float(g.abs().max())
    err = float((outputs(wide, x).double() - g.double()).abs().max())
    assert err <= tol * scale, (err, scale)
    carried = nf.touch_tree(state, fill="zeros")
    for old, new in ((state.m, carried.m), (state.v, carried.v)):
        assert new["0.weight"].dtype == dtype
        assert torch.equal(new["0.weight"][:, :6], old["0.weight"])
        assert torch.equal(new["2.weight"][:, :, :6], old["2.weight"])
        assert not new["0.weight"][:, 6:].any() and not new["2.weight"][:, :, 6:].any()
    assert carried.step == state.step  # per-parameter step counts kept
    wide, carried = opt.step(wide, wide.randn(generator=gen(3)), carried)  # training goes on
    assert wide["0.weight"].dtype == dtype and set(carried.step.values()) == {1}


def test_float64_net2net_is_exact_to_1e12_with_odd_replication_counts():
    torch.manual_seed(6)
    pop = nf.population(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).to(D), 5,
                        init="randn", generator=gen())
    wide = nf.widen(pop, "0", "2", 40, generator=gen())  # two units become 42: counts ~21
    same_function(pop, wide, torch.randn(7, 3, dtype=D))


# one-member and empty populations ---------------------------------------------------------------

def test_one_member_population_grows_like_the_particle():
    torch.manual_seed(7)
    p = nf.from_module(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(D))
    one = nf.population(p, 1, init="randn", generator=gen())
    single = one[0]
    wide = nf.widen(one, "0", "2", 3, generator=gen())
    assert wide.batch_shape == (1,)
    touched = nf.touch(single)
    for k in wide.schema.leaf_keys:
        assert torch.equal(wide[k][0], touched[k]), k
    state = nf.touch_tree(Adam().init(one), fill="zeros")
    assert state.m["0.weight"].shape == (1, 9, 4)


def test_empty_population_grows_touches_and_runs():
    p = nf.from_module(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    pop = nf.population(p, 3)
    empty = pop[0:0]
    wide = nf.widen(empty, "0", "2", 2)
    assert wide.batch_shape == (0,) and wide["0.weight"].shape == (0, 8, 4)
    assert wide["2.weight"].shape == (0, 3, 8)
    assert nf.vmap_apply(wide, torch.randn(2, 4)).shape == (0, 2, 3)
    deep = nf.deepen(wide, "1", activation=nn.ReLU)
    assert nf.touch(pop[0:0])["2.weight"].shape == (0, 8, 8)
    assert nf.touch_tree(Adam().init(empty), fill="zeros").v["4.weight"].shape == (0, 3, 8)
    assert deep.batch_shape == (0,)


# repeated growth, stale particles ---------------------------------------------------------------

def test_widening_twice_in_a_row_composes():
    torch.manual_seed(8)
    p = nf.from_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to(D))
    pop = nf.population(p, 4, init="randn", generator=gen())
    stale = [pop[i] for i in range(4)]
    x = torch.randn(6, 4, dtype=D)
    once = nf.widen(pop, "0", "2", 4, generator=gen(1))
    twice = nf.widen(once, "0", "2", 5, generator=gen(2))  # replicas of replicas
    assert twice["0.weight"].shape == (4, 12, 4)
    same_function(pop, twice, x)
    for i, s in enumerate(stale):  # each stale member crosses both events in one touch
        t = nf.touch(s)
        assert all(torch.equal(t[k], twice[k][i]) for k in twice.schema.leaf_keys)
    # zeros after net2net: the second event's fill is the same for every member
    z = nf.widen(twice, "0", "2", 2, method="zeros", generator=gen(3))
    assert torch.equal(z["0.weight"][0, 12:], z["0.weight"][3, 12:])
    assert not z["2.weight"][:, :, 12:].any()
    same_function(pop, z, x)


def test_a_stale_particle_crosses_many_growth_events():
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).to(D)
    p = nf.from_module(net)
    x = torch.randn(10, 4, dtype=D)
    pop = with_stats(nf.population(p, 3, init="randn", generator=gen()), x)
    stale_pop, stale_one = pop, pop[1]
    ids = nf.param_ids(p)
    head = nf.widen(p, "0", "3", 3, between="1", generator=gen(1))  # 5 -> 8
    head = nf.insert_module(head, "", 3, nn.Identity())  # Linear is now "4"
    head = nf.deepen(head, "2", activation=nn.ReLU)  # identity Linear at "3", ReLU at "4"
    head = nf.widen(head, "3", "6", 4, generator=gen(2))  # the new layer 8 -> 12
    head = nf.del_module(head, "5")  # the Identity: later children move down
    head = nf.widen(head, "0", "3", 1, between="1", generator=gen(3))  # 8 -> 9 again
    assert [type(c).__name__ for c in nf.to_module(head)] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "ReLU", "Linear"]
    grown = nf.touch(stale_pop)
    same_function(stale_pop, grown, x)
    one = nf.touch(stale_one)
    same_function(stale_one, one, x)
    for k in grown.schema.leaf_keys:  # population touch == member-wise touch
        assert torch.equal(grown[k][1], one[k]), k
    now = nf.param_ids(grown)  # the original parameters kept their ids through everything
    assert now["0.weight"] == ids["0.weight"] and now["5.weight"] == ids["3.weight"]
    assert grown["5.weight"].shape == (3, 3, 12)


# the resize kernel ------------------------------------------------------------------------------

def _gather_then_zero(t: torch.Tensor, dims: tuple, n_batch: int) -> torch.Tensor:
    """The reference for touch(fill='zeros'): gather every coordinate, zero the non-origins."""
    out, mask = t, None
    for dim, index, _, origin in dims:
        out = out.index_select(dim + n_batch, index.clamp(min=0))
        view = [1] * out.dim()
        view[dim + n_batch] = -1
        mask = origin.view(view) if mask is None else mask & origin.view(view)
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_zeros_fill_equals_gather_then_zero_for_any_map(dtype):
    g = gen(10)
    for trial in range(60):
        n = int(torch.randint(1, 6, (1,), generator=g))
        by = int(torch.randint(0, 5, (1,), generator=g))
        order = torch.randperm(n + by, generator=g) if trial % 2 else torch.arange(n + by)
        index = torch.cat([torch.arange(n), torch.randint(-1, n, (by,), generator=g)])[order]
        origin = (torch.arange(n + by) < n)[order]
        t = (torch.randn(2, 3, n, generator=g) * 5).to(dtype)
        dims = ((1, index, None, origin),)
        assert torch.equal(resize_tensor(t, dims, None, 1, "zeros"),
                           _gather_then_zero(t, dims, 1)), trial


def test_zeros_fill_under_groupnorm_keeps_interleaved_origins():
    # even replication inside groups puts new units between old ones: the moments must follow
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv1d(4, 1, 1))
    p = nf.from_module(net.to(D))
    state = AdamState(dict.fromkeys(nf.param_ids(p).values(), 1), p.randn(generator=gen()),
                      p.rand(generator=gen(1)))
    wide = nf.widen(p, "0", "3", 4, between="1")
    carried = nf.touch_tree(state, fill="zeros")
    # groups of 2 units become groups of 4: the old units are the first two of each group
    w_old, w_new = state.m["0.weight"], carried.m["0.weight"]
    kept = [j for j in range(8) if w_new[j].any()]
    assert len(kept) == 4 and torch.equal(w_new[kept], w_old)
    assert kept == [0, 1, 4, 5]  # interleaved, not a prefix
    assert torch.equal(carried.v["3.weight"][:, kept], state.v["3.weight"])
    assert wide["0.weight"].shape == (8, 2, 1)


# checkpoints ------------------------------------------------------------------------------------

def test_save_load_then_touch_across_growth(tmp_path):
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(D)
    p = nf.from_module(net)
    pop = nf.population(p, 3, init="randn", generator=gen())
    opt = Adam(lr=1e-2)
    state = opt.init(pop)
    x, y = torch.randn(8, 4, dtype=D), torch.randn(8, 3, dtype=D)
    loss = lambda q: (nf.apply(q, x) - y).pow(2).mean()  # noqa: E731
    grads = torch.func.vmap(nf.grad(loss))
    pop, state = opt.step(pop, grads(pop), state)
    head = nf.widen(p, "0", "2", 2, generator=gen(1))  # pop and state are now stale
    path = tmp_path / "grow.safetensors"
    nf.save(path, {"pop": pop, "m": state.m, "v": state.v, "head": head})
    back = nf.load(path)
    assert back["pop"].version == 0 and back["head"].version == 1
    # a further growth event on the loaded species, then touch across both
    nf.widen(back["head"], "0", "2", 3, generator=gen(2))
    grown = nf.touch(back["pop"])
    assert grown["0.weight"].shape == (3, 11, 4)
    same_function(pop, grown, x)
    m = nf.touch(back["m"], fill="zeros")
    assert torch.equal(m["0.weight"][:, :6], state.m["0.weight"])
    assert not m["0.weight"][:, 6:].any()
    # the loaded chain replays the saved event exactly as the live one
    live = nf.touch(pop)
    loaded = nf.touch(back["pop"], to=1)
    assert all(torch.equal(a, b) for a, b in zip(live.leaves, loaded.leaves))
    # and training continues on the loaded, grown population
    carried = AdamState(state.step, m, nf.touch(back["v"], fill="zeros"))
    grown, carried = opt.step(grown, grads(grown), carried)
    assert carried.v["2.weight"].shape == (3, 3, 11)


# the facade -------------------------------------------------------------------------------------

class FacadeNet(nf.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FacadeResidual(nf.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.norm, self.outer = nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(torch.relu(self.norm(self.inner(x))))


def test_facade_follows_a_species_grown_with_widen():
    import nytorch_func.compat as nyto

    assert nyto.NytoModule is nf.NytoModule
    torch.manual_seed(13)
    net = FacadeNet().double()
    other = net.randn()
    x = torch.randn(5, 4, dtype=D)
    before_net, before_other = net(x).detach(), other(x).detach()
    grown = nf.widen(net.to_particle(), "body.0", "head", 3, generator=gen())
    net.touch()
    other.touch()
    assert net.body[0].weight.shape == (9, 4) and other.head.weight.shape == (3, 9)
    assert torch.allclose(net(x), before_net, rtol=0, atol=1e-12)
    assert torch.allclose(other(x), before_other, rtol=0, atol=1e-12)
    assert net._version_kernel is grown.schema
    mix = 0.5 * net + 0.5 * other  # particle arithmetic after growth
    assert mix.body[0].weight.shape == (9, 4)
    back = nf.NytoModule.from_particle(grown)
    assert torch.allclose(back(x), before_net, rtol=0, atol=1e-12)
    back.extra = nn.Parameter(torch.ones(3, dtype=D))  # a facade event after growth
    assert back._version_kernel.version == 2


def test_facade_touch_applies_the_resized_module_attributes():
    torch.manual_seed(14)
    net = FacadeResidual().double()
    x = torch.randn(3, 5, dtype=D)
    before = net(x).detach()
    nf.widen(net.to_particle(), "inner", "outer", 4, between="norm")
    net.touch()
    assert net.inner.out_features == 8 and net.outer.in_features == 8
    assert net.norm.normalized_shape == (8,)
    assert torch.allclose(net(x), before, rtol=0, atol=1e-12)


# threads ----------------------------------------------------------------------------------------

def test_threads_grow_while_others_touch():
    torch.manual_seed(15)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                        nn.Linear(4, 2)).to(D)
    p = nf.from_module(net)
    x = torch.randn(6, 3, dtype=D)
    stale = [p.randn(generator=gen(i)) for i in range(6)]
    pops = [nf.population(p, 3, init="randn", generator=gen(10 + i)) for i in range(2)]
    want = [nf.apply(s, x) for s in stale] + [outputs(q, x) for q in pops]
    start = threading.Barrier(4)
    stop = threading.Event()
    errors: list[BaseException] = []
    checks = [0]

    def grower(layer: str, consumer: str, seed: int) -> None:
        try:
            q = p.clone()
            start.wait()
            for k in range(12):
                q = nf.widen(q, layer, consumer, 1 + k % 3, method=("net2net", "zeros")[k % 2],
                             generator=gen(seed + k))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def toucher(offset: int) -> None:
        try:
            start.wait()
            while not stop.is_set():
                for i, s in enumerate([*stale, *pops][offset::2]):
                    t = nf.touch(s)
                    assert len(t.leaves) == len(t.schema.leaf_keys)
                    for spec, leaf in zip(t.schema.leaf_specs, t.leaves):
                        assert leaf.shape[len(t.batch_shape):] == spec.shape, spec.key
                    got = outputs(t, x)
                    assert torch.allclose(got, want[offset + 2 * i], rtol=0, atol=1e-12)
                    checks[0] += 1
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=grower, args=("0", "2", 0)),
               threading.Thread(target=grower, args=("2", "4", 100)),
               threading.Thread(target=toucher, args=(0,)),
               threading.Thread(target=toucher, args=(1,))]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(timeout=120)
    stop.set()
    for t in threads[2:]:
        t.join(timeout=120)
    assert not errors, errors
    assert len(p.species) == 25 and checks[0] > 0
    final = [nf.touch(s) for s in stale]
    assert final[0]["0.weight"].shape == (4 + 24, 3) and final[0]["2.weight"].shape == (28, 28)
    for s, w in zip(final, want):
        assert torch.allclose(nf.apply(s, x), w, rtol=0, atol=1e-12)


# history and diff -------------------------------------------------------------------------------

def test_history_reads_each_growth_event():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
    q = nf.widen(p, "0", "2", 2, generator=gen())
    q = nf.widen(q, "0", "2", 1, method="zeros", generator=gen())
    q = nf.insert_module(q, "", 1, nn.Tanh())
    q = nf.deepen(q, "2", activation=nn.ReLU)
    q = nf.del_module(q, "1")
    lines = [text for _, text in nf.history(q.species)]
    assert lines == [
        "widen 0 by 2 (net2net): 0.weight 4\u21926 rows, 0.bias 4\u21926, 2.weight 4\u21926 cols",
        "widen 0 by 1 (zeros): 0.weight 6\u21927 rows, 0.bias 6\u21927, 2.weight 6\u21927 cols",
        "insert_module <root>[1] (Tanh, 0 params)",
        "deepen 2: Linear, ReLU at <root>[3] (2 params)",
        "del_module 1",
    ]
    text = str(nf.history(q.species))
    assert "v0 -> v1: widen 0 by 2 (net2net)" in text and "v4 -> v5: del_module 1" in text


def test_diff_shows_a_resize_as_a_shape_change():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
    q = nf.widen(p, "0", "2", 2, generator=gen())
    lines = nf.diff(p.schema, q.schema).splitlines()
    assert lines[0] == "~ param 0.weight: shape 4x2 -> 6x2"
    assert all("ParamConfig" not in line for line in lines)


# distributed ------------------------------------------------------------------------------------

def _growth_events() -> tuple[nf.Particle, list, nf.Particle]:
    torch.manual_seed(16)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(D)
    p = nf.from_module(net)
    q = nf.widen(p, "0", "3", 2, between="1", generator=gen())
    q = nf.insert_module(q, "", 3, nn.Identity())
    q = nf.deepen(q, "2", activation=nn.ReLU)
    q = nf.widen(q, "3", "6", 3, method="zeros", generator=gen(1))
    q = nf.del_module(q, "5")
    return p, events_between(p.schema, q.schema), q


def test_growth_events_round_trip_the_event_codec():
    from nytorch_func.distributed._eventwire import decode_events, encode_events

    p, events, q = _growth_events()
    assert [e.kind for e in events] == ["resize", "insert_module", "insert_module", "resize",
                                        "del_child"]
    blob = encode_events(events, uid="grow")
    assert b"\x80\x04" not in blob and b"\x80\x05" not in blob  # no pickle
    back = decode_events(blob, uid="grow")
    assert [e.describe() for e in back] == [e.describe() for e in events]
    schema = p.schema
    for e in back:  # replayed on the sender's version 0, the received events give its head
        schema = e.apply(schema)
    assert schema.describe().split("\n")[1:] == q.schema.describe().split("\n")[1:]
    for a, b in zip(back[0].tensors, events[0].tensors):  # the recorded maps travel exactly
        assert a[0] == b[0] and tuple(a[1]) == tuple(b[1])
        for (d1, i1, s1, o1), (d2, i2, s2, o2) in zip(a[2], b[2]):
            assert d1 == d2 and torch.equal(i1, i2) and torch.equal(o1, o2)
            assert (s1 is None) == (s2 is None) and (s1 is None or torch.equal(s1, s2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_growth_replicates_across_two_gloo_ranks():
    """Rank 1 grows the species; after Replica.sync both ranks touch their own stale population
    and get the same grown members, each keeping its function (tests/dist_workers/growth.py)."""
    worker = Path(__file__).resolve().parent / "dist_workers" / "growth.py"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "NFD_TIMEOUT": "60"}
    procs = [subprocess.Popen([sys.executable, str(worker)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    deadline = time.monotonic() + 150
    results = {}
    try:
        for r, proc in enumerate(procs):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"rank {r}:\n{err[-4000:]}"
            results[r] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for r in (0, 1):
        assert results[r]["version"] == 5 and results[r]["preserved"] <= 1e-12, results[r]
    assert results[0]["crc"] == results[1]["crc"]  # the same grown tensors on both ranks


# the bench row ----------------------------------------------------------------------------------

def test_bench_grow_row_times_the_same_operation_on_both_sides():
    import nytorch_func.bench as bench
    from nytorch_func.bench._growth_cases import GrowMLP, hand_widen

    torch.manual_seed(17)
    pop = nf.population(GrowMLP((6, 8, 3)), 4, generator=gen()).detach()
    opt = Adam(lr=1e-3)
    state = opt.init(pop)
    pop, state = opt.step(pop, pop.randn(generator=gen(1)), state)
    pop = pop.detach()
    ours = nf.widen(pop, "l0", "l1", 5, generator=gen(2))
    carried = nf.touch_tree(state, fill="zeros")
    as_dict = lambda q: dict(zip(q.schema.leaf_keys, q.leaves))  # noqa: E731
    params, m, v = hand_widen(as_dict(pop), as_dict(state.m), as_dict(state.v), 5, gen(2))
    for k in ours.schema.leaf_keys:  # the same random choice, the same numbers
        assert torch.allclose(ours[k], params[k], rtol=1e-6, atol=0), k
        assert torch.equal(carried.m[k], m[k]) and torch.equal(carried.v[k], v[k]), k
    report = bench.run(only=["grow"], repeats=1, min_time=1e-4)
    (row,) = report["rows"]
    assert row["id"] == "grow" and row["target"] == "<= 1.5x" and row["ratio"] > 0


def test_grow_vs_full_example_runs_and_preserves_the_function():
    pytest.importorskip("sklearn")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "grow_vs_full.py"), "--seeds", "1", "--final",
         "16", "--grow-at", "1", "2", "--target", "0.5", "--max-steps", "200",
         "--check-every", "5", "--method", "net2net"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines()}
    assert {"full", "grown", "narrow"} <= set(lines), proc.stdout
    assert "reached 1/1" in lines["grown"]
    change = float(lines["grown"].rsplit(" ", 1)[1])
    assert 0 < change < 1e-5  # both widenings happened and kept the function
