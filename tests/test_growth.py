"""Function-preserving growth: widen, insert_module, deepen, and deletion that renumbers.

Every member of a population and every recipient particle must compute exactly its own function
after growth (float64 max abs difference <= 1e-12), in training and eval mode.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import nn

import nytorch_func as nf
from helpers import unchanged

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(width: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3)).to(D)


def conv_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).to(D)


class Residual(nn.Module):
    def __init__(self, dim: int = 5, hidden: int = 4) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(torch.relu(self.norm(self.inner(x))))


def outputs(p: nf.Particle, x: torch.Tensor) -> torch.Tensor:
    if p.batch_shape:
        return torch.stack([nf.apply(m, x) for m in p])
    return nf.apply(p, x)


def assert_same_function(before: nf.Particle, after: nf.Particle, x: torch.Tensor,
                         tol: float = 1e-12) -> None:
    for mode in (True, False):
        a = outputs(before.train(mode), x)
        b = outputs(after.train(mode), x)
        assert (a - b).abs().max() <= tol, (mode, (a - b).abs().max())


# widen ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["net2net", "zeros"])
def test_widen_population_keeps_every_members_function(method):
    pop = nf.population(mlp(), 6, init="randn", generator=gen())
    x = torch.randn(9, 4, dtype=D)
    wide = nf.widen(pop, "0", "2", 5, method=method, generator=gen(1))
    assert wide["0.weight"].shape == (6, 11, 4) and wide["2.weight"].shape == (6, 3, 11)
    assert_same_function(pop, wide, x)
    assert nf.param_ids(wide) == nf.param_ids(pop)  # ids kept
    if method == "zeros":
        assert not wide["2.weight"][:, :, 6:].any()
    else:  # replicated units: identical rows, the consumer's columns split between them
        src = [int((wide["0.weight"][0, j] == pop["0.weight"][0]).all(1).nonzero()[0])
               for j in range(6, 11)]
        for j, s in zip(range(6, 11), src):
            assert torch.equal(wide["0.bias"][:, j], pop["0.bias"][:, s])


def test_recipients_grow_from_their_own_weights():
    a = nf.from_module(mlp())
    others = [a.randn(generator=gen(i)) for i in range(3)]
    x = torch.randn(5, 4, dtype=D)
    before = [nf.apply(o, x) for o in others]
    nf.widen(a, "0", ["2"], 3, generator=gen())
    for o, want in zip(others, before):
        grown = nf.touch(o)
        assert grown["0.weight"].shape == (9, 4)
        assert torch.allclose(nf.apply(grown, x), want, rtol=0, atol=1e-12)
        assert torch.equal(grown["0.weight"][:6], o["0.weight"])  # its own rows, not a's


def test_population_touch_equals_memberwise_touch():
    a = nf.from_module(mlp())
    pop = nf.population(a, 4, init="randn", generator=gen())
    members = list(pop)
    nf.widen(a, "0", "2", 2, generator=gen(2))
    touched = nf.touch(pop)
    for i, m in enumerate(members):
        one = nf.touch(m)
        for k in one.schema.leaf_keys:
            assert torch.equal(touched[k][i], one[k]), k


def test_widen_conv_batchnorm_and_flatten_consumer():
    net = conv_net()
    p = nf.from_module(net)
    pop = nf.population(p, 3, init="randn", generator=gen())
    # running statistics that differ per member
    pop = nf.stack([nf.apply_with_state(m.train(), torch.randn(8, 2, 6, 6, dtype=D) * (i + 1))[1]
                    for i, m in enumerate(pop)])
    x = torch.randn(4, 2, 6, 6, dtype=D)
    wide = nf.widen(pop, "0", "3", 3, between="1", generator=gen())
    assert wide["1.running_mean"].shape == (3, 7) and wide["3.weight"].shape == (3, 3, 7, 3, 3)
    assert_same_function(pop, wide, x)
    wide2 = nf.widen(wide, "3", "5", 2, generator=gen(1))  # Conv -> flatten -> Linear: 16 cols each
    assert wide2["5.weight"].shape == (3, 2, 5 * 16)
    assert_same_function(pop, wide2, x)
    m = nf.to_module(wide2[0])
    assert m[3].out_channels == 5 and m[5].in_features == 80 and m[1].num_features == 7


def test_widen_under_layernorm_and_groupnorm_replicates_evenly():
    p = nf.from_module(Residual().to(D))
    pop = nf.population(p, 3, init="randn", generator=gen())
    x = torch.randn(6, 5, dtype=D)
    wide = nf.widen(pop, "inner", "outer", 4, between="norm")
    assert wide["norm.weight"].shape == (3, 8)
    assert nf.to_module(wide[0]).norm.normalized_shape == (8,)
    assert_same_function(pop, wide, x)
    with pytest.raises(nf.SchemaError, match="multiple of the width"):
        nf.widen(wide, "inner", "outer", 3, between="norm")
    with pytest.raises(nf.SchemaError, match="net2net"):
        nf.widen(wide, "inner", "outer", 8, between="norm", method="zeros")
    torch.manual_seed(3)
    g = nn.Sequential(nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv1d(4, 1, 1)).to(D)
    gp = nf.population(g, 2, init="randn", generator=gen())
    xs = torch.randn(3, 2, 7, dtype=D)
    gw = nf.widen(gp, "0", "3", 4, between="1")
    assert nf.to_module(gw[0])[1].num_channels == 8
    assert_same_function(gp, gw, xs)


def test_widen_carries_optimizer_state():
    from nytorch_func import optim

    p = nf.from_module(mlp())
    opt = optim.Adam(lr=0.01)
    state = opt.init(p)
    x, y = torch.randn(16, 4, dtype=D), torch.randn(16, 3, dtype=D)
    loss = lambda q: (nf.apply(q, x) - y).pow(2).mean()  # noqa: E731
    for _ in range(3):
        p, state = opt.step(p, nf.grad(loss)(p), state)
    grown = nf.widen(p, "0", "2", 2, generator=gen())
    moved = nf.touch_tree(state, fill="zeros")
    for name in ("m", "v"):
        old, new = getattr(state, name), getattr(moved, name)
        assert torch.equal(new["0.weight"][:6], old["0.weight"])  # bit-identical on old rows
        assert not new["0.weight"][6:].any() and not new["2.weight"][:, 6:].any()
        assert torch.equal(new["2.weight"][:, :6], old["2.weight"])  # unscaled, unlike weights
    grown, moved = opt.step(grown, nf.grad(loss)(grown), moved)  # and training goes on
    assert grown["0.weight"].shape == (8, 4)


def test_widen_history_save_load_and_transforms():
    p = nf.from_module(mlp().float())
    q = nf.widen(p, "0", "2", 2, generator=gen())
    line = nf.history(q.species)[-1][1]
    assert line == "widen 0 by 2 (net2net): 0.weight 6→8 rows, 0.bias 6→8, 2.weight 6→8 cols"
    path = os.path.join(tempfile.mkdtemp(), "grown.safetensors")
    nf.save(path, {"old": p, "new": q})
    back = nf.load(path)
    grown = nf.touch(back["old"])
    assert torch.equal(grown["0.weight"], q["0.weight"])
    x = torch.randn(3, 4)
    pop = nf.population(q, 4)
    assert torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x).shape == (4, 3, 3)
    g = nf.grad(lambda r: nf.apply(r, x).sum())(q)
    assert g["0.weight"].shape == (8, 4)
    f = torch.compile(lambda r: nf.apply(r, x), fullgraph=True)
    assert torch.allclose(f(q), nf.apply(q, x))


@pytest.mark.parametrize("call, error, match", [
    (lambda p: nf.widen(p, "0", "1", 2), nf.SchemaError, "consumer '1' is a ReLU"),
    (lambda p: nf.widen(p, "1", "2", 2), nf.SchemaError, "layer '1' is a ReLU"),
    (lambda p: nf.widen(p, "0", "2", 0), nf.SchemaError, "at least 1"),
    (lambda p: nf.widen(p, "0", "2", 2.0), nf.ArgumentTypeError, "by must be an int"),
    (lambda p: nf.widen(p, "0", "2", 2, method="random"), nf.SchemaError, "method"),
    (lambda p: nf.widen(p, "0", [], 2), nf.SchemaError, "at least one"),
    (lambda p: nf.widen(p, "0", "2", 2, between="1"), nf.SchemaError, "ReLU"),
    (lambda p: nf.widen(p, "0", ["2", "2"], 2), nf.SchemaError, "twice"),
    (lambda p: nf.widen(p, "9", "2", 2), nf.SchemaError, "no module"),
    (lambda p: nf.widen(p, "0", "0", 2), nf.SchemaError, "consumer|own consumer"),
    (lambda p: nf.widen(p, "0", "2", 2, generator=7), nf.ArgumentTypeError, "generator"),
])
def test_widen_refusals_change_nothing(call, error, match):
    p = nf.from_module(mlp())
    other = p.randn()
    with unchanged(p, other):
        with pytest.raises(error, match=match):
            call(p)
    assert len(p.species) == 1


def test_widen_refuses_a_consumer_of_another_width():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(nf.SchemaError, match="takes 5 inputs"):
        nf.widen(nf.from_module(net), "0", "2", 1)
    grouped = nn.Sequential(nn.Conv2d(2, 4, 1, groups=2), nn.Conv2d(4, 1, 1))
    with pytest.raises(nf.SchemaError, match="grouped"):
        nf.widen(nf.from_module(grouped), "0", "1", 2)


def test_widen_half_precision_and_shared_params():
    p = nf.from_module(mlp().to(torch.bfloat16))
    p = nf.configure(p, "2.bias", operational=False, clone=False)
    q = nf.widen(p, "0", "2", 2, generator=gen())
    for spec, leaf in zip(q.schema.leaf_specs, q.leaves):
        assert leaf.dtype == spec.dtype == torch.bfloat16 and leaf.shape == spec.shape
    assert q.schema.shared["2.bias"].shape == (3,)


# insert / delete with renumbering ----------------------------------------------------------------

def test_insert_module_renumbers_and_keeps_ids_and_values():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    other = p.randn()
    ids = nf.param_ids(p)
    block = nn.Sequential(nn.Tanh(), nn.Linear(3, 3))
    q = nf.insert_module(p, "", 1, [nn.ReLU(), block])
    assert list(q.params) == ["0.weight", "0.bias", "3.weight", "3.bias", "2.1.weight", "2.1.bias"]
    assert nf.param_ids(q)["3.weight"] == ids["1.weight"]
    assert q["2.1.weight"] is block[1].weight  # the initiator holds the inserted module itself
    o = nf.touch(other)
    assert torch.equal(o["3.weight"], other["1.weight"]) and o["3.weight"] is other["1.weight"]
    assert torch.equal(o["2.1.weight"], block[1].weight) and o["2.1.weight"] is not block[1].weight
    m = nf.to_module(o)
    assert isinstance(m, nn.Sequential) and [type(c).__name__ for c in m] == [
        "Linear", "ReLU", "Sequential", "Linear"]
    x = torch.randn(4, 2)
    assert torch.allclose(nf.apply(o, x), m(x))


def test_module_list_delete_renumbers_like_torch():
    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(3, 3) for _ in range(3)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    p = nf.from_module(Blocks())
    pop = nf.population(p, 2)
    q = nf.del_module(p, "blocks.0")
    m = nf.to_module(q)
    assert list(m.blocks._modules) == ["0", "1"] and m.blocks[0] is not None
    assert nf.param_ids(q)["blocks.0.weight"] == nf.param_ids(p)["blocks.1.weight"]
    t = nf.touch(pop)
    assert torch.equal(t["blocks.1.weight"], pop["blocks.2.weight"])
    r = nf.insert_module(q, "blocks", 0, nn.Linear(3, 3))
    assert list(nf.to_module(r).blocks._modules) == ["0", "1", "2"]
    with pytest.raises(nf.SchemaError, match="outside|must be in"):
        nf.insert_module(r, "blocks", 7, nn.Linear(3, 3))
    with pytest.raises(nf.SchemaError, match="Sequential or nn.ModuleList"):
        nf.insert_module(r, "blocks.0", 0, nn.Linear(3, 3))


# deepen --------------------------------------------------------------------------------------------

def test_deepen_preserves_function_where_it_holds():
    pop = nf.population(mlp(), 3, init="randn", generator=gen())
    x = torch.randn(6, 4, dtype=D)
    deep = nf.deepen(pop, "1", activation=nn.ReLU)
    assert [type(c).__name__ for c in nf.to_module(deep[0])] == [
        "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert_same_function(pop, deep, x)
    plain = nf.deepen(pop, "0")
    assert_same_function(pop, plain, x)
    with pytest.raises(nf.SchemaError, match="would change the function"):
        nf.deepen(pop, "0", activation=nn.ReLU())  # a Linear's outputs can be negative
    with pytest.raises(nf.SchemaError, match="would change the function"):
        nf.deepen(pop, "1", activation=nn.Sigmoid)


def test_deepen_conv_with_a_dirac_kernel():
    net = conv_net()
    p = nf.population(net, 2, init="randn", generator=gen())
    x = torch.randn(3, 2, 6, 6, dtype=D)
    deep = nf.deepen(p, "2", activation=nn.ReLU)
    assert type(nf.to_module(deep[0])[3]).__name__ == "Conv2d"
    assert_same_function(p, deep, x)


def test_widen_refuses_a_tied_weight():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(3, 4)
            self.c.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x) + self.c(x)))

    p = nf.from_module(Tied())
    with unchanged(p):
        with pytest.raises(nf.SchemaError, match="tied"):
            nf.widen(p, "a", "b", 2)
    assert len(p.species) == 1
