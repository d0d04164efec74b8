"""nf.population's default initialisation: each member as an independently built module."""

import math

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import TiedLM


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tutorial_mlp():
    """The ensembling tutorial's MLP (and pytorch/functorch #909's 784-128-128-10)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def test_350_members_match_the_modules_own_per_layer_std_and_logits():
    pop = nf.population(tutorial_mlp(), 350, generator=gen()).detach()
    torch.manual_seed(1)
    built = [tutorial_mlp() for _ in range(350)]
    for key in pop.params:
        own = torch.stack([m.get_parameter(key).detach() for m in built]).std()
        assert abs(float(pop[key].std()) / float(own) - 1) < 0.10, key
    x = torch.randn(64, 1, 28, 28)
    logits = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    ref = torch.stack([m(x) for m in built[:50]]).detach()
    assert 0.5 < float(logits.std()) / float(ref.std()) < 2  # the issue: 1.6e3 instead of 0.11
    randn = nf.population(tutorial_mlp(), 4, init="randn", generator=gen()).detach()
    assert float(randn["1.weight"].std()) > 0.9  # N(0, 1) is still there, explicitly


def test_bounds_are_those_of_reset_parameters():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5),
                        nn.LayerNorm(5), nn.Bilinear(5, 5, 2))
    pop = nf.population(net, 64, generator=gen()).detach()
    conv_bound = 1 / math.sqrt(3 * 3 * 3)
    assert float(pop["0.weight"].abs().max()) <= conv_bound
    assert float(pop["0.weight"].abs().max()) > 0.9 * conv_bound
    assert float(pop["0.bias"].abs().max()) <= conv_bound
    assert float(pop["3.weight"].abs().max()) <= 1 / 4 < 1.1 * float(pop["3.weight"].abs().max())
    assert float(pop["5.weight"].abs().max()) <= 1 / math.sqrt(5)
    for key, value in [("1.weight", 1.0), ("1.bias", 0.0), ("4.weight", 1.0), ("4.bias", 0.0),
                       ("1.running_mean", 0.0), ("1.running_var", 1.0)]:
        assert torch.equal(pop[key], torch.full_like(pop[key], value)), key
    assert pop["1.num_batches_tracked"].tolist() == [0] * 64


def test_a_trained_source_gives_fresh_members():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    p = nf.from_module(net)
    _, trained = nf.apply_with_state(p, torch.randn(16, 3) * 5 + 2)
    trained = nf.map_params(lambda t, cfg: t + 10, trained)
    pop = nf.population(trained, 5, generator=gen())
    assert float(pop["0.weight"].detach().abs().max()) <= 1 / math.sqrt(3)
    assert not pop["1.running_mean"].any() and not pop["1.num_batches_tracked"].any()
    assert pop.schema is trained.schema and pop["0.weight"].requires_grad


def test_recurrent_and_embedding_layers():
    lstm = nf.population(nn.LSTM(4, 9, num_layers=2), 16, generator=gen()).detach()
    for key in lstm.params:
        assert float(lstm[key].abs().max()) <= 1 / 3, key
        assert not torch.equal(lstm[key][0], lstm[key][1]), key
    emb = nf.population(nn.Embedding(10, 6, padding_idx=3), 16, generator=gen()).detach()
    assert not emb["weight"][:, 3].any()
    assert 0.85 < float(emb["weight"][:, :3].std()) < 1.15  # N(0, 1), as Embedding draws


def test_reproducible_with_a_generator_and_the_global_rng_untouched():
    net = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    state = torch.get_rng_state()
    a = nf.population(net, 5, generator=gen(3))
    b = nf.population(net, 5, generator=gen(3))
    c = nf.population(net, 5, generator=gen(4))
    assert torch.equal(torch.get_rng_state(), state)
    for key in a.params:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["0.weight"], c["0.weight"])
    assert not torch.equal(a["1.in_proj_weight"], c["1.in_proj_weight"])
    torch.manual_seed(7)
    d = nf.population(net, 5)
    torch.manual_seed(7)
    e = nf.population(net, 5)
    assert torch.equal(d["1.in_proj_weight"], e["1.in_proj_weight"])  # the global RNG, seeded


class Custom(nn.Module):
    """A module torch does not ship: a reset of its own, a parameter without one."""

    def __init__(self) -> None:
        super().__init__()
        self.centre = nn.Parameter(torch.empty(50))
        self.scale = nn.Parameter(torch.full((3,), 2.0))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.centre, mean=5.0, std=0.5)

    def forward(self, x):
        return x * self.scale.sum() + self.centre.mean()


def test_other_modules_are_reset_member_by_member_in_construction_order():
    mha = nf.population(nn.MultiheadAttention(8, 2), 6, generator=gen()).detach()
    # MultiheadAttention._reset_parameters zeroes out_proj.bias after out_proj's own reset
    assert not mha["out_proj.bias"].any() and not mha["in_proj_bias"].any()
    bound = math.sqrt(6 / (8 + 24))  # xavier_uniform_ of in_proj_weight (24 x 8)
    assert float(mha["in_proj_weight"].abs().max()) <= bound
    assert float(mha["out_proj.weight"].abs().max()) <= 1 / math.sqrt(8)
    custom = nf.population(Custom(), 40, generator=gen()).detach()
    assert abs(float(custom["centre"].mean()) - 5.0) < 0.1
    assert not torch.equal(custom["centre"][0], custom["centre"][1])
    assert torch.equal(custom["scale"], torch.full((40, 3), 2.0))  # no reset: as constructed


def test_non_operational_shared_and_tied_parameters():
    p = nf.from_module(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    p = nf.configure(p, "0", operational=False)
    p = nf.configure(p, "1.bias", operational=False, clone=False)
    pop = nf.population(p, 4, generator=gen())
    assert torch.equal(pop["0.weight"], p["0.weight"].expand(4, 3, 3))  # frozen: the source's
    assert pop["1.bias"] is p["1.bias"]  # shared: the species' one tensor
    assert not torch.equal(pop["1.weight"][0], pop["1.weight"][1])
    tied = nf.population(TiedLM(), 8, generator=gen())
    assert 0.8 < float(tied["emb.weight"].detach().std()) < 1.2  # the embedding's N(0, 1): its first path
    assert tied["out.weight"] is tied["emb.weight"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes_are_kept(dtype):
    pop = nf.population(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).to(dtype), 3,
                        generator=gen()).detach()
    assert all(t.dtype == dtype for t in pop.leaves)
    assert float(pop["0.weight"].float().abs().max()) <= 0.5 + 1e-2


def test_complex_layers_fall_back_to_their_own_reset():
    pop = nf.population(nn.Linear(4, 3, dtype=torch.complex64), 5, generator=gen())
    assert pop["weight"].dtype == torch.complex64
    assert not torch.equal(pop["weight"][0], pop["weight"][1])


def test_one_member_and_modules_without_tensors():
    one = nf.population(nn.Linear(2, 2), 1, generator=gen())
    assert one.batch_shape == (1,)
    empty = nf.population(nn.ReLU(), 3)
    assert empty.batch_shape == (3,) and len(nf.unstack(empty)) == 3


def test_nothing_is_left_to_the_cycle_collector():
    """P6 for this issue's code: init (vectorised and member by member), optimizers, state_dict."""
    import gc

    from nytorch_func import optim

    def work():
        net = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), Custom(),
                            nn.MultiheadAttention(4, 2))
        pop = nf.population(net[0], 3, generator=gen())
        nf.population(net, 2, generator=gen())
        grads = pop.zeros()
        for opt in (optim.Adam(lr=torch.ones(3), amsgrad=True), optim.SGD(momentum=0.9)):
            pop, _ = opt.step(pop, grads, opt.init(pop))
        nf.load_state_dict(pop, nf.state_dict(pop))
        nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), like=pop)
        nf.mean(nf.configure_buffer(pop, "1", policy="keep"))

    gc.collect()
    work()
    assert gc.collect() == 0


# initialisation the module's own __init__ did (adversary finding of 2026-12-02) ----------------

class _ZeroHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)


class _SmallNormal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        nn.init.normal_(self.fc.weight, 0.0, 0.02)


def test_constants_set_in_init_are_kept_like_constructed_modules():
    pop = nf.population(_ZeroHead(), 4, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(pop["head.weight"]) == 0 and torch.count_nonzero(pop["head.bias"]) == 0
    assert not torch.equal(pop["body.weight"][0], pop["body.weight"][1])  # the rest drawn per member
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    nn.init.zeros_(net[1].weight)  # ResNet's zero_init_residual
    pop = nf.population(net, 3, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(pop["1.weight"]) == 0
    assert torch.equal(pop["1.bias"], torch.zeros(3, 8))


def test_trained_away_norm_weights_are_reset():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)  # as training leaves them: not constant
    pop = nf.population(net, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pop["1.weight"], torch.ones(3, 8))


def test_a_redrawn_leaf_warns_and_names_the_factory_form():
    with pytest.warns(UserWarning, match=r"fc\.weight.*nf\.population\(MyNet, n\)"):
        pop = nf.population(_SmallNormal(), 4, generator=torch.Generator().manual_seed(0))
    assert pop["fc.weight"].shape == (4, 64, 64)


def test_a_factory_constructs_every_member_reproducibly():
    state = torch.get_rng_state()
    pop = nf.population(_SmallNormal, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left as it was
    again = nf.population(_SmallNormal, 6, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(pop.leaves, again.leaves))
    assert abs(float(pop["fc.weight"].detach().std()) - 0.02) < 0.002  # the __init__'s own N(0, 0.02)
    assert not torch.equal(pop["fc.weight"][0], pop["fc.weight"][1])
    torch.manual_seed(3)
    built = [_SmallNormal() for _ in range(2)]
    torch.manual_seed(3)
    pop = nf.population(_SmallNormal, 2)  # no generator: the global RNG, as constructing does
    assert torch.equal(pop["fc.weight"][1], built[1].fc.weight)


@pytest.mark.parametrize("kwargs, error", [(dict(n=0), nf.SchemaError),
                                           (dict(n=2, init="randn"), nf.SchemaError),
                                           (dict(n="2"), TypeError)])
def test_a_factory_with_bad_arguments_is_refused(kwargs, error):
    with pytest.raises(error):
        nf.population(_SmallNormal, **kwargs)
    with pytest.raises(TypeError, match="must return an nn.Module"):
        nf.population(lambda: 3, 2)


def test_a_linear_without_its_weight_keeps_its_bias_drawn():
    """Found by the checkpoint round-trip property: the tied-weight change read m.weight."""
    p = nf.del_param(nf.from_module(nn.Linear(3, 2)), "weight")
    pop = nf.population(p, 2, generator=torch.Generator().manual_seed(0))
    assert list(pop.params) == ["bias"] and pop["bias"].shape == (2, 2)
