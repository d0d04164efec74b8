"""Helpers shared by the checkpoint tests (tests/test_io*.py)."""

from __future__ import annotations

import json
import struct

import safetensors
import safetensors.torch
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import _io

__all__ = ["bits_equal", "same_particle", "same_everything", "roundtrip", "rewrite",
           "data_start"]


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so NaN equals NaN)."""
    flat = [t.detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
            .view(torch.uint8) for t in (a, b)]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*flat)


def same_particle(a: nf.Particle, b: nf.Particle, *, policies: bool = True) -> None:
    """Equal structure, versions, ids, configs and values (different objects).

    ``policies=False``: buffer policies are not compared (files written when the default was
    another one).
    """
    assert a.version == b.version
    assert a.schema.leaf_keys == b.schema.leaf_keys
    assert nf.param_ids(a) == nf.param_ids(b)
    assert [s.config for s in a.schema.specs] == [s.config for s in b.schema.specs]
    assert [(s.paths, s.shape, s.dtype, s.device, s.state, s.policy if policies else None,
             s.persistent, s.requires_grad) for s in a.schema.specs] == [
        (s.paths, s.shape, s.dtype, s.device, s.state, s.policy if policies else None,
         s.persistent, s.requires_grad) for s in b.schema.specs]
    for sa, sb in zip(a.schema.specs, b.schema.specs):
        assert (sa.reset is None) == (sb.reset is None), sa.key
        assert sa.reset is None or bits_equal(sa.reset, sb.reset), sa.key
    assert a.batch_shape == b.batch_shape and a.training == b.training
    for k in a.params:
        assert bits_equal(a.params[k], b.params[k]), k
        assert a.params[k].requires_grad == b.params[k].requires_grad, k
        assert isinstance(a.params[k], nn.Parameter) == isinstance(b.params[k], nn.Parameter), k
    for k in a.buffers:
        assert bits_equal(a.buffers[k], b.buffers[k]), k


def roundtrip(tmp_path, obj, **kw):
    path = tmp_path / "ckpt.safetensors"
    nf.save(path, obj)
    return nf.load(path, **kw)


def rewrite(path, edit) -> None:
    """Tamper with a checkpoint's JSON the way an attacker would: checksum recomputed."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["nytorch_func.payload"])
    edit(doc)
    payload = json.dumps(doc)
    meta["nytorch_func.payload"] = payload
    meta["nytorch_func.payload_checksum"] = _io._text_checksum(payload)
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def data_start(path) -> int:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def same_everything(a: nf.Particle, b: nf.Particle) -> None:
    """Everything a particle carries, and its species' history from its version on."""
    same_particle(a, b)
    assert [s.pid for s in a.schema.specs] == [s.pid for s in b.schema.specs]
    assert a.schema.next_pid == b.schema.next_pid
    assert a.schema.skeleton.training == b.schema.skeleton.training
    for k in a.schema.shared:
        x, y = a.schema.shared[k], b.schema.shared[k]
        assert bits_equal(x, y) and type(x) is type(y) and x.requires_grad == y.requires_grad
    ha = [line for v, line in nf.history(a.species) if v >= a.version]
    hb = [line for v, line in nf.history(b.species) if v >= b.version]
    assert ha == hb
