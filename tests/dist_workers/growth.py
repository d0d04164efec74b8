"""One rank of tests/test_growth_adversarial.py's replication test: ``python growth.py``.

Started with RANK, WORLD_SIZE (2), MASTER_ADDR and MASTER_PORT set. Rank 1 grows the species
(widen, insert_module, deepen, widen with method="zeros", a renumbering delete); Replica.sync
carries the events to rank 0; both ranks then touch a stale population built identically on
each, check that every member keeps its function, and print one JSON line with the version, a
checksum of the grown tensors and the largest change of any member's output.
"""

from __future__ import annotations

import json
import zlib

import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.distributed as nfd

torch.set_num_threads(1)
D = torch.float64


def main() -> None:
    rank, world = nfd.init()
    assert world == 2
    torch.manual_seed(0)  # the same model and population on every rank
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(D)
    p = nf.from_module(net)
    pop = nf.population(p, 3, init="randn", generator=torch.Generator().manual_seed(1))
    x = torch.randn(8, 4, dtype=D, generator=torch.Generator().manual_seed(2))
    pop = nf.stack([nf.apply_with_state(m.train(), x * (i + 1))[1] for i, m in enumerate(pop)])
    with torch.no_grad():
        before = torch.stack([nf.apply(m.eval(), x) for m in pop])
    rep = nfd.Replica(p)
    if rank == 1:  # only this rank knows the random choices: they must travel in the events
        g = torch.Generator().manual_seed(1234)
        q = nf.widen(p, "0", "3", 2, between="1", generator=g)
        q = nf.insert_module(q, "", 3, nn.Identity())
        q = nf.deepen(q, "2", activation=nn.ReLU)
        q = nf.widen(q, "3", "6", 3, method="zeros", generator=g)
        p = nf.del_module(q, "5")
    p = rep.sync(p)
    grown = nf.touch(pop).eval()
    with torch.no_grad():
        after = torch.stack([nf.apply(m, x) for m in grown])
    crc = 0
    for leaf in grown.leaves:
        crc = zlib.crc32(leaf.detach().contiguous().numpy().tobytes(), crc)
    print(json.dumps({"rank": rank, "version": p.version, "crc": crc,
                      "preserved": float((after - before).abs().max()),
                      "shapes": [list(t.shape) for t in grown.leaves]}), flush=True)
    # Leave together: a rank that exits while gloo still has the group open can abort
    # ("terminate called without an active exception", CI run of 2026-12-01).
    nfd.barrier()
    nfd.shutdown()


if __name__ == "__main__":
    main()
