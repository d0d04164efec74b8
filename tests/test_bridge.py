"""The module bridge on real modules: from_module, to_module, apply, apply_with_state, grad, vmap."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nytorch_func as nf
from nytorch_func import NytorchFuncError, SchemaError

from helpers import BUILDERS, bn_net, example_input, mlp, tied_model, unchanged, values

NAMES = list(BUILDERS)


def _eager(module, x):
    """The module's own output on a private copy (eager train-mode runs update buffers)."""
    return copy.deepcopy(module)(x)


@pytest.mark.parametrize("name", NAMES)
def test_from_module_views_the_module_tensors(name):
    net = BUILDERS[name]()
    p = nf.from_module(net)
    assert p.version == 0 and len(p.species) == 1 and p.species.head is p.schema
    named = dict(net.named_parameters(remove_duplicate=False))
    assert set(named) == {path for s in p.schema.params for path in s.paths}
    for path, t in named.items():
        assert p[path] is t
    for path, t in net.named_buffers():
        assert p[path] is t
    # the skeleton holds no data
    assert all(t.device.type == "meta" for t in p.schema.skeleton.parameters())
    assert all(t.device.type == "meta" for t in p.schema.skeleton.buffers())


@pytest.mark.parametrize("name", NAMES)
def test_to_module_state_dict_equals_original(name):
    net = BUILDERS[name]()
    p = nf.from_module(net)
    m = nf.to_module(p)
    assert type(m) is type(net) and m is not net
    sd, ref = m.state_dict(), net.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k]) and sd[k].dtype == ref[k].dtype, k
        assert sd[k].data_ptr() != ref[k].data_ptr()  # copy=True owns its storage
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert all(a.requires_grad == b.requires_grad for a, b in zip(m.parameters(), net.parameters()))
    x = example_input(name)
    m.eval(), net.eval()
    assert torch.allclose(m(x), net(x))


def test_to_module_copy_false_shares_storage():
    net = mlp()
    p = nf.from_module(net)
    m = nf.to_module(p, copy=False)
    assert m[0].weight.data_ptr() == net[0].weight.data_ptr()
    m2 = nf.to_module(p)
    with torch.no_grad():
        m2[0].weight.add_(1)
    assert torch.equal(p["0.weight"], net[0].weight)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_apply_equals_eager(name, mode):
    net = BUILDERS[name]()
    p = nf.from_module(net)
    x = example_input(name)
    if mode == "eval":
        p = p.eval()
        net.eval()
    out = nf.apply(p, x)
    ref = _eager(net, x)
    assert torch.allclose(out, ref, atol=1e-6), (out - ref).abs().max()


@pytest.mark.parametrize("name", NAMES)
def test_apply_never_mutates_particle_or_skeleton(name):
    p = nf.from_module(BUILDERS[name]())
    skel = p.schema.skeleton
    modes = [m.training for m in skel.modules()]
    skel_tensors = [*skel.parameters(), *skel.buffers()]
    x = example_input(name)
    with unchanged(p):
        nf.apply(p, x)
        nf.apply(p.eval(), x)
        nf.apply_with_state(p, x)
    assert [m.training for m in skel.modules()] == modes
    assert all(a is b for a, b in zip([*skel.parameters(), *skel.buffers()], skel_tensors))
    assert all(t.device.type == "meta" for t in skel_tensors)


def test_apply_batchnorm_train_mode_keeps_buffers():
    p = nf.from_module(bn_net())
    x = torch.randn(8, 4) * 3 + 1
    before = {k: v.clone() for k, v in p.buffers.items()}
    y1 = nf.apply(p, x)
    y2 = nf.apply(p, x)  # same stats each time: nothing accumulated
    assert torch.equal(y1, y2)
    for k, v in p.buffers.items():
        assert torch.equal(v, before[k]), k
    assert int(p["1.num_batches_tracked"]) == 0


def test_eval_mode_uses_running_stats():
    net = bn_net()
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)
    p = nf.from_module(net)
    x = torch.randn(8, 4)
    assert not torch.allclose(nf.apply(p, x), nf.apply(p.eval(), x))
    assert torch.allclose(nf.apply(p.eval(), x), _eager(net.eval(), x))


def test_apply_with_state_equals_eager_statistics():
    net = bn_net()
    ref = copy.deepcopy(net)
    p = nf.from_module(copy.deepcopy(net))
    for step in range(3):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step)) + step
        out, p2 = nf.apply_with_state(p, x)
        expected = ref(x)
        assert torch.allclose(out, expected, atol=1e-6)
        assert p2.schema is p.schema
        for k, v in ref.named_buffers():
            assert torch.allclose(p2[k], v), k
            assert p2[k] is not p[k]
        for k in p.params:
            assert p2[k] is p[k]
        assert int(p["1.num_batches_tracked"]) == step  # the input particle never moves
        p = p2
    assert int(p["1.num_batches_tracked"]) == 3


class RunningMean(nn.Module):
    """Keeps a running mean of its output by *reassigning* the buffer (the seed's example)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.register_buffer("mean", torch.zeros(1))

    def forward(self, x):
        y = self.layer(x)
        with torch.no_grad():
            self.mean = 0.5 * self.mean + 0.5 * y.mean()
        return y


def test_apply_with_state_keeps_reassigned_buffer():
    net = RunningMean()
    p = nf.from_module(copy.deepcopy(net))
    x = torch.randn(10, 4)
    _, p2 = nf.apply_with_state(p, x)
    net(x)
    assert torch.allclose(p2["mean"], net.mean) and not torch.equal(p2["mean"], p["mean"])
    assert torch.equal(p["mean"], torch.zeros(1))
    q = p.randn()  # another particle keeps its own mean (no leak across the species)
    assert torch.equal(q["mean"], torch.zeros(1))


# tied weights ---------------------------------------------------------------------------------

def test_tied_stays_tied_through_to_module_and_apply():
    net = tied_model()
    p = nf.from_module(net)
    m = nf.to_module(p)
    assert m.out.weight is m.emb.weight
    q = p.randn()
    assert q["out.weight"] is q["emb.weight"]
    mq = nf.to_module(q)
    assert mq.out.weight is mq.emb.weight and torch.equal(mq.emb.weight, q["emb.weight"])
    x = example_input("tied")
    assert torch.allclose(nf.apply(q, x), mq(x))
    # the gradient of the one leaf sums over both uses, as autograd on the module does
    g = torch.func.grad(lambda r: nf.apply(r, x).pow(2).sum())(p)
    net.zero_grad()
    net(x).pow(2).sum().backward()
    assert torch.allclose(g["emb.weight"], net.emb.weight.grad, atol=1e-6)
    assert g["out.weight"] is g["emb.weight"]


# grad and vmap --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "convnet", "nested_sequential", "embedding_net", "tied",
                                  "lstm_tagger"])
def test_grad_is_a_particle_equal_to_autograd(name):
    net = BUILDERS[name]()
    p = nf.from_module(net)
    x = example_input(name)

    def loss(q, inp):
        return nf.apply(q, inp).square().mean()

    g = torch.func.grad(loss)(p, x)
    assert isinstance(g, nf.Particle) and g.schema is p.schema
    net.zero_grad()
    net(x).square().mean().backward()
    checked = 0
    for path, t in net.named_parameters():
        if not t.requires_grad:  # torch.func.grad differentiates every leaf; autograd does not
            continue
        assert torch.allclose(g[path], t.grad, atol=1e-6), path
        checked += 1
    assert checked >= 2


def test_grad_over_batchnorm_particle():
    """nf.grad differentiates the parameters of a particle that carries integer buffers.

    Raw ``torch.func.grad`` differentiates *every* leaf of its argument, so it needs a particle
    whose leaves are all floating point: over a BatchNorm particle (int64
    ``num_batches_tracked``) it raises, by torch's design. ``nf.grad`` / ``nf.value_and_grad``
    are the answer; this test pins both halves.
    """
    net = bn_net()
    p = nf.from_module(net)
    x = example_input("bn_net")

    def loss(q):
        return nf.apply(q, x).square().mean()

    with pytest.raises(RuntimeError):
        torch.func.grad(loss)(p)
    g = nf.grad(loss)(p)
    assert isinstance(g, nf.Particle) and g.schema is p.schema
    net.zero_grad()
    net(x).square().mean().backward()
    for path, t in net.named_parameters():
        assert torch.allclose(g[path], t.grad, atol=1e-6), path
    assert not g["1.num_batches_tracked"].any()


def test_vmap_over_population_equals_per_member_apply():
    p = nf.from_module(mlp())
    pop = nf.population(p, 5, generator=torch.Generator().manual_seed(3))
    x = torch.randn(7, 4)
    out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    assert out.shape == (5, 7, 3)
    for i, member in enumerate(nf.unstack(pop)):
        assert torch.allclose(out[i], nf.apply(member, x), atol=1e-6)
        assert torch.allclose(out[i], nf.to_module(member)(x), atol=1e-6)


def test_vmap_grad_per_member():
    pop = nf.population(mlp(), 3, generator=torch.Generator().manual_seed(4))
    x, y = torch.randn(6, 4), torch.randn(6, 3)

    def loss(q):
        return F.mse_loss(nf.apply(q, x), y)

    grads = torch.func.vmap(torch.func.grad(loss))(pop)
    assert grads.schema is pop.schema and grads.batch_shape == (3,)
    for i, member in enumerate(nf.unstack(pop)):
        g = torch.func.grad(loss)(member)
        for k in member.params:
            assert torch.allclose(grads[k][i], g[k], atol=1e-6)


# refusals and hooks ---------------------------------------------------------------------------

def test_to_module_refuses_population():
    pop = nf.population(mlp(), 2)
    with pytest.raises(SchemaError, match=r"population with batch shape \(2,\)"):
        nf.to_module(pop)


@pytest.mark.parametrize("fn", [nf.apply, nf.apply_with_state, nf.to_module])
def test_bridge_refuses_non_particles(fn):
    with pytest.raises(NytorchFuncError, match="expected a Particle"):
        fn(mlp())


def test_from_module_refuses_non_module_and_uncopyable():
    with pytest.raises(NytorchFuncError, match="expected an nn.Module"):
        nf.from_module({"weight": torch.ones(1)})

    class NoCopy(nn.Linear):
        def __deepcopy__(self, memo):
            raise RuntimeError("no copies")

    with pytest.raises(SchemaError, match="cannot copy the structure of NoCopy"):
        nf.from_module(NoCopy(2, 2))


def test_from_module_hook():
    base = nf.from_module(mlp())

    class Facade(nn.Module):
        def __nytorch_particle__(self):
            return base

    assert nf.from_module(Facade()) is base


def test_shared_embeddings_of_the_seed_tagger():
    net = BUILDERS["lstm_tagger"]()
    p = nf.configure(nf.from_module(net), "word_embeddings", operational=False, clone=False)
    emb = p["word_embeddings.weight"]
    assert "word_embeddings.weight" not in p.schema.leaf_keys
    assert torch.equal(emb, net.word_embeddings.weight)
    q = p.randn()
    assert q["word_embeddings.weight"] is emb
    assert nf.to_module(q).word_embeddings.weight is emb
    x = example_input("lstm_tagger")
    out = nf.apply(q, x)
    assert out.shape == (7, 3) and torch.allclose(out.sum(1), torch.ones(7))
    assert torch.allclose(out, nf.to_module(q)(x), atol=1e-6)
    assert set(values(q)) == set(values(p))


def test_vmap_apply_with_state_gives_each_member_its_stats():
    pop = nf.population(bn_net(), 3, generator=torch.Generator().manual_seed(5))
    x = example_input("bn_net")
    out, after = torch.func.vmap(nf.apply_with_state, in_dims=(0, None))(pop, x)
    assert after.schema is pop.schema and after.batch_shape == (3,)
    assert torch.equal(after["1.num_batches_tracked"], torch.ones(3, dtype=torch.long))
    for i, member in enumerate(nf.unstack(pop)):
        o, a = nf.apply_with_state(member, x)
        assert torch.allclose(out[i], o, atol=1e-6)
        assert torch.allclose(after["1.running_mean"][i], a["1.running_mean"], atol=1e-6)
    assert not torch.allclose(after["1.running_mean"][0], after["1.running_mean"][1])
    assert not pop["1.num_batches_tracked"].any()


class SharedCounter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x):
        self.count.add_(1)  # a buffer added later with state=False: shared by the species
        return self.layer(x)


def test_apply_does_not_change_shared_buffers():
    """A shared buffer is one tensor of the species: nf.apply runs the forward on a copy of it
    (apply is pure), and apply_with_state refuses a forward that changes it instead of silently
    dropping the update; as per-particle state the update is kept."""
    count = torch.zeros(1)
    p = nf.add_buffer(nf.from_module(SharedCounter()), "count", count, state=False)
    x = torch.ones(1, 2)
    with unchanged(p):
        assert torch.allclose(nf.apply(p, x), nf.to_module(p).layer(x))
    assert count.item() == 0 and p["count"] is count
    with unchanged(p):
        with pytest.raises(SchemaError, match="changed the shared buffer 'count'"):
            nf.apply_with_state(p, x)
    pop = nf.population(p, 3)
    with unchanged(pop):
        torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
        with pytest.raises(SchemaError, match="shared buffer 'count'"):
            torch.func.vmap(nf.apply_with_state, in_dims=(0, None))(pop, x)
    assert count.item() == 0
    state = nf.add_buffer(nf.from_module(SharedCounter()), "count", torch.zeros(1))
    _, after = nf.apply_with_state(state, x)
    assert after["count"].item() == 1 and state["count"].item() == 0


class ReadsSharedBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x):
        return self.layer(x) * self.scale  # reads, never writes, a shared buffer


def test_apply_with_state_accepts_a_shared_buffer_it_only_reads():
    p = nf.add_buffer(nf.from_module(ReadsSharedBuffer()), "scale", torch.full((1,), 2.0),
                      state=False)
    x = torch.randn(3, 2)
    out, after = nf.apply_with_state(p, x)
    assert torch.allclose(out, nf.apply(p, x)) and after["scale"] is p["scale"]


def test_to_module_keeps_per_submodule_modes():
    """Regression: to_module called .train(root mode) on the copy, so a frozen (eval)
    BatchNorm or Dropout inside a training model came back in training mode, and
    to_module(p)(x) differed from nf.apply(p, x) and from the original module."""
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    net[1].eval()
    net[2].eval()
    with torch.no_grad():
        net[1].running_mean.fill_(2.0)
    p = nf.from_module(net)
    x = torch.randn(4, 3)
    m = nf.to_module(p)
    assert [mod.training for mod in m.modules()] == [mod.training for mod in net.modules()]
    assert torch.allclose(m(x), _eager(net, x)) and torch.allclose(nf.apply(p, x), m(x))
    # an explicit mode on the particle sets every module, as Module.train/eval do
    assert not any(mod.training for mod in nf.to_module(p.eval()).modules())
    assert all(mod.training for mod in nf.to_module(p.train()).modules())


def test_failed_forward_restores_skeleton_modes():
    p = nf.from_module(bn_net())
    modes = [m.training for m in p.schema.skeleton.modules()]
    with unchanged(p):
        with pytest.raises(RuntimeError):
            nf.apply(p.eval(), torch.randn(5, 9))  # wrong feature size
        with pytest.raises(RuntimeError):
            nf.apply_with_state(p.eval(), torch.randn(5, 9))
    assert [m.training for m in p.schema.skeleton.modules()] == modes
    assert torch.allclose(nf.apply(p, example_input("bn_net")),
                          _eager(nf.to_module(p), example_input("bn_net")), atol=1e-6)


def test_apply_compiles_without_graph_breaks():
    """The species' call lock is skipped while torch.compile traces, so nf.apply stays one
    graph (a lock would break it)."""
    p = nf.from_module(bn_net()).eval()
    x = example_input("bn_net")

    @torch.compile(fullgraph=True, backend="eager")
    def forward(q, inp):
        return nf.apply(q, inp)

    assert torch.allclose(forward(p, x), nf.apply(p, x), atol=1e-6)
