"""nf.state_dict / nf.load_state_dict / nf.from_module(m, like=p): values in and out of torch's format."""

import copy
import functools

import numpy as np

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import BUILDERS, example_input, unchanged


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_is_the_modules(name):
    net = BUILDERS[name]()
    p = nf.from_module(net)
    sd = nf.state_dict(p)
    ref = net.state_dict()
    assert list(sd) == list(ref)
    assert all(torch.equal(sd[k], ref[k]) and sd[k].grad_fn is None for k in ref)
    fresh = BUILDERS[name]()
    fresh.load_state_dict(sd)  # torch takes it as is
    x = example_input(name)
    torch.testing.assert_close(fresh.eval()(x), nf.apply(p.eval(), x))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_load_state_dict_puts_a_modules_values_into_the_species(name):
    p = nf.from_module(BUILDERS[name]())
    other = BUILDERS[name]()
    q = nf.load_state_dict(p, other.state_dict())
    assert q.schema is p.schema and q.species is p.species
    for k, v in other.state_dict().items():
        assert torch.equal(q[k], v), k
    for spec, a, b in zip(q.schema.leaf_specs, q.leaves, p.leaves):
        assert a.requires_grad == b.requires_grad and a.grad_fn is None, spec.key
    x = example_input(name)
    torch.testing.assert_close(nf.apply(q.eval(), x), other.eval()(x))
    mix = 0.5 * p + 0.5 * q  # one species: arithmetic works
    assert mix.species is p.species


def test_values_are_copied_in():
    p = nf.from_module(nn.Linear(2, 2))
    sd = {k: v.clone() for k, v in nn.Linear(2, 2).state_dict().items()}
    q = nf.load_state_dict(p, sd)
    before = q["weight"].clone()
    sd["weight"].add_(1)
    assert torch.equal(q["weight"], before)


def test_populations_stacked_and_as_a_list_of_members():
    nets = [BUILDERS["bn_net"]() for _ in range(3)]
    pop = nf.population(BUILDERS["bn_net"](), 3)
    stacked = nf.state_dict(pop)
    assert stacked["0.weight"].shape == (3, 6, 4)
    from_list = nf.load_state_dict(pop, [n.state_dict() for n in nets])
    reference = nf.from_modules(nets)
    for key in reference.params:
        assert torch.equal(from_list[key], reference[key]), key
        assert from_list[key].requires_grad and from_list[key].grad_fn is None
    again = nf.load_state_dict(pop, nf.state_dict(from_list))
    assert all(torch.equal(a, b) for a, b in zip(again.leaves, from_list.leaves))
    with pytest.raises(nf.SchemaError, match="list of 2 state_dicts for a population of 3"):
        nf.load_state_dict(pop, [n.state_dict() for n in nets[:2]])
    with pytest.raises(nf.SchemaError, match="a single particle"):
        nf.load_state_dict(pop[0], [nets[0].state_dict()])
    bad = [n.state_dict() for n in nets]
    bad[1] = {k: v for k, v in bad[1].items() if k != "3.bias"}
    with pytest.raises(nf.SchemaError, match=r"member 1: missing keys: '3.bias'"):
        nf.load_state_dict(pop, bad)
    with pytest.raises(nf.SchemaError, match=r"size mismatch for '0.weight'.*\(6, 4\).*\(3, 6, 4\)"):
        nf.load_state_dict(pop, nets[0].state_dict())  # one member's dict for a population


def test_every_problem_is_listed_at_once_and_nothing_changes():
    p = nf.from_module(BUILDERS["bn_net"]())
    sd = dict(BUILDERS["bn_net"]().state_dict())
    del sd["0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["3.weight"] = torch.zeros(2, 5)
    sd["1.running_mean"] = sd["1.running_mean"].double()
    with unchanged(p):
        with pytest.raises(nf.SchemaError) as info:
            nf.load_state_dict(p, sd)
    message = str(info.value)
    for part in ["missing keys: '0.bias'", "unexpected keys: 'extra.weight'",
                 "size mismatch for '3.weight': the state_dict has shape (2, 5), the particle (2, 6)",
                 "dtype mismatch for '1.running_mean'"]:
        assert part in message, message
    with pytest.raises(nf.SchemaError, match="size mismatch") as info:  # strict=False: shapes count
        nf.load_state_dict(p, sd, strict=False)
    assert "missing" not in str(info.value)
    sd["3.weight"] = torch.zeros(2, 6)
    sd["1.running_mean"] = sd["1.running_mean"].float()
    loose = nf.load_state_dict(p, sd, strict=False)
    assert torch.equal(loose["0.bias"], p["0.bias"]) and not loose["3.weight"].any()
    with pytest.raises(nf.ArgumentTypeError, match="mapping of tensors"):
        nf.load_state_dict(p, 3)
    with pytest.raises(nf.ArgumentTypeError, match="strict"):
        nf.load_state_dict(p, sd, strict="yes")


def test_tied_shared_and_non_persistent():
    p = nf.from_module(BUILDERS["tied"]())
    sd = dict(nf.state_dict(p))
    assert "emb.weight" in sd and "out.weight" in sd  # torch lists both aliases
    sd["out.weight"] = sd["out.weight"] + 1
    with pytest.raises(nf.SchemaError, match="one tied tensor"):
        nf.load_state_dict(p, sd)
    shared = nf.configure(nf.from_module(nn.Linear(2, 2)), "bias", operational=False, clone=False)
    sd = dict(nf.state_dict(shared))
    assert nf.load_state_dict(shared, sd)["bias"] is shared["bias"]
    sd["bias"] = sd["bias"] + 1
    with pytest.raises(nf.SchemaError, match="shared by the whole species"):
        nf.load_state_dict(shared, sd)
    net = nn.Linear(2, 2)
    net.register_buffer("scratch", torch.ones(2), persistent=False)
    q = nf.from_module(net)
    assert "scratch" not in nf.state_dict(q)
    assert nf.load_state_dict(q, nn.Linear(2, 2).state_dict())["scratch"] is q["scratch"]


def test_stale_particles_keep_their_version():
    p = nf.from_module(nn.Linear(2, 2))
    nf.add_param(p, "gain", torch.ones(2))
    q = nf.load_state_dict(p, nn.Linear(2, 2).state_dict())
    assert q.version == 0 and list(nf.state_dict(nf.touch(q))) == ["weight", "bias", "gain"]


# from_module(module, like=p) --------------------------------------------------------------------

def test_a_separately_built_module_joins_the_species():
    p = nf.from_module(BUILDERS["convnet"]())
    other = BUILDERS["convnet"]()
    q = nf.from_module(other, like=p)
    assert q.species is p.species and q.schema is p.schema
    assert q["0.weight"] is other[0].weight  # viewed, as from_module does
    x = example_input("convnet")
    torch.testing.assert_close(nf.apply(nf.lerp(p, q, 1.0), x), other(x))
    grown = nf.add_module(p, "5", nn.ReLU())
    later = nf.from_module(nn.Sequential(*BUILDERS["convnet"](), nn.ReLU()), like=p)
    assert later.schema is grown.schema  # like's species at its newest version


def test_structure_differences_are_listed():
    p = nf.from_module(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    cases = [
        (nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 2)),
         ["'0.weight': shape (8, 4) in the species, (9, 4) in the module"]),
        (nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
         ["submodule '1': the species has ReLU, the module Tanh"]),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
         ["missing in the module: '2.weight', '2.bias'", "submodule '2'"]),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double(),
         ["'0.weight': dtype torch.float32 in the species, torch.float64 in the module"]),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)),
         ["missing in the module: '2.bias'"]),
    ]
    for module, parts in cases:
        with unchanged(p):
            with pytest.raises(nf.SchemaError, match="does not have the structure") as info:
                nf.from_module(module, like=p)
        for part in parts:
            assert part in str(info.value), str(info.value)
    with pytest.raises(nf.ArgumentTypeError, match="like= takes a particle"):
        nf.from_module(nn.Linear(2, 2), like=nn.Linear(2, 2))
    with pytest.raises(nf.SchemaError, match="one or the other"):
        nf.from_module(copy.deepcopy(p.schema.skeleton), like=p, name="x")


def test_ties_and_shared_values_must_match():
    tied = nf.from_module(BUILDERS["tied"]())
    untied = BUILDERS["tied"]()
    untied.out.weight = nn.Parameter(untied.emb.weight.detach().clone())
    with pytest.raises(nf.SchemaError, match="tied paths"):
        nf.from_module(untied, like=tied)
    shared = nf.configure(nf.from_module(nn.Linear(2, 2)), "bias", operational=False, clone=False)
    with pytest.raises(nf.SchemaError, match="shared by the whole species"):
        nf.from_module(nn.Linear(2, 2), like=shared)
    same = nn.Linear(2, 2)
    with torch.no_grad():
        same.bias.copy_(shared["bias"])
    assert nf.from_module(same, like=shared).species is shared.species


# from_module(module, like=p): the joined particle runs as the module it came from ----------------

class _Holds(nn.Module):
    """Plain attributes of several kinds; equal when built with equal arguments."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.f = lambda x: x * k
        self.g = functools.partial(torch.clamp, min=k)
        self.t = torch.tensor([k])
        self.a = np.array([k, k])
        self.o = _Box(k)
        self.nan = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.f(self.lin(x)) * self.t)


class _Box:
    def __init__(self, v: float) -> None:
        self.v = v


@pytest.mark.parametrize("make, other, differs", [
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.01)),
     lambda: nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(0.5)), "attribute 1.negative_slope: 0.01"),
    (lambda: nn.Dropout(0.1), lambda: nn.Dropout(0.2), "attribute p: 0.1 in the species, 0.2"),
    (lambda: nn.BatchNorm1d(3), lambda: nn.BatchNorm1d(3, eps=1e-3), "attribute eps"),
    (lambda: nn.TransformerEncoderLayer(8, 2, 16),
     lambda: nn.TransformerEncoderLayer(8, 2, 16, activation="gelu"), "attribute activation"),
    (lambda: _Holds(2.0), lambda: _Holds(3.0), "attribute f: <function"),
])
def test_a_module_whose_attributes_differ_is_refused(make, other, differs):
    torch.manual_seed(0)
    p = nf.from_module(make())
    with unchanged(p):
        with pytest.raises(nf.SchemaError, match="does not have the structure") as info:
            nf.from_module(other(), like=p)
    assert differs in str(info.value)
    if isinstance(p.schema._skeleton, _Holds):
        for name in ("g", "t", "a", "o"):
            assert f"attribute {name}:" in str(info.value)


@pytest.mark.parametrize("make", [lambda: _Holds(2.0), lambda: nn.LSTM(3, 4, num_layers=2),
                                  lambda: nn.MultiheadAttention(8, 2),
                                  lambda: nn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh),
                                  lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                                                        nn.BatchNorm2d(4))],
                         ids=["plain_attributes", "lstm", "mha", "transformer", "conv_bn"])
def test_a_module_with_equal_attributes_joins(make):
    """Equal, not identical: lambdas of one definition, partials, tensors, arrays, objects, NaN."""
    p = nf.from_module(make())
    assert nf.from_module(make(), like=p).species is p.species


def test_the_joined_particle_runs_in_the_modules_mode():
    torch.manual_seed(0)

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))

    x = torch.randn(6, 2)
    p = nf.from_module(make())  # the species records training mode
    m = make().eval()
    m[1].running_mean.fill_(2.0)
    q = nf.from_module(m, like=p)
    assert q.training is False and torch.allclose(nf.apply(q, x), m(x))
    assert not nf.to_module(q).training
    e = nf.from_module(make().eval())  # an eval species, a training module
    trains = make().train()
    t = nf.from_module(trains, like=e)
    assert t.training is True and torch.allclose(nf.apply(t, x), trains(x), atol=1e-6)
    mixed = make()
    mixed[1].eval()
    same = make()
    same[1].eval()
    s = nf.from_module(same, like=nf.from_module(mixed))  # the species' own mixed modes
    assert s.training is True and torch.allclose(nf.apply(s, x), same(x))
    with unchanged(p):
        with pytest.raises(nf.SchemaError, match=r"mixed modes \(<root>=train, 0=train, 1=eval\)"):
            nf.from_module(mixed, like=p)
