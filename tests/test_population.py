"""Populations on torch.func: stacking, vmapped forward passes and gradients, buffers, touch."""

import pytest
import torch
from torch import nn

import nytorch_func as nf


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def conv():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.out = nn.Linear(5, 3)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        return self.out(h)


def bn_net():
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


CASES = {
    "mlp": (mlp, lambda: torch.randn(5, 6)),
    "conv": (conv, lambda: torch.randn(4, 1, 5, 5)),
    "lstm": (Tagger, lambda: torch.randint(0, 11, (2, 7))),
    "bn-eval": (lambda: bn_net().eval(), lambda: torch.randn(8, 4)),
}


def members(pop):
    return [nf.to_module(m) for m in nf.unstack(pop)]


@pytest.mark.parametrize("case", CASES)
def test_vmap_forward_equals_each_member(case):
    build, data = CASES[case]
    pop = nf.population(build(), 4, init="randn")
    x = data()
    if case == "lstm":  # torch 2.13 has no batching rule for aten::lstm: vmap_apply falls back
        with pytest.raises(RuntimeError, match="Batching rule not implemented"):
            torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
        with pytest.warns(nf.VmapFallbackWarning, match="one by one"):
            out = nf.vmap_apply(pop, x)
    else:
        out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
        torch.testing.assert_close(nf.vmap_apply(pop, x), out)
    for i, m in enumerate(members(pop)):
        torch.testing.assert_close(out[i], m(x))


def test_vmap_per_member_inputs():
    pop = nf.population(mlp(), 3)
    xs = torch.randn(3, 5, 6)
    out = torch.func.vmap(nf.apply, in_dims=(0, 0))(pop, xs)
    for i, m in enumerate(members(pop)):
        torch.testing.assert_close(out[i], m(xs[i]))


def loss_fn(p, x, y):
    return nn.functional.cross_entropy(nf.apply(p, x), y)


def test_per_member_gradients_equal_member_grad():
    pop = nf.population(mlp(), 4)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    grads = torch.func.vmap(torch.func.grad(loss_fn), in_dims=(0, None, None))(pop, x, y)
    assert isinstance(grads, nf.Particle) and grads.schema is pop.schema
    for i, member in enumerate(nf.unstack(pop)):
        g = torch.func.grad(loss_fn)(member, x, y)
        for a, b in zip(grads[i].leaves, g.leaves):
            torch.testing.assert_close(a, b)
        # and equal to autograd on an eager module
        m = nf.to_module(member)
        loss_fn(nf.from_module(m), x, y).backward()
        torch.testing.assert_close(g["0.weight"], m[0].weight.grad)


def test_jacrev_over_particle():
    p = nf.from_module(nn.Linear(3, 2))
    x = torch.randn(3)
    jac = torch.func.jacrev(nf.apply)(p, x)
    assert isinstance(jac, nf.Particle)
    assert jac["weight"].shape == (2, 2, 3)
    torch.testing.assert_close(jac["bias"], torch.eye(2))


def test_batchnorm_training_stats_per_member_under_vmap():
    base = bn_net()
    pop = nf.population(base, 3)
    xs = torch.randn(3, 8, 4)
    out, after = torch.func.vmap(nf.apply_with_state, in_dims=(0, 0))(pop, xs)
    for i, member in enumerate(nf.unstack(pop)):
        m = nf.to_module(member)
        expected = m(xs[i])
        torch.testing.assert_close(out[i], expected)
        torch.testing.assert_close(after["1.running_mean"][i], m[1].running_mean)
        torch.testing.assert_close(after["1.running_var"][i], m[1].running_var)
        assert int(after["1.num_batches_tracked"][i]) == 1
    # the input population is unchanged
    assert int(pop["1.num_batches_tracked"].sum()) == 0
    torch.testing.assert_close(pop["1.running_mean"], torch.zeros(3, 6))


def test_stack_unstack_round_trip_and_indexing():
    p = nf.from_module(Tagger())
    ps = [p, p.randn(), p.rand()]
    pop = nf.stack(ps)
    assert len(pop) == 3 and pop.batch_shape == (3,)
    for a, b in zip(nf.unstack(pop), ps):
        for x, y in zip(a.leaves, b.leaves):
            assert torch.equal(x, y)
    assert len(pop[1:]) == 2 and len(pop[torch.tensor([0, 2])]) == 2
    assert len(pop[torch.tensor([True, False, True])]) == 2
    assert pop[-1].batch_shape == ()
    assert [m.version for m in pop] == [0, 0, 0]


def test_stack_touches_members_and_refuses_mixed_species():
    p = nf.from_module(mlp())
    old = p.randn()
    grown = nf.add_param(p, "scale", torch.ones(1))
    pop = nf.stack([grown, old])
    assert pop.version == 1 and torch.equal(pop["scale"], torch.ones(2, 1))
    with pytest.raises(nf.SpeciesMismatchError, match="member 1"):
        nf.stack([p, nf.from_module(mlp())])
    with pytest.raises(nf.SchemaError, match="no particles"):
        nf.stack([])


def test_shared_params_stay_one_tensor():
    p = nf.configure(nf.from_module(mlp()), "0", operational=False, clone=False)
    shared = p["0.weight"]
    pop = nf.population(p, 5)
    assert pop["0.weight"] is shared and pop["2.weight"].shape == (5, 3, 8)
    out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, torch.randn(2, 6))
    assert out.shape == (5, 2, 3)


@pytest.mark.parametrize("init", ["randn", "rand", "clone", "zeros"])
def test_population_inits(init):
    p = nf.configure(nf.from_module(mlp()), "2.bias", operational=False)
    g = torch.Generator().manual_seed(3)
    pop = nf.population(p, 4, init=init, generator=g)
    w = pop["0.weight"]
    assert w.shape == (4, 8, 6)
    # non-operational parameters are copies of the source in every member
    assert torch.equal(pop["2.bias"], p["2.bias"].expand(4, 3))
    if init == "clone":
        assert torch.equal(w, p["0.weight"].expand(4, 8, 6))
    elif init == "zeros":
        assert not w.any()
    elif init == "rand":
        assert (w >= 0).all() and (w < 1).all()
    else:
        assert not torch.equal(w[0], w[1])
    again = nf.population(p, 4, init=init, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again["0.weight"], w)


def test_population_callable_init_and_errors():
    pop = nf.population(mlp(), 2, init=lambda base, spec: base * 0 + spec.pid)
    assert torch.equal(pop["2.weight"], torch.full((2, 3, 8), 2.0))
    with pytest.raises(nf.SchemaError, match="positive int"):
        nf.population(mlp(), 0)
    with pytest.raises(nf.SchemaError, match="init must be"):
        nf.population(mlp(), 2, init="gauss")
    with pytest.raises(nf.SchemaError, match=r"must return a tensor of shape \(2, 8, 6\)"):
        nf.population(mlp(), 2, init=lambda base, spec: base[0])


def test_from_modules_one_species_and_mismatch():
    nets = [conv() for _ in range(3)]
    pop = nf.from_modules(nets)
    x = torch.randn(2, 1, 5, 5)
    out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[i], net(x))
    with pytest.raises(nf.SchemaError, match="module 1 differs"):
        nf.from_modules([nn.Linear(2, 2), nn.Linear(2, 3)])


@pytest.mark.parametrize("event", ["add_param", "del_param", "add_buffer", "add_module",
                                   "del_module", "set_none", "configure_shared", "configure_leaf"])
def test_population_touch_equals_memberwise(event):
    base = nf.from_module(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)))
    if event == "configure_leaf":
        base = nf.configure(base, "0.bias", operational=False, clone=False)
    pop = nf.population(base, 4)
    edits = {
        "add_param": lambda p: nf.add_param(p, "0.gain", torch.randn(8)),
        "del_param": lambda p: nf.del_param(p, "2.bias"),
        "add_buffer": lambda p: nf.add_buffer(p, "count", torch.zeros(2)),
        "add_module": lambda p: nf.add_module(p, "3", nn.Linear(3, 2)),
        "del_module": lambda p: nf.del_module(p, "1"),
        "set_none": lambda p: nf.set_none(p, "0.bias"),
        "configure_shared": lambda p: nf.configure(p, "2", operational=False, clone=False),
        "configure_leaf": lambda p: nf.configure(p, "0.bias", clone=True),
    }
    edits[event](base)
    batched = nf.touch(pop)
    one_by_one = nf.stack([nf.touch(m) for m in nf.unstack(pop)])
    assert batched.schema is one_by_one.schema
    for a, b in zip(batched.leaves, one_by_one.leaves):
        assert torch.equal(a, b)
    if event == "add_module":
        out = torch.func.vmap(nf.apply, in_dims=(0, None))(batched, torch.randn(2, 6))
        assert out.shape == (4, 2, 2)


def test_particle_ops_compile_without_graph_breaks():
    pop = nf.population(mlp(), 8).detach()
    best = pop[0]

    @torch.compile(fullgraph=True, backend="eager")
    def swarm_step(pop, best, alpha):
        return (1 - alpha) * pop + alpha * best

    out = swarm_step(pop, best, 0.25)
    torch.testing.assert_close(out["0.weight"], 0.75 * pop["0.weight"] + 0.25 * best["0.weight"])


def test_populations_of_a_module_without_tensors_keep_their_size():
    """Regression: with no leaves to read it from, a population of a tensor-less module had
    batch shape () and no len(). The particle records its batch shape instead."""
    e = nf.from_module(nn.Sequential(nn.ReLU(), nn.Flatten()))
    pop = nf.population(e, 5)
    assert pop.batch_shape == (5,) and len(pop) == 5 and pop.leaves == ()
    assert len(nf.stack([e, e])) == 2 and len(nf.stack([pop, pop])) == 2
    assert nf.stack([pop, pop]).batch_shape == (2, 5)
    assert pop[1:4].batch_shape == (3,) and pop[torch.tensor([0, 4])].batch_shape == (2,)
    assert pop[torch.tensor([True, False, True, False, False])].batch_shape == (2,)
    assert pop[2].batch_shape == () and [m.batch_shape for m in nf.unstack(pop)] == [()] * 5
    assert (0.5 * pop).batch_shape == (5,) and pop.clone().batch_shape == (5,)
    flat, spec = torch.utils._pytree.tree_flatten(pop)
    assert flat == [] and torch.utils._pytree.tree_unflatten(flat, spec).batch_shape == (5,)
    grown = nf.add_param(pop, "gain", torch.ones(3))  # an event gives every member its copy
    assert grown["gain"].shape == (5, 3) and nf.touch(pop)["gain"].shape == (5, 3)
    shrunk = nf.del_param(grown, "gain")
    assert shrunk.leaves == () and shrunk.batch_shape == (5,)
    late = nf.touch(nf.population(e, 2))  # across both events: added, then deleted
    assert late.version == 2 and late.leaves == () and late.batch_shape == (2,)


# vmap_apply's in_dims, stack's and from_modules' arguments --------------------------------------

class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x, y):
        return self.lin(x) * y


@pytest.mark.parametrize("in_dims, prepare", [
    (0, lambda xs, ys: (xs, ys)),
    ([0, 0], lambda xs, ys: (xs, ys)),
    ((1, 0), lambda xs, ys: (xs.transpose(0, 1), ys)),
    ((-1, 0), lambda xs, ys: (xs.movedim(0, -1), ys)),
], ids=["int", "list", "dim1", "negative"])
def test_vmap_apply_in_dims_like_torch_func_vmap(in_dims, prepare):
    pop = nf.population(_TwoInputs(), 4, generator=torch.Generator().manual_seed(0))
    xs, ys = torch.randn(4, 5, 3), torch.randn(4, 5, 1)
    want = torch.stack([nf.apply(pop[i], xs[i], ys[i]) for i in range(4)])
    got = nf.vmap_apply(pop, *prepare(xs, ys), in_dims=in_dims)
    torch.testing.assert_close(got, want)


def test_vmap_apply_int_in_dims_on_the_fallback_path_and_two_batch_dims():
    pop = nf.population(Tagger(), 3, init="randn")
    tokens = torch.randint(0, 11, (3, 2, 7))
    with pytest.warns(nf.VmapFallbackWarning):
        out = nf.vmap_apply(pop, tokens, in_dims=0)
    for i, m in enumerate(members(pop)):
        torch.testing.assert_close(out[i], m(tokens[i]))
    grid = nf.stack([nf.population(mlp(), 3)] * 2)  # batch shape (2, 3)
    xs = torch.randn(2, 3, 5, 6)
    out = nf.vmap_apply(grid, xs, in_dims=0)
    torch.testing.assert_close(out[1, 2], nf.apply(grid[1][2], xs[1, 2]))


@pytest.mark.parametrize("args, in_dims, error, match", [
    ((torch.randn(4, 5, 3),), "0", nf.ArgumentTypeError, "in_dims must be None, an int or a tuple"),
    ((torch.randn(4, 5, 3),), True, nf.ArgumentTypeError, "in_dims must be None, an int or a tuple"),
    ((torch.randn(4, 5, 3),), ({"x": 0},), nf.ArgumentTypeError,
     r"in_dims\[0\]=\{'x': 0\} does not match the structure of argument 0"),
    (({"x": torch.randn(4, 5, 3)},), ({"x": "0"},), nf.ArgumentTypeError, "must hold ints or None"),
    (({"x": torch.randn(4, 5, 3), "n": 2},), 0, nf.ArgumentTypeError,
     r"argument 0 is mapped \(in_dims\[0\]=0\) but holds a int"),
    ((torch.randn(4, 5, 3), 2.0), 0, nf.ArgumentTypeError, "argument 1 is mapped .* holds a float"),
    ((torch.randn(3, 5, 3),), 0, nf.SchemaError, r"batch shape \(4,\) at dim 0 .* shape \(3, 5, 3\)"),
    ((torch.randn(4, 5, 3),), 5, nf.SchemaError, r"batch shape \(4,\) at dim 5"),
    ((torch.randn(4, 5, 3),), -7, nf.SchemaError, r"at dim -7"),
    ((torch.randn(4, 5, 3),), (0, None), nf.SchemaError, "in_dims has 2 entries for 1 arguments"),
], ids=["str", "bool", "nested_for_a_tensor", "nested_str", "int_leaf_mapped", "float_mapped",
        "wrong_size", "dim_too_large", "negative_out", "length"])
def test_vmap_apply_refuses_bad_in_dims_before_running(args, in_dims, error, match):
    pop = nf.population(nn.Linear(3, 2), 4)
    with pytest.raises(error, match=match):
        nf.vmap_apply(pop, *args, in_dims=in_dims)


def test_vmap_apply_negative_in_dims_need_one_batch_dimension():
    grid = nf.stack([nf.population(nn.Linear(3, 2), 3)] * 2)
    with pytest.raises(nf.SchemaError, match="negative dim needs a population with one batch"):
        nf.vmap_apply(grid, torch.randn(5, 3, 2), in_dims=-1)


@pytest.mark.parametrize("call, match", [
    (lambda p: nf.stack(3), "stack: expected a sequence of Particles, got int"),
    (lambda p: nf.stack(None), "got NoneType"),
    (lambda p: nf.stack(p), "got one Particle"),
    (lambda p: nf.stack(nf.population(p, 2)), "got one Particle"),
    (lambda p: nf.stack([p, "q"]), "stack: expected Particles, got str"),
    (lambda p: nf.from_modules(nn.Linear(2, 2)), "from_modules: expected a sequence of nn.Modules, got one Linear"),
    (lambda p: nf.from_modules(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))), "got one Sequential"),
    (lambda p: nf.from_modules(5), "got int"),
], ids=["stack_int", "stack_none", "stack_particle", "stack_population", "stack_str_member",
        "from_modules_module", "from_modules_sequential", "from_modules_int"])
def test_stack_and_from_modules_refuse_what_is_not_a_sequence(call, match):
    p = nf.from_module(nn.Linear(2, 2))
    with pytest.raises(nf.ArgumentTypeError, match=match):
        call(p)
    assert len(p.species) == 1


def test_stack_and_from_modules_take_any_iterable_and_a_module_list():
    p = nf.from_module(nn.Linear(2, 2))
    assert nf.stack(q for q in (p, p.randn())).batch_shape == (2,)
    assert nf.stack((p, p)).batch_shape == (2,)
    models = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    pop = nf.from_modules(models)
    assert pop.batch_shape == (3,) and torch.equal(pop["weight"][2], models[2].weight)
    assert nf.from_modules(iter(models)).batch_shape == (3,)


class _DictInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, batch):
        return self.lin(batch["x"]) * batch["scale"]


@pytest.mark.parametrize("fallback", [False, True])
def test_vmap_apply_maps_container_arguments_by_a_structure_of_in_dims(fallback, monkeypatch):
    pop = nf.population(_DictInput(), 4, generator=torch.Generator().manual_seed(0))
    batch = {"x": torch.randn(4, 5, 3), "scale": torch.tensor(2.0)}
    want = torch.stack([nf.apply(pop[i], {"x": batch["x"][i], "scale": batch["scale"]})
                        for i in range(4)])
    if fallback:  # the members one by one, as for a model without a batching rule
        def refuse(*a, **k):
            raise RuntimeError("Batching rule not implemented for aten::test")
        monkeypatch.setattr(torch.func, "vmap", lambda fn, in_dims: refuse)
        with pytest.warns(nf.VmapFallbackWarning):
            got = nf.vmap_apply(pop, batch, in_dims=({"x": 0, "scale": None},))
    else:
        got = nf.vmap_apply(pop, batch, in_dims=({"x": 0, "scale": None},))
    torch.testing.assert_close(got, want)
