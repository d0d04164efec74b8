"""Functional training over particles: nf.grad, optimizers, and state that follows events."""

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import optim


def bn_mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))


def loss_fn(p, x, y):
    return nn.functional.cross_entropy(nf.apply(p, x), y)


@pytest.fixture
def data():
    return torch.randn(12, 5), torch.randint(0, 3, (12,))


def test_grad_skips_integer_buffers_and_matches_autograd(data):
    x, y = data
    net = bn_mlp()
    p = nf.from_module(net).clone()
    with pytest.raises(RuntimeError, match="floating point"):
        torch.func.grad(loss_fn)(p, x, y)  # why nf.grad exists
    g = nf.grad(loss_fn)(p, x, y)
    assert g.schema is p.schema
    loss_fn(nf.from_module(net), x, y).backward()
    for path, param in net.named_parameters():
        torch.testing.assert_close(g[path], param.grad)
    assert not g["1.running_mean"].any() and int(g["1.num_batches_tracked"]) == 0


def test_value_and_grad_has_aux_and_argnums(data):
    x, y = data
    p = nf.from_module(bn_mlp())

    def f(p, x, y):
        out = nf.apply(p, x)
        return nn.functional.cross_entropy(out, y), out.detach()

    (value, aux), (gp, gx) = nf.value_and_grad(f, argnums=(0, 1), has_aux=True)(p, x, y)
    assert aux.shape == (12, 3) and gx.shape == x.shape and isinstance(gp, nf.Particle)
    g2, aux2 = nf.grad(f, has_aux=True)(p, x, y)
    torch.testing.assert_close(g2["0.weight"], gp["0.weight"])
    with pytest.raises(nf.NytorchFuncError, match="argnums 3"):
        nf.grad(f, argnums=3)(p, x, y)


def test_per_member_grad_under_vmap(data):
    x, y = data
    pop = nf.population(bn_mlp(), 3)
    grads = torch.func.vmap(nf.grad(loss_fn), in_dims=(0, None, None))(pop, x, y)
    for i, member in enumerate(nf.unstack(pop)):
        torch.testing.assert_close(grads[i]["3.weight"], nf.grad(loss_fn)(member, x, y)["3.weight"])


@pytest.mark.parametrize("make", [
    lambda: (optim.Adam(lr=0.05), lambda ps: torch.optim.Adam(ps, lr=0.05)),
    lambda: (optim.AdamW(lr=0.05, weight_decay=0.1),
             lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)),
    lambda: (optim.Adam(lr=0.05, weight_decay=0.1), lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1)),
    lambda: (optim.SGD(lr=0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    lambda: (optim.SGD(lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
], ids=["adam", "adamw", "adam-l2", "sgd-momentum", "sgd"])
def test_optimizers_match_torch_optim(make, data):
    x, y = data
    ours, theirs = make()
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    p = nf.from_module(net).clone().detach()
    reference = theirs(net.parameters())
    state = ours.init(p)
    for _ in range(5):
        p, state = ours.step(p, nf.grad(loss_fn)(p, x, y), state)
        p = p.detach()
        reference.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        reference.step()
    for path, param in net.named_parameters():
        torch.testing.assert_close(p[path], param.detach(), rtol=1e-4, atol=1e-5)


def test_optimizer_leaves_non_operational_params_alone(data):
    x, y = data
    p = nf.configure(nf.from_module(bn_mlp()), "0", operational=False).clone().detach()
    opt = optim.Adam(lr=0.1)
    p2, _ = opt.step(p, nf.grad(loss_fn)(p, x, y), opt.init(p))
    assert p2["0.weight"] is p["0.weight"] and not torch.equal(p2["3.weight"], p["3.weight"])
    with pytest.raises(nf.ArgumentTypeError, match="gradient particle"):
        opt.step(p, {"0.weight": torch.zeros(1)}, opt.init(p))


def test_population_adam_equals_member_adam(data):
    x, y = data
    opt = optim.Adam(lr=0.02)
    step = torch.func.vmap(nf.grad(loss_fn), in_dims=(0, None, None))
    start = nf.population(bn_mlp(), 2).detach()
    batched, st = start, opt.init(start)
    for _ in range(3):
        batched, st = opt.step(batched, step(batched, x, y), st)
    for i, member in enumerate(nf.unstack(start)):
        m, ms = member, opt.init(member)
        for _ in range(3):
            m, ms = opt.step(m, nf.grad(loss_fn)(m, x, y), ms)
        torch.testing.assert_close(batched[i]["3.weight"], m["3.weight"])


def test_touch_fill_rules():
    p = nf.from_module(nn.Linear(3, 2))
    state = p.zeros()
    grown = nf.add_param(nf.add_buffer(p, "count", torch.ones(2)), "gain", torch.full((2,), 7.0))
    assert torch.equal(nf.touch(state)["gain"], torch.full((2,), 7.0))  # snapshot: the seed rule
    zeroed = nf.touch(state, fill="zeros")
    assert not zeroed["gain"].any() and not zeroed["count"].any()
    assert zeroed["weight"] is state["weight"]  # old entries untouched
    custom = nf.touch(state, fill=lambda value, spec: torch.full_like(value, spec.pid or -1))
    assert torch.equal(custom["gain"], torch.full((2,), 2.0))
    with pytest.raises(nf.SchemaError, match="fill must be"):
        nf.touch(state, fill="ones")
    with pytest.raises(nf.SchemaError, match="must return a tensor of shape"):
        nf.touch(state, fill=lambda value, spec: value[:1])
    with pytest.raises(nf.SchemaError, match=r"'count'.*float32"):  # the schema dtype is kept
        nf.touch(state, fill=lambda value, spec: value.double())
    with pytest.raises(nf.SchemaError, match="fill must be"):  # checked before any fast path
        nf.touch(nf.touch(state), fill="ones")
    assert grown.version == 2


def test_adam_state_follows_growth(data):
    x, y = data
    p = nf.from_module(nn.Sequential(nn.Linear(5, 3))).clone().detach()
    opt = optim.Adam(lr=0.01)
    state = opt.init(p)
    p, state = opt.step(p, nf.grad(loss_fn)(p, x, y), state)
    old_m = state.m["0.weight"]
    grown = nf.add_module(p, "1", nn.Linear(3, 3))
    state = nf.touch_tree(state, fill="zeros")
    assert state.m.schema is grown.schema and state.m["0.weight"] is old_m
    assert not state.m["1.weight"].any() and not state.v["1.bias"].any()
    grown, state = opt.step(grown, nf.grad(loss_fn)(grown, x, y), state)
    assert state.step == {0: 2, 1: 2, 2: 1, 3: 1} and state.m["1.weight"].abs().sum() > 0


def test_torchopt_steps_particles_but_its_state_cannot_follow_events(data):
    """torchopt 0.7 updates particles (they are pytrees); its Adam state is flat lists of leaves,
    so after an event it no longer fits: that is what nytorch_func.optim is for."""
    import torchopt

    x, y = data
    p = nf.from_module(nn.Linear(5, 3)).clone().detach()
    tx = torchopt.adam(0.05)
    state = tx.init(p)
    ours, our_state = optim.Adam(lr=0.05), optim.Adam(lr=0.05).init(p)
    updates, state = tx.update(nf.grad(loss_fn)(p, x, y), state)
    stepped = torchopt.apply_updates(p, updates, inplace=False)
    assert isinstance(stepped, nf.Particle) and stepped.schema is p.schema
    reference, _ = ours.step(p, nf.grad(loss_fn)(p, x, y), our_state)
    torch.testing.assert_close(stepped["weight"], reference["weight"])
    grown = nf.add_param(p, "gain", torch.ones(3))
    assert isinstance(state[0].mu, list) and len(state[0].mu) == 2  # flat leaves, not particles
    with pytest.raises(ValueError, match="leaves"):
        tx.update(nf.grad(loss_fn)(grown, x, y), nf.touch_tree(state, fill="zeros"))


def test_demo_runs_small(tmp_path):
    from nytorch_func import demo

    result = demo.run(members=4, steps=12, mix_every=5, progress=False)
    assert len(result.accuracy) == 4 and max(result.accuracy) > 0.5
    assert result.grown_at == 6 and result.history[-1][0] == 11
    demo.plot(result, str(tmp_path / "acc.png"))
    assert (tmp_path / "acc.png").stat().st_size > 1000
