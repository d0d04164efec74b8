"""Failing examples the property suite found, kept as explicit tests.

Each was a core bug, kept as a strict xfail until fixed (the reason names it); then it guards
the fix.
"""

from __future__ import annotations

import pytest
import torch

import nytorch_func as nf


def _grown(p):
    """``p``'s species after one added parameter (p itself stays at its version)."""
    return nf.add_param(p.clone(), "extra", torch.nn.Parameter(torch.full((2,), -3.0)))


@pytest.mark.parametrize("op", [lambda p: -p, lambda p: 3.0 * p, lambda p: p ** 2,
                                lambda p: p / 2, abs])
def test_unary_and_scalar_ops_touch_first(op):
    p = nf.from_module(torch.nn.Linear(1, 1))
    _grown(p)
    assert torch.equal(nf.touch(op(p))["extra"].detach(), op(nf.touch(p))["extra"].detach())


def test_binary_op_on_two_stale_operands_touches_first():
    p = nf.from_module(torch.nn.Linear(1, 1))
    _grown(p)
    assert torch.equal(nf.touch(p + p)["extra"].detach(), (nf.touch(p) + nf.touch(p))["extra"].detach())


def test_population_survives_a_version_without_leaves():
    p = nf.from_module(torch.nn.Linear(1, 1, bias=False))
    pop = nf.stack([p.clone(), p.randn()])
    p = nf.del_param(p, "weight")  # version 1 has no leaves at all
    pop = nf.touch(pop)
    nf.add_param(p, "extra", torch.nn.Parameter(torch.zeros(())))
    assert nf.touch(pop).batch_shape == (2,)


def test_arithmetic_on_a_particle_without_leaves():
    p = nf.del_param(nf.from_module(torch.nn.Embedding(1, 1)), "weight")
    assert (p * 3.0).leaves == () and (p + p).leaves == () and (-p).leaves == ()


def test_particle_arithmetic_under_vmap():
    pop = nf.population(torch.nn.Linear(2, 1), 3)
    out = torch.func.vmap(lambda p: 2 * p)(pop)
    assert torch.equal(out["weight"], 2 * pop["weight"])


# found by the migration law suite (nytorch_func.testing.check_migration_laws) ------------------

def _lstm_particle():
    return nf.from_module(torch.nn.LSTM(2, 3))


def test_lstm_forward_leaves_the_skeleton_alone():
    """Was: functional_call swapped the particle's tensors into the shared skeleton through
    nn.LSTM.__setattr__, which rebuilt _flat_weights, and restoring left the particle's real
    tensors there (law 'apply_pure'); fixed on main with pure forward passes."""
    p = _lstm_particle()
    before = [id(t) for t in p.schema._skeleton._flat_weights]
    nf.apply(p, torch.randn(4, 2))
    assert [id(t) for t in p.schema._skeleton._flat_weights] == before
    assert all(t.is_meta for t in p.schema._skeleton._flat_weights)


def test_save_after_an_lstm_forward(tmp_path):
    """Was (same cause): after one nf.apply of an nn.LSTM particle, nf.save refused the
    species' '_flat_weights[0]' (law 'checkpoint_round_trip')."""
    p = _lstm_particle()
    nf.apply(p, torch.randn(4, 2))
    nf.save(tmp_path / "lstm.safetensors", p)
    assert nf.load(tmp_path / "lstm.safetensors").version == 0


def test_vmap_apply_of_an_all_shared_population():
    p = nf.configure(nf.from_module(torch.nn.Linear(2, 1)), "", operational=False, clone=False)
    pop = nf.population(p, 3)
    x = torch.randn(4, 2)
    out = nf.vmap_apply(pop, x)
    assert torch.equal(out, torch.stack([nf.apply(p, x)] * 3))


def test_save_a_population_touched_over_an_added_scalar(tmp_path):
    p = nf.from_module(torch.nn.Linear(1, 1))
    pop = nf.stack([p])
    nf.add_param(p, "gain", torch.nn.Parameter(torch.zeros(())))
    pop = nf.touch(pop)
    nf.save(tmp_path / "pop.safetensors", pop)
    assert torch.equal(nf.load(tmp_path / "pop.safetensors")["gain"], pop["gain"])


@pytest.mark.parametrize("event", ["del_param", "set_none"])
def test_save_after_removing_an_lstm_weight(tmp_path, event):
    p = getattr(nf, event)(nf.from_module(torch.nn.Sequential(torch.nn.LSTM(1, 1))),
                           "0.weight_hh_l0")
    nf.save(tmp_path / "lstm.safetensors", p)
    assert nf.load(tmp_path / "lstm.safetensors").version == 1


# found while drawing growth events (nytorch_func.testing's widen/deepen kinds) ----------------

def _mlp():
    nn = torch.nn
    return nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))


def _refused_and_unchanged(p, call, match):
    """``call(p)`` is a typed refusal naming its function, and p's species stays as it was."""
    n, head = len(p.species), p.species.head
    with pytest.raises(nf.SchemaError, match=match):
        call(p)
    assert len(p.species) == n and p.species.head is head


@pytest.mark.parametrize("remove", [lambda p: nf.set_none(p, "0.weight"),
                                    lambda p: nf.del_param(p, "0.weight")],
                         ids=["set_none", "del_param"])
@pytest.mark.parametrize("method", ["zeros", "net2net"])
def test_widening_a_layer_without_a_weight_is_refused(remove, method):
    """Was an AttributeError (method='zeros') or a weightless layer grown (net2net)."""
    p = remove(_mlp())
    _refused_and_unchanged(p, lambda q: nf.widen(q, "0", "2", 2, method=method),
                           "widen: .*no weight")


def test_deepening_after_a_layer_without_a_weight_is_refused():
    """Was a KeyError."""
    p = nf.set_none(_mlp(), "0.weight")
    _refused_and_unchanged(p, lambda q: nf.deepen(q, "1"), "deepen: .*no weight")


@pytest.mark.parametrize("net, x, after", [
    (lambda nn: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2)),
     (2, 1, 5, 5), "2"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Flatten(), nn.Linear(8, 2)), (5, 2, 3), "1"),
], ids=["conv-flatten", "linear-flatten"])
def test_deepening_after_a_flatten_is_refused(net, x, after):
    """deepen took its width from the Linear/Conv before the Flatten and was accepted: its
    identity layer then broke the forward pass (a Conv2d on flat features, a Linear of the
    wrong width)."""
    p = nf.from_module(net(torch.nn))
    nf.apply(p, torch.randn(x))  # the model runs
    _refused_and_unchanged(p, lambda q: nf.deepen(q, after), "deepen: .*Flatten")


# found by the law suite drawing growth on the 3-layer MLP (ci profile) -----------------------

@pytest.mark.parametrize("index, n", [(0, 1), (0, 2), (1, 1)])
def test_inserting_before_children_with_shared_values_keeps_them(index, n):
    """Was: _containers.InsertModules.apply renamed the shared values of the moved children one
    by one in place, so '0'->'1' overwrote '1' before it moved and the species lost a shared
    tensor (fixed on main in 2e5a7f0: moved all at once)."""
    nn = torch.nn
    p = nf.from_module(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Tanh(),
                                     nn.Linear(3, 1)))
    p = nf.configure(p, "", operational=False, clone=False)  # every parameter shared
    before = {s.pid: p[s.key] for s in p.schema.params}
    q = nf.insert_module(p, "", index, [nn.Identity() for _ in range(n)])
    for spec in q.schema.params:  # every id still holds its own tensor, at its moved key
        assert q[spec.key] is before[spec.pid], spec.key
        assert tuple(q[spec.key].shape) == tuple(spec.shape), spec.key
    x = torch.randn(4, 2)
    assert torch.equal(nf.apply(q, x), nf.apply(p, x))


def test_deepening_before_children_with_shared_values_keeps_them():
    """The same through nf.deepen (found by tests/test_io_lossless.py under the ci profile:
    nf.load then refused the checkpoint, its shared tensors not matching the shared specs)."""
    nn = torch.nn
    p = nf.from_module(nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)))
    p = nf.configure(p, "", operational=False, clone=False)
    before = {s.pid: p[s.key] for s in p.schema.params}
    q = nf.deepen(p, "0")
    assert all(q[s.key] is before[s.pid] for s in q.schema.params if s.pid in before)
