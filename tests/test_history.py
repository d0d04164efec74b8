"""history and diff: a readable log of a species' events and of what differs between versions."""

import gc

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import NytorchFuncError

from helpers import bn_net, tied_model


def test_history_lists_every_live_event():
    p = nf.from_module(bn_net())
    keep = p
    p = nf.add_param(p, "scale", torch.ones(2))
    p = nf.configure(p, "scale", operational=False)
    p = nf.set_none(p, "3.bias")
    p = nf.add_module(p, "4", nn.Linear(2, 2))
    p = nf.configure_buffer(p, "1.running_mean", policy="mean")
    p = nf.del_buffer(p, "1.num_batches_tracked")
    p = nf.add_buffer(p, "flag", torch.zeros(1), state=False)
    p = nf.del_module(p, "4")
    p = nf.del_param(p, "scale")
    h = nf.history(p.species)
    assert [v for v, _ in h] == list(range(9))
    texts = [t for _, t in h]
    assert texts[0] == "add_param scale [2 float32] ParamConfig(operational=True, clone=True)"
    assert texts[1].startswith("configure scale -> scale: ParamConfig(operational=False")
    assert texts[2:] == ["set_none 3.bias", "add_module 4 (Linear, 2 params)",
                         "configure_buffer 1.running_mean policy=mean",
                         "del_buffer 1.num_batches_tracked", "add_buffer flag [1 float32] shared",
                         "del_module 4", "del_param scale"]
    text = str(h)
    assert text.splitlines()[0] == f"species {p.species.name!r}: 10 version(s)"
    assert "  v2 -> v3: set_none 3.bias" in text.splitlines()
    assert repr(h) == text
    del keep


def test_history_after_old_versions_are_freed():
    p = nf.from_module(nn.Linear(2, 1))
    for i in range(3):
        p = nf.add_param(p, f"a{i}", torch.ones(1))
    gc.collect()
    h = nf.history(p.species)
    assert list(h) == [] and h.oldest == 3
    assert "(versions 0..2 freed: nothing references them)" in str(h)
    q = nf.del_param(p, "a0")
    assert [v for v, _ in nf.history(q.species)] == [3]
    species = q.species
    del p, q
    gc.collect()
    assert species.head is None and species.live_versions() == []
    assert "(versions 0..4 freed: nothing references them)" in str(nf.history(species))


def test_diff():
    p = nf.from_module(tied_model())
    q = nf.configure(p, "mid.weight", operational=False, tag="x")
    q = nf.del_param(q, "emb.weight")
    q = nf.add_param(q, "extra", torch.zeros(3))
    lines = nf.diff(p.schema, q.schema).splitlines()
    assert lines[0] == ("~ param out.weight: paths ['emb.weight', 'out.weight'] -> "
                        "['out.weight']")
    assert lines[1] == ("~ param mid.weight: ParamConfig(operational=True, clone=True) -> "
                        "ParamConfig(operational=False, clone=True, tag='x')")
    assert lines[2] == "+ param extra [3 float32] id=3 ParamConfig(operational=True, clone=True)"
    assert len(lines) == 3
    assert nf.diff(p.schema, p.schema) == "(no differences)"
    back = nf.diff(q.schema, p.schema).splitlines()
    assert back[0].startswith("- param extra")


def test_diff_buffers():
    p = nf.from_module(bn_net())
    q = nf.add_buffer(nf.del_buffer(p, "1.running_var"), "b", torch.ones(2))
    assert nf.diff(p.schema, q.schema).splitlines() == [
        "- buffer 1.running_var [6 float32] state", "+ buffer b [2 float32] state"]


def test_refusals():
    p = nf.from_module(nn.Linear(1, 1))
    with pytest.raises(NytorchFuncError, match="expected a Species"):
        nf.history(p)
    with pytest.raises(NytorchFuncError, match="expected two Schemas"):
        nf.diff(p.schema, p)
