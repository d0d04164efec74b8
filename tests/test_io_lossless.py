"""Checkpoints lose nothing: reset values, batch shapes of leafless populations, enum members,
torch functions, every dtype, schema checks on save, every event kind, long histories, old
files, facade particles (load options: test_io_load_options.py)."""

from __future__ import annotations

import enum
import functools
import importlib.util
import os
import pathlib
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch_func as nf
import nytorch_func.testing as nft
from nytorch_func._particle import Particle
from io_helpers import bits_equal, rewrite, roundtrip, same_everything, same_particle

DATA = pathlib.Path(__file__).parent / "data"


# reset values ---------------------------------------------------------------------------------

def test_reset_value_of_configure_buffer_survives(tmp_path):
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    p = nf.configure_buffer(nf.from_module(net), "1.running_mean", policy="reset",
                            value=torch.tensor([7.0, -1.0, 0.5]))
    p = nf.configure_buffer(p, "1.running_var", policy="mean")
    pop = nf.population(p, 4)
    back = roundtrip(tmp_path, {"pop": pop})["pop"]
    spec = back.schema.spec("1.running_mean")
    assert spec.policy == "reset" and torch.equal(spec.reset, torch.tensor([7.0, -1.0, 0.5]))
    assert back.schema.spec("1.running_var").policy == "mean"
    same_everything(pop, back)
    assert torch.equal(nf.mean(back)["1.running_mean"], torch.tensor([7.0, -1.0, 0.5]))
    assert torch.equal(nf.mean(back)["1.running_var"], nf.mean(pop)["1.running_var"])


def test_reset_value_follows_a_conversion_and_an_old_version(tmp_path):
    p = nf.from_module(nn.BatchNorm1d(2))
    old = p.randn()
    p = nf.configure_buffer(p, "running_var", policy="reset")
    p = nf.to(p, dtype=torch.float64)
    back_old, back = roundtrip(tmp_path, [old, p])
    assert back.schema.spec("running_var").reset.dtype == torch.float64
    same_everything(p, back)
    same_everything(nf.touch(old), nf.touch(back_old))


# batch shapes of leafless populations -----------------------------------------------------------

def _all_shared() -> nf.Particle:
    return nf.configure(nf.from_module(nn.Linear(3, 2)), "", operational=False, clone=False)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: nf.population(nn.ReLU(), 5), id="no_tensors"),
    pytest.param(lambda: nf.population(_all_shared(), 5), id="all_shared"),
    pytest.param(lambda: nf.stack([nf.population(_all_shared(), 3)] * 2), id="two_dims"),
    pytest.param(lambda: nf.population(_all_shared(), 3)[1:1], id="empty"),
    pytest.param(lambda: nf.population(_all_shared(), 1), id="one"),
    pytest.param(lambda: _all_shared(), id="single"),
])
def test_batch_shape_of_a_population_without_leaves(tmp_path, make):
    pop = make()
    assert not pop.leaves
    back = roundtrip(tmp_path, pop)
    assert back.batch_shape == pop.batch_shape
    same_everything(pop, back)
    if pop.batch_shape:
        assert len(back) == len(pop) and len(list(back)) == len(pop)


@pytest.mark.parametrize("n", [1, 3])
def test_empty_and_one_member_populations_with_leaves(tmp_path, n):
    pop = nf.population(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), n)
    for x in (pop, pop[0:0], pop[:1]):
        same_everything(x, roundtrip(tmp_path, x))
    assert roundtrip(tmp_path, pop[0:0]).batch_shape == (0,)


# enum members ---------------------------------------------------------------------------------

class Mode(enum.IntEnum):
    PLUS = 1
    MINUS = 2


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Perm(enum.Flag):
    READ = 1
    WRITE = 2
    EXEC = 4


class Modal(nn.Module):
    """Tests its mode by identity, as the issue's example does."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = Mode.MINUS
        self.color = Color.BLUE
        self.perm = Perm.READ | Perm.EXEC
        self.lin = nn.Linear(2, 2)
        self.table = {Mode.PLUS: 1.0, Mode.MINUS: -1.0}

    def forward(self, x):
        sign = 1.0 if self.mode is Mode.PLUS else -3.0
        if self.color is Color.BLUE and Perm.EXEC in self.perm:
            sign *= self.table[self.mode]
        return sign * self.lin(x)


def test_enum_members_come_back_as_members(tmp_path):
    p = nf.from_module(Modal())
    p = nf.configure(p, "lin.weight", tag=Color.RED)
    back = roundtrip(tmp_path, {"p": p, "mode": Mode.PLUS, "perm": Perm.WRITE | Perm.READ})
    skel = back["p"].schema.skeleton
    assert skel.mode is Mode.MINUS and skel.color is Color.BLUE
    assert skel.perm == Perm.READ | Perm.EXEC and type(skel.perm) is Perm
    assert list(skel.table) == [Mode.PLUS, Mode.MINUS] and type(list(skel.table)[0]) is Mode
    assert back["p"].config("lin.weight").tag is Color.RED
    assert back["mode"] is Mode.PLUS and back["perm"] == Perm.WRITE | Perm.READ
    x = torch.randn(3, 2)
    assert torch.equal(nf.apply(back["p"], x), nf.apply(p, x))


def test_enum_class_must_be_trusted_and_member_named(tmp_path):
    class Local(enum.Enum):
        A = "a"

    path = tmp_path / "e.safetensors"
    nf.save(path, {"x": Local.A})
    with pytest.raises(nf.CheckpointError, match=r"Enum class .*Local.*classes=\[TheClass\]"):
        nf.load(path)
    assert nf.load(path, classes=[Local])["x"] is Local.A

    def rename(doc):
        doc["root"]["v"][0][1]["names"] = ["B"]

    rewrite(path, rename)
    with pytest.raises(nf.CheckpointError, match=r"member\(s\) \['B'\] of .*Local"):
        nf.load(path, classes=[Local])

    class Loose(enum.IntFlag):
        ONE = 1

    with pytest.raises(nf.CheckpointError, match="not one of its named members"):
        nf.save(tmp_path / "f.safetensors", {"x": Loose(8)})


# torch functions ------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [torch.tanh, torch.relu, torch.sigmoid, torch.exp,
                                nn.functional.gelu, nn.functional.silu, torch.special.expit,
                                torch.Tensor.relu, nn.functional.softsign],
                         ids=lambda f: getattr(f, "__name__", "fn"))
def test_torch_functions_as_attributes(tmp_path, fn):
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True,
                                       activation=fn)
    p = nf.from_module(layer).eval()
    back = roundtrip(tmp_path, p)
    assert back.schema.skeleton.activation is fn
    x = torch.randn(2, 3, 4)
    assert torch.equal(nf.apply(back, x), nf.apply(p, x))


def test_lambdas_and_partials_are_still_refused_by_name(tmp_path):
    for fn, match in ((lambda x: x, "lambda"), (functools.partial(torch.add, alpha=2), "partial")):
        layer = nn.Linear(2, 2)
        layer.post = fn
        with pytest.raises(nf.CheckpointError, match=match):
            nf.save(tmp_path / "x.safetensors", nf.from_module(layer))
    assert os.listdir(tmp_path) == []


# dtypes ---------------------------------------------------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
          torch.complex128, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
          torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
          torch.float8_e5m2]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_every_dtype_as_leaf_shared_tensor_snapshot_and_plain_tensor(tmp_path, dtype):
    def make(*shape):
        t = torch.randn(shape, dtype=torch.float64) * 5
        if dtype.is_complex:
            return torch.complex(t, -t).to(dtype)
        return t.to(dtype) if dtype.is_floating_point else (t.abs() % 2 if dtype == torch.bool
                                                             else t.abs()).to(dtype)

    net = nn.Linear(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex modules are experimental in torch
        net.register_buffer("mine", make(3, 2))
        net.register_buffer("scalar", make())
        p = nf.from_module(net)
        p = nf.add_buffer(p, "fixed", make(4), state=False)
        p = nf.add_buffer(p, "late", make(2, 2))
    pop = nf.stack([p, p])
    raw = make(5)
    back = roundtrip(tmp_path, {"pop": pop, "raw": raw, "view": raw[1:4]})
    same_everything(pop, back["pop"])
    assert bits_equal(back["raw"], raw) and bits_equal(back["view"], raw[1:4])
    assert back["pop"]["fixed"].dtype == dtype


def test_complex128_parameters_and_events(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = nf.from_module(nn.Linear(3, 2).to(torch.complex128))
    q = nf.add_param(p.clone(), "phase", nn.Parameter(torch.randn(2, dtype=torch.complex128)))
    back = roundtrip(tmp_path, [p, q])
    same_everything(p, back[0])
    same_everything(nf.touch(p), nf.touch(back[0]))
    assert back[1]["phase"].dtype == torch.complex128


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_lazy_conjugate_and_negative_views_save_their_values(tmp_path, dtype):
    """A conj()/neg view's memory holds the values before the conjugation: every tensor a
    checkpoint holds (leaves, a buffer added by reference, raw tensors) is saved resolved."""
    z = torch.tensor([1 + 2j, -3 - 0.5j], dtype=dtype)
    p = nf.to(nf.from_module(nn.Linear(2, 2)), dtype=dtype)
    q = nf.add_buffer(p, "phase", z.conj(), state=False)  # the same tensor object: a conj view
    assert q["phase"].is_conj()
    neg = torch._neg_view(torch.tensor([1.5, -2.0]))  # a float tensor with the negative bit
    back = roundtrip(tmp_path, {"q": q, "neg": neg, "conj": z.conj()})
    assert torch.equal(back["q"]["phase"], torch.conj_physical(z))
    assert torch.equal(back["neg"], torch.tensor([-1.5, 2.0]))
    assert torch.equal(back["conj"], torch.conj_physical(z))
    nf.save(tmp_path / "q.nf", q)  # and the file joins the species that holds the view
    assert nf.load(tmp_path / "q.nf", species=q.species).schema is q.schema


def test_events_with_conjugate_views_replicate_their_values():
    from nytorch_func._events import AddBuffer
    from nytorch_func.distributed._eventwire import decode_events, encode_events
    z = torch.tensor([1 + 2j], dtype=torch.complex64)
    (event,) = decode_events(encode_events([AddBuffer("phase", z.conj(), state=False)]))
    assert torch.equal(event.tensor, torch.conj_physical(z))  # safetensors alone wrote 1+2j


# leaves that disagree with their schema ---------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (lambda t: t.double(), r"\[4x2x3 float64 on cpu\], its schema says \[4x2x3 float32 on cpu\]"),
    (lambda t: t[:, :1], r"\[4x1x3 float32 on cpu\]"),
    (lambda t: t.to("meta"), r"\[4x2x3 float32 on meta\]"),
    (lambda t: t.to(torch.int64), r"\[4x2x3 int64 on cpu\]"),
])
def test_save_refuses_leaves_that_disagree_with_the_schema(tmp_path, bad, match):
    pop = nf.population(nn.Linear(3, 2), 4)
    broken = Particle._make(pop.schema, (bad(pop.leaves[0]), pop.leaves[1]))
    with pytest.raises(nf.CheckpointError,
                       match=r"save: \['run'\]\[0\] leaf 'weight' is " + match):
        nf.save(tmp_path / "x.safetensors", {"run": [broken]})
    assert os.listdir(tmp_path) == []


def test_save_refuses_leaves_of_different_batch_shapes(tmp_path):
    pop = nf.population(nn.Linear(3, 2), 4)
    broken = Particle._make(pop.schema, (pop.leaves[0][:2], pop.leaves[1]))
    with pytest.raises(nf.CheckpointError, match=r"different batch shapes \('weight': \(2,\), "
                                                 r"'bias': \(4,\)\)"):
        nf.save(tmp_path / "x.safetensors", broken)


def test_half_population_times_weights_round_trips(tmp_path):
    pop = nf.population(nn.Linear(3, 2).half(), 4) * torch.linspace(0, 1, 4)
    same_everything(pop, roundtrip(tmp_path, pop))


# history ---------------------------------------------------------------------------------------

def test_every_event_kind_including_conversions_replays(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    v0 = nf.from_module(net)
    other = v0.randn()
    p = nf.configure(v0.clone(), "2", operational=False, clone=False)
    p = nf.configure(p, "2.weight", clone=True)  # shared -> per-particle: a to_leaf snapshot
    p = nf.configure_buffer(p, "1.running_mean", policy="reset", value=torch.arange(4.0))
    p = nf.to(p, dtype=torch.float64)
    p = nf.add_param(p, "scale", nn.Parameter(torch.randn(2, dtype=torch.float64)))
    p = nf.to(p, dtype=torch.bfloat16, device="cpu")
    kinds = {type(s.event).__name__ for s in p.species.live_versions() if s.event is not None}
    assert {"Configure", "ConfigureBuffer", "Convert", "AddParam"} <= kinds
    back = roundtrip(tmp_path, {"other": other, "head": p, "pop": nf.population(p, 2)})
    for key, x in (("other", other), ("head", p)):
        same_everything(x, back[key])
        same_everything(nf.touch(x), nf.touch(back[key]))
    assert nf.touch(back["other"])["scale"].dtype == torch.bfloat16


def test_ten_thousand_event_history(tmp_path):
    p = nf.from_module(nn.Linear(2, 2))
    old = p.clone()
    for i in range(5000):
        p = nf.add_param(p, "w", nn.Parameter(torch.full((1,), float(i))))
        p = nf.del_param(p, "w")
    p = nf.add_param(p, "w", nn.Parameter(torch.full((1,), -1.0)))
    assert p.version == 10001
    back_old, back = roundtrip(tmp_path, [old, p])
    assert len(back.species) == 10002 and back.version == 10001
    same_everything(p, back)
    touched = nf.touch(back_old)
    assert torch.equal(touched["w"], torch.full((1,), -1.0)) and nf.param_ids(touched)["w"] == 5002


# files of format version 1 ----------------------------------------------------------------------

def test_format_version_1_files_still_load():
    spec = importlib.util.spec_from_file_location("make_v1", DATA / "make_checkpoint_v1.py")
    make_v1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_v1)
    back = nf.load(DATA / "checkpoint-v1.safetensors")
    expected = nf.from_module(make_v1.model()).clone()
    same_particle(expected, back["old"], policies=False)
    # version 1 recorded each buffer's policy; "keep" was the default then (now "mean")
    assert {s.policy for s in back["old"].schema.buffers} == {"keep"}
    assert back["head"].version == 4 and back["pop"].batch_shape == (2,)
    assert back["old"].species is back["head"].species
    head = nf.touch(back["old"])
    assert torch.equal(head["scale"], torch.full((2,), 0.5)) and "2.bias" not in head.params
    assert not head.config("0.weight").operational
    assert torch.equal(back["pop"]["0.weight"][1], back["head"]["0.weight"])  # not operational
    assert torch.equal(back["pop"]["2.weight"][1], 2.0 * back["head"]["2.weight"])
    assert all(s.reset is None for s in back["head"].schema.specs)


# facade ----------------------------------------------------------------------------------------

class Facade(nf.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.lin(x).tanh()


def test_facade_particles_round_trip(tmp_path):
    net = Facade()
    net.extra = nn.Parameter(torch.ones(3))  # a facade event
    p = net.to_particle()
    back = roundtrip(tmp_path, p)
    same_everything(p, back)
    module = nf.NytoModule.from_particle(back)
    assert type(module) is Facade
    x = torch.randn(4, 2)
    assert torch.equal(module(x), net(x))


# property: generated modules with enum and function attributes ------------------------------------

_ATTRS = st.sampled_from([Mode.PLUS, Color.RED, Perm.READ | Perm.WRITE, torch.tanh,
                          nn.functional.relu, torch.Size([2, 1]), 1 + 2j, float("nan"),
                          (Mode.MINUS, {"k": [None, True]})])


@settings(deadline=None,  # examples: the profile's (25 in "dev", 200 in "ci")
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(module=nft.modules(), attrs=st.lists(_ATTRS, max_size=3), n=st.integers(0, 3),
       shared=st.booleans(), data=st.data())
def test_round_trip_property(tmp_path, module, attrs, n, shared, data):
    mods = [m for _, m in module.named_modules()]
    for i, value in enumerate(attrs):
        setattr(data.draw(st.sampled_from(mods)), f"attr{i}", value)
    p = nf.from_module(module)
    if shared and p.schema.params:
        p = nf.configure(p, "", operational=False, clone=False)
    chain = data.draw(nft.event_chains(p, 3))
    for edit in chain:
        p = edit.apply(p)
    x = nf.population(p, n) if n else p
    back = roundtrip(tmp_path, {"x": x})
    same_everything(x, back["x"])
    skel, skel_back = x.schema.skeleton, back["x"].schema.skeleton
    for (name, m), (_, m2) in zip(skel.named_modules(), skel_back.named_modules()):
        for i in range(len(attrs)):
            if hasattr(m, f"attr{i}"):
                a, b = getattr(m, f"attr{i}"), getattr(m2, f"attr{i}")
                assert type(a) is type(b) and (a is b or a == b or a != a), (name, i)


@pytest.mark.parametrize("edit", [lambda p: nf.del_param(p, "0.bias_hh_l0"),
                                  lambda p: nf.set_none(p, "0.bias_hh_l0")],
                         ids=["del_param", "set_none"])
def test_rnn_skeleton_keeping_a_removed_weight_saves(tmp_path, edit):
    """An LSTM's _flat_weights still lists a removed (data-free, meta) tensor: kept as such."""
    p = nf.from_module(nn.Sequential(nn.LSTM(2, 3)))
    q = edit(p)
    back = roundtrip(tmp_path, [p, q])
    same_everything(q, back[1])
    flat = back[1].schema.skeleton[0]._flat_weights
    assert flat[3].device.type == "meta" and flat[3].shape == (12,)


def test_growth_events_replay_after_loading(tmp_path):
    """widen, insert_module and deepen (Resize events and renumbering) round-trip and replay."""
    torch.manual_seed(0)
    p = nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    old = nf.population(p, 3)
    q = nf.widen(p, "0", ["2"], 2)
    q = nf.insert_module(q, "", 2, nn.Tanh())
    q = nf.deepen(q, "0")
    back = roundtrip(tmp_path, {"old": old, "new": q})
    same_everything(q, back["new"])
    same_everything(nf.touch(old), nf.touch(back["old"]))
    x = torch.randn(5, 3)
    run = torch.func.vmap(nf.apply, in_dims=(0, None))
    assert torch.equal(run(nf.touch(back["old"]), x), run(nf.touch(old), x))
    joined = nf.load(tmp_path / "ckpt.safetensors", species=q.species)
    assert joined["new"].schema is q.schema and joined["old"].schema is old.schema
