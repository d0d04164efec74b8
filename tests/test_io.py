"""nf.save / nf.load: round trips, replayed history, no pickle, untrusted and damaged files."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import safetensors.torch
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import _tensorfile
from io_helpers import data_start, rewrite, roundtrip, same_particle


class CountingNet(nn.Module):
    """A user model whose __init__ must not run on load."""

    inits = 0

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        type(self).inits += 1
        self.width = width
        self.body = nn.Sequential(nn.Linear(2, width), nn.Tanh())
        self.head = nn.Linear(width, 1)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("scratch", torch.zeros(width), persistent=False)

    def forward(self, x):
        return self.head(self.body(x)) * self.width


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 3, bias=False)
        self.dec = nn.Linear(3, 3, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(self.enc(x))


MODELS = {
    "linear": (lambda: nn.Linear(4, 3), lambda: torch.randn(2, 4)),
    "conv_bn_seq": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
                                          nn.Sequential(nn.Flatten(), nn.Linear(8, 2))),
                    lambda: torch.randn(2, 1, 4, 4)),
    "lstm": (lambda: nn.LSTM(3, 4, num_layers=2, batch_first=True),
             lambda: torch.randn(2, 5, 3)),
    "embedding": (lambda: nn.Embedding(10, 3, padding_idx=0), lambda: torch.tensor([[1, 0, 9]])),
    "transformer_layer": (lambda: nn.TransformerEncoderLayer(4, 2, dim_feedforward=8,
                                                             dropout=0.0, batch_first=True),
                          lambda: torch.randn(2, 3, 4)),
    "user_class": (CountingNet, lambda: torch.randn(5, 2)),
    "tied": (Tied, lambda: torch.randn(2, 3)),
}


def outputs_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return all(outputs_equal(x, y) for x, y in zip(a, b, strict=True))


# round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_roundtrip_model(tmp_path, name):
    make, data = MODELS[name]
    p = nf.from_module(make()).eval()
    back = roundtrip(tmp_path, p)
    same_particle(p, back)
    assert back.species is not p.species and back.species.uid == p.species.uid
    assert len(back.species) == len(p.species)
    x = data()
    assert outputs_equal(nf.apply(back, x), nf.apply(p, x))
    sd, sd_back = nf.to_module(p).state_dict(), nf.to_module(back).state_dict()
    assert list(sd) == list(sd_back)
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)


def test_user_class_init_not_called(tmp_path):
    p = nf.from_module(CountingNet(5))
    before = CountingNet.inits
    back = roundtrip(tmp_path, p)
    assert CountingNet.inits == before
    skel = back.schema.skeleton
    assert skel.__class__ is CountingNet and skel.width == 5  # (a read-only view of it)
    assert "scratch" in skel._non_persistent_buffers_set
    assert "scratch" not in nf.to_module(back).state_dict()


def test_tied_weights_stay_tied(tmp_path):
    back = roundtrip(tmp_path, nf.from_module(Tied()))
    assert back.schema.spec("dec.weight").paths == ("enc.weight", "dec.weight")
    m = nf.to_module(back)
    assert m.enc.weight is m.dec.weight


def test_dtypes_flags_and_modes(tmp_path):
    net = nn.Sequential(nn.Linear(2, 2).double(), nn.Linear(2, 2).to(torch.bfloat16))
    net[0].bias.requires_grad_(False)
    net.register_buffer("mask", torch.tensor([True, False]))
    net.register_buffer("count", torch.arange(3))
    net.register_buffer("empty", torch.zeros(0, 4))
    net.register_buffer("scalar", torch.tensor(float("nan")))
    p = nf.from_module(net).train(False)
    back = roundtrip(tmp_path, p)
    same_particle(p, back)
    assert back.buffers["scalar"].isnan() and back.buffers["empty"].shape == (0, 4)
    assert back.params["0.weight"].dtype == torch.float64
    assert back.params["1.weight"].dtype == torch.bfloat16
    assert not back.params["0.bias"].requires_grad and back.params["0.weight"].requires_grad
    assert back.training is False


def test_every_event_kind_replays_exactly(tmp_path):
    """Old-version particles, loaded and touched, get exactly what the originals would get."""
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    v0 = nf.from_module(net)
    other = v0.randn()  # a recipient that stays at version 0
    p = nf.add_param(v0.clone(), "scale", nn.Parameter(torch.randn(2)))
    p = nf.add_buffer(p, "mem", torch.randn(2))
    p = nf.add_buffer(p, "table", torch.arange(4.0), state=False)
    p = nf.add_module(p, "extra", nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    mid = p
    p = nf.configure(p, "extra", operational=False, clone=False, frozen=True)
    p = nf.configure(p, "extra.0.bias", clone=True)
    p = nf.configure(p, "0", operational=False)
    p = nf.configure_buffer(p, "1.running_var", policy="reset")
    p = nf.set_none(p, "2.bias")
    p = nf.del_param(p, "scale")
    p = nf.del_module(p, "extra.1")
    p = nf.del_buffer(p, "mem")
    saved = {"other": other, "v0": v0, "mid": mid, "head": p, "pop": nf.stack([mid, mid.randn()])}
    back = roundtrip(tmp_path, saved)
    assert {id(x.species) for x in back.values()} == {id(back["head"].species)}
    assert len(back["head"].species) == len(p.species) == 13
    for key in saved:
        same_particle(saved[key], back[key])
        same_particle(nf.touch(saved[key]), nf.touch(back[key]))
    lines = [line for _, line in nf.history(back["head"].species)]
    assert lines == [line for _, line in nf.history(p.species)]
    x = torch.randn(4, 3)
    assert torch.equal(nf.apply(nf.touch(back["other"]).eval(), x),
                       nf.apply(nf.touch(other).eval(), x))


def test_events_after_load_continue_the_chain(tmp_path):
    p = nf.from_module(nn.Linear(2, 2))
    q = nf.add_param(p, "s", nn.Parameter(torch.ones(1)))
    back = roundtrip(tmp_path, [p, q])
    r = nf.add_param(back[1], "t", nn.Parameter(torch.zeros(1)))
    assert r.version == 2 and nf.param_ids(r)["t"] == 3
    assert sorted(nf.touch(back[0]).params) == ["bias", "s", "t", "weight"]


def test_added_buffer_stays_one_object(tmp_path):
    """The seed's rule: an added buffer is the same tensor for initiator and recipients."""
    p = nf.from_module(nn.Linear(2, 1))
    q = nf.add_buffer(p.clone(), "mem", torch.ones(3))
    back = roundtrip(tmp_path, [p, q])
    assert nf.touch(back[0])["mem"] is back[1]["mem"]


def test_shape_of_saved_object_is_kept(tmp_path):
    a = nf.from_module(nn.Linear(2, 1))
    b = nf.from_module(nn.Linear(1, 1))
    back = roundtrip(tmp_path, {"x": [a, (a.randn(), b)], "y": {}, "z": []})
    assert isinstance(back["x"], list) and isinstance(back["x"][1], tuple)
    assert back["y"] == {} and back["z"] == []
    assert back["x"][0].species is back["x"][1][0].species
    assert back["x"][1][1].species is not back["x"][0].species


def test_save_leaves_particles_unchanged(tmp_path):
    p = nf.from_module(nn.Linear(3, 2))
    leaves, values = p.leaves, [t.clone() for t in p.leaves]
    nf.save(tmp_path / "a.safetensors", p)
    assert p.leaves is leaves and all(torch.equal(a, b) for a, b in zip(p.leaves, values))
    assert p.version == 0 and len(p.species) == 1


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    p = nf.add_module(nf.from_module(MODELS["conv_bn_seq"][0]()), "x", nn.LSTM(2, 2))
    same_particle(p, roundtrip(tmp_path, p))


def test_plain_pytorch_handoff_is_state_dict(tmp_path):
    p = nf.from_module(nn.Linear(2, 2))
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(nf.to_module(p).state_dict(), str(path))
    assert torch.equal(safetensors.torch.load_file(str(path))["weight"], p["weight"])
    with pytest.raises(nf.CheckpointError, match="not a nytorch_func checkpoint"):
        nf.load(path)


# what cannot be saved ---------------------------------------------------------------------------

def test_closure_attribute_is_refused_and_old_file_kept(tmp_path):
    path = tmp_path / "c.safetensors"
    nf.save(path, nf.from_module(nn.Linear(1, 1)))
    before = path.read_bytes()
    net = nn.Sequential(nn.Linear(2, 2))
    scale = 3.0
    net[0].post = lambda y: y * scale
    with pytest.raises(nf.CheckpointError, match=r"0 \(Linear\) attribute 'post'.*lambda"):
        nf.save(path, nf.from_module(net))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.safetensors"]


def test_unregistered_tensor_attribute_is_refused(tmp_path):
    net = nn.Linear(2, 2)
    net.loose = torch.ones(2)
    with pytest.raises(nf.CheckpointError, match="attribute 'loose'.*register"):
        nf.save(tmp_path / "x.safetensors", nf.from_module(net))


def test_hooks_are_refused(tmp_path):
    net = nn.Linear(2, 2)
    net.register_forward_hook(lambda m, i, o: o)
    with pytest.raises(nf.CheckpointError, match="_forward_hooks"):
        nf.save(tmp_path / "x.safetensors", nf.from_module(net))


class Opaque:
    pass


@pytest.mark.parametrize("obj", [
    pytest.param(lambda: nn.Linear(1, 1), id="module"),
    pytest.param(lambda: {"a": {1, 2}}, id="set"),
    pytest.param(lambda: [Opaque()], id="object"),
    pytest.param(lambda: {"f": lambda x: x}, id="lambda"),
    pytest.param(lambda: nf.from_module(nn.Linear(1, 1)).schema, id="schema"),
    pytest.param(lambda: torch.ones(2).to_sparse(), id="sparse"),
    pytest.param(lambda: torch.empty(2, device="meta"), id="meta"),
])
def test_what_a_checkpoint_cannot_hold_is_refused(tmp_path, obj):
    with pytest.raises(nf.CheckpointError, match="save: "):
        nf.save(tmp_path / "x.safetensors", {"p": nf.from_module(nn.Linear(1, 1)), "x": obj()})
    assert os.listdir(tmp_path) == []


def test_cycles_are_refused(tmp_path):
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(nf.CheckpointError, match=r"\[1\] contains itself"):
        nf.save(tmp_path / "x.safetensors", loop)
    assert os.listdir(tmp_path) == []


def test_local_class_needs_classes_argument(tmp_path):
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x).relu()

    p = nf.from_module(Local())
    path = tmp_path / "l.safetensors"
    nf.save(path, p)
    with pytest.raises(nf.CheckpointError, match=r"Local.*classes=\[TheClass\]"):
        nf.load(path)
    back = nf.load(path, classes=[Local])
    x = torch.randn(3, 2)
    assert torch.equal(nf.apply(back, x), nf.apply(p, x))
    with pytest.raises(nf.ArgumentTypeError, match="classes"):
        nf.load(path, classes=["Local"])
    with pytest.raises(TypeError, match="classes"):
        nf.load(path, classes=Local)


# crashes, damage and tampering ------------------------------------------------------------------

def test_crash_mid_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    old = nf.from_module(nn.Linear(3, 3))
    nf.save(path, old)

    def half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(_tensorfile, "_write_bytes", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        nf.save(path, old.randn())
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    same_particle(old, nf.load(path))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    p = nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    nf.save(path, [p, nf.add_param(p, "s", nn.Parameter(torch.ones(2)))])
    return path


@pytest.mark.parametrize("where", [0, 1, 50, -1], ids=["first", "second", "middle", "last"])
def test_flipped_tensor_byte_is_caught(saved, where):
    data = bytearray(saved.read_bytes())
    start = data_start(saved)
    i = start + where if where >= 0 else len(data) + where
    data[i] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(nf.CheckpointError, match=r"checksum mismatch for tensor t\d+ \("):
        nf.load(saved)


def test_flipped_header_byte_is_caught(saved):
    data = bytearray(saved.read_bytes())
    i = bytes(data).index(b'next_pid')  # inside the JSON payload
    data[i + 1] = ord("w")
    saved.write_bytes(bytes(data))
    with pytest.raises(nf.CheckpointError, match="checksum|not a readable"):
        nf.load(saved)


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99],
                         ids=["empty", "header_cut", "half", "last_bytes"])
def test_truncated_file_is_caught(saved, keep):
    data = saved.read_bytes()
    cut = len(data) - 1 if keep == 0.99 else int(len(data) * keep)
    saved.write_bytes(data[:cut])
    with pytest.raises(nf.CheckpointError, match="not a readable safetensors file"):
        nf.load(saved)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(nf.CheckpointError):
        nf.load(junk)
    with pytest.raises(FileNotFoundError):
        nf.load(tmp_path / "missing.safetensors")
    with pytest.raises(nf.ArgumentTypeError, match="path must be"):
        nf.load(3)


def _first_class(doc):
    return doc["species"][0]["base"]["skeleton"]["root"]


@pytest.mark.parametrize("module_name", ["nytorch_evil_never_imported", "os"])
def test_file_cannot_import_or_name_arbitrary_classes(saved, module_name):
    def edit(doc):
        _first_class(doc)["class"] = [module_name, "system" if module_name == "os" else "Net"]

    rewrite(saved, edit)
    with pytest.raises(nf.CheckpointError, match="not imported|as an nn.Module class, but it is not"):
        nf.load(saved)
    assert "nytorch_evil_never_imported" not in sys.modules


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("builtins", "eval"), ("torch", "load"), ("torch.serialization", "load"),
    ("torch.hub", "load"), ("torch", "compile"), ("torch.nn.functional", "__builtins__.eval"),
    ("torch", "_C._nn.gelu.__self__"), ("torch", "_C._load_for_lite_interpreter"),
    ("torch.nn.functional", "_in_projection"), ("torch", "Tensor.__init__"), ("subprocess", "run")])
def test_file_cannot_name_arbitrary_functions(tmp_path, module, name):
    path = tmp_path / "t.safetensors"
    nf.save(path, nf.from_module(MODELS["transformer_layer"][0]()))

    def edit(doc):
        _first_class(doc)["attrs"]["activation"] = {"$t": "fn", "module": module,
                                                    "qualname": name}

    rewrite(path, edit)
    with pytest.raises(nf.CheckpointError, match="not one of torch's tensor-math functions"):
        nf.load(path)


@pytest.mark.parametrize("edit", [
    pytest.param(lambda d: d["species"][0]["events"][0].update(kind="run_code"), id="event_kind"),
    pytest.param(lambda d: d["species"][0]["events"][0]["v"].update(path="nowhere.s"),
                 id="event_path"),
    pytest.param(lambda d: d["species"][0]["base"]["specs"].pop(), id="spec_missing"),
    pytest.param(lambda d: d["species"][0].update(head=7), id="head"),
    pytest.param(lambda d: d["root"][0].update(version=5), id="particle_version"),
    pytest.param(lambda d: d["root"][0]["leaves"].pop(), id="leaf_missing"),
    pytest.param(lambda d: d["root"][0]["leaves"].reverse(), id="leaves_swapped"),
    pytest.param(lambda d: d["root"][0].update(batch=[3]), id="batch_beside_leaves"),
    pytest.param(lambda d: d["root"][0].update(species=4), id="species_index"),
    pytest.param(lambda d: d["tensors"].pop("t0"), id="tensor_entry"),
    pytest.param(lambda d: d["tensors"]["t0"].update(checksum="sum64:0:0"), id="checksum"),
    pytest.param(lambda d: d["tensors"]["t0"].update(requires_grad="yes"), id="flags"),
    pytest.param(lambda d: d["tensors"]["t0"].update(dtype="complex128", shape=[2]),
                 id="bytes_dtype"),
    pytest.param(lambda d: d.update(root={"$t": "pickle"}), id="root_tag"),
    pytest.param(lambda d: d.update(root={"$t": "ntuple", "class": ["os", "stat_result"],
                                          "fields": [], "v": []}), id="ntuple_class"),
    pytest.param(lambda d: d.update(root={"$t": "enum", "class": ["os", "system"],
                                          "names": ["x"]}), id="enum_class"),
    pytest.param(lambda d: d.update(root={"$t": "generator", "device": "cpu",
                                          "state": {"$t": "tensor", "id": "t0"}}),
                 id="generator_state"),
    pytest.param(lambda d: d.update(root={"$t": "dict", "v": [[[1], 2]]}), id="unhashable_key"),
    pytest.param(lambda d: d["species"][0]["base"]["specs"][0]["v"].update(policy="rm -rf"),
                 id="spec_policy"),
    pytest.param(lambda d: d["species"][0]["base"]["specs"][0]["v"].update(surprise=1),
                 id="spec_field"),
    pytest.param(lambda d: d["species"][0]["events"][0]["v"].update(surprise=1),
                 id="event_field"),
    pytest.param(lambda d: d["species"][0]["events"][0]["v"].pop("config"),
                 id="event_field_missing"),
    pytest.param(lambda d: d.pop("species"), id="no_species"),
    pytest.param(lambda d: _first_class(d)["attrs"].update(_parameters=[]), id="internals"),
    pytest.param(lambda d: _first_class(d)["children"]["0"]["attrs"].update(
        in_features={"$t": "dtype", "v": "save"}), id="bad_dtype"),
])
def test_tampered_metadata_gives_typed_error(saved, edit):
    rewrite(saved, edit)
    with pytest.raises(nf.CheckpointError):
        nf.load(saved)


def test_every_single_bit_flip_anywhere_in_the_file_is_caught(tmp_path):
    """Header length, safetensors header, metadata, payload, tensor bytes: all covered."""
    path = tmp_path / "small.safetensors"
    nf.save(path, nf.stack([nf.from_module(nn.Linear(2, 1))] * 2))
    good = path.read_bytes()
    for i in range(len(good)):
        data = bytearray(good)
        data[i] ^= 0x01 if i % 2 else 0x80
        path.write_bytes(bytes(data))
        with pytest.raises(nf.CheckpointError):
            nf.load(path)


def test_files_are_standard_safetensors_both_ways(tmp_path):
    """The safetensors library reads our files; our reader reads the library's."""
    import safetensors

    path = tmp_path / "std.safetensors"
    tree = {"pop": nf.population(MODELS["conv_bn_seq"][0](), 3),
            "t": [torch.arange(5, dtype=torch.int16), torch.randn(2, dtype=torch.bfloat16),
                  torch.ones(3, dtype=torch.bool), torch.zeros(0, 2)]}
    nf.save(path, tree)
    plain = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata()["nytorch_func.format_version"] == "2"
        assert set(f.keys()) == set(plain)
    assert any(torch.equal(t, tree["t"][1]) for t in plain.values() if t.dtype == torch.bfloat16)
    rewrite(path, lambda doc: None)  # written again by the safetensors library
    back = nf.load(path)
    same_particle(tree["pop"], back["pop"])
    assert all(torch.equal(a, b) for a, b in zip(tree["t"], back["t"]))


@pytest.mark.parametrize("header", [b"[" * 100_000, b'{"a":' * 100_000, b'{"__metadata__": 3}',
                                    b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
                                    b'{"t": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}'])
def test_hostile_safetensors_headers_are_typed_errors(tmp_path, header):
    path = tmp_path / "h.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(nf.CheckpointError, match="not a readable safetensors file"):
        nf.load(path)


def test_deeply_nested_payload_is_a_typed_error(tmp_path):
    import json

    import safetensors

    from nytorch_func import _io

    path = tmp_path / "n.safetensors"
    nf.save(path, nf.from_module(nn.Linear(1, 1)))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["nytorch_func.payload"])
    doc["root"] = "HERE"
    payload = json.dumps(doc).replace('"HERE"', "[" * 50_000 + "]" * 50_000)
    meta["nytorch_func.payload"] = payload
    meta["nytorch_func.payload_checksum"] = _io._text_checksum(payload)
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    with pytest.raises(nf.CheckpointError, match="malformed"):
        nf.load(path)
