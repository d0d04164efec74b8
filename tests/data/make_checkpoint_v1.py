"""How tests/data/checkpoint-v1.safetensors was made (format version 1, kept to test that old
checkpoints still load). Run against nytorch_func at commit 2460925, the last to write version 1:

    git worktree add /tmp/v1 2460925 && PYTHONPATH=/tmp/v1 python tests/data/make_checkpoint_v1.py

The file then had the two fields version-1 writers added last ("reset" of tensor specs and
"to_leaf" of configure events) removed, as files written before them lack them.
"""

import hashlib
import json
import sys

import safetensors
import safetensors.torch
import torch
from torch import nn

import nytorch_func as nf


def model() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        for i, t in enumerate([*net.parameters(), *net.buffers()]):
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) / (i + 1))
    return net


def main(path: str) -> None:
    p = nf.from_module(model())
    old = p.clone()
    p = nf.add_param(p, "scale", nn.Parameter(torch.full((2,), 0.5)))
    p = nf.add_buffer(p, "mem", torch.ones(3))
    p = nf.configure(p, "0", operational=False)
    p = nf.set_none(p, "2.bias")
    nf.save(path, {"old": old, "pop": nf.stack([p, p * 2.0]), "head": p})
    with safetensors.safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["nytorch_func.payload"])
    for rec in doc["species"]:
        for spec in rec["base"]["specs"]:
            spec["v"].pop("reset", None)
        for event in rec["events"]:
            if event["kind"] == "configure":
                event["v"].pop("to_leaf", None)
    payload = json.dumps(doc, separators=(",", ":"))
    meta["nytorch_func.payload"] = payload
    meta["nytorch_func.payload_sha256"] = hashlib.sha256(payload.encode()).hexdigest()
    safetensors.torch.save_file(tensors, path, metadata=meta)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/checkpoint-v1.safetensors")
