"""nytorch_func.distributed on real gloo process groups over 127.0.0.1.

Each test starts 2 or 4 worker processes (tests/dist_workers/worker.py) with the env://
rendezvous torchrun uses, a free port and a bounded wait; the workers check their results
against the single-process computation and print one JSON line per scenario. In-process tests
cover the world of one and the pieces that need no peers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.distributed as nfd
from nytorch_func.distributed._eventwire import decode_events, encode_events
from nytorch_func.distributed._wire import pack, unpack

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "dist_workers" / "worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *scenarios: str, timeout: float = 60.0, collective_timeout: float = 30.0,
           wait_for: int | None = None) -> tuple[dict[int, list[dict]], dict[int, int | None], str]:
    """Run ``world`` workers; ``({rank: [json lines]}, {rank: exit code}, stderr text)``.

    ``wait_for``: only wait for that rank, then kill the rest (for stalled peers).
    """
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(world), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "NFD_TIMEOUT": str(collective_timeout)}
    procs = [subprocess.Popen([sys.executable, str(WORKER), *scenarios],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    deadline = time.monotonic() + timeout
    outs, codes, errs = {}, {}, []
    try:
        order = ([wait_for] + [r for r in range(world) if r != wait_for]
                 if wait_for is not None else range(world))
        for r in order:
            p = procs[r]
            if wait_for is not None and r != wait_for:
                p.kill()
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs[r] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            codes[r] = p.returncode
            errs.append(f"--- rank {r} (exit {p.returncode}) ---\n{err[-3000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs, codes, "\n".join(errs)


def by_scenario(outs: dict[int, list[dict]], name: str) -> dict[int, dict]:
    return {r: line for r, lines in outs.items() for line in lines if line["scenario"] == name}


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_steps_replication_and_skew_match_single_process(world):
    outs, codes, err = launch(world, "step", "skew", "events", timeout=90)
    assert all(c == 0 for c in codes.values()), err
    step = by_scenario(outs, "step")
    assert sorted(step) == list(range(world)) and all(v["ok"] for v in step.values())
    skew = by_scenario(outs, "skew")
    assert sorted(skew) == list(range(world))
    assert all(v["error"] == "VersionSkewError" and "versions 0..1" in v["message"]
               for v in skew.values())
    events = by_scenario(outs, "events")
    assert sorted(events) == list(range(world))
    # the conflicting events of ranks 0 and 1 are refused on every rank, naming both
    assert all("ranks [0, 1]" in v["conflict"] for v in events.values())


def test_killed_rank_fails_the_others_quickly():
    outs, codes, err = launch(2, "kill", timeout=60, collective_timeout=30)
    assert codes[1] == 3, err
    assert codes[0] == 0, err
    (line,) = outs[0]
    assert line["error"] == "RankFailureError"
    assert "peer rank died" in line["message"]
    assert line["seconds"] < 25  # far below the 30 s collective timeout: no hang


def test_stalled_rank_fails_the_others_within_the_timeout():
    outs, codes, err = launch(2, "stall", timeout=60, collective_timeout=3, wait_for=0)
    assert codes[0] == 0, err
    (line,) = outs[0]
    assert line["error"] == "RankFailureError"
    assert line["barrier_seconds"] < 10
    assert "collective failed" in line["message"]


# in-process: a world of one, and the wire formats ------------------------------------------

@pytest.fixture(scope="module")
def world_of_one():
    return nfd.init()


def test_world_of_one_collectives_are_identities(world_of_one):
    pop = nf.population(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), 5,
                        generator=torch.Generator().manual_seed(0))
    pop = nf.configure(pop, "1", operational=False)
    sp = nfd.shard(pop)
    full = sp.gather()
    assert all(torch.equal(a, b) for a, b in zip(full.leaves, pop.leaves))
    fit = torch.tensor([0.0, 3.0, float("nan"), 3.0, -1.0])
    best, value, index = sp.best(fit)
    assert (value, index) == (3.0, 1)  # first of the tied maxima; NaN counts as worst
    worst, value, index = sp.best(fit, maximize=False)
    assert (value, index) == (-1.0, 4)
    m = sp.mean(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(m["0.weight"], (pop["0.weight"][0] + pop["0.weight"][4]) / 2)
    assert torch.equal(m["1.weight"], pop["1.weight"][0])  # non-operational: first member's
    assert torch.equal(m["1.running_var"], pop["1.running_var"][0])


def test_bad_arguments_raise_typed_errors_and_change_nothing(world_of_one):
    pop = nf.population(nn.Linear(2, 2), 3)
    before = [t.clone() for t in pop.leaves]
    with pytest.raises(nf.SchemaError, match="cannot give each of 4 ranks"):
        nfd.shard(pop, 0, 4)
    with pytest.raises(nf.SchemaError, match="0 <= rank < world"):
        nfd.shard(pop, 2, 2)
    sp = nfd.shard(pop)
    with pytest.raises(nf.SchemaError, match=r"shape \(3,\)"):
        sp.best(torch.zeros(4))
    with pytest.raises(nf.SchemaError, match="3 rows"):
        sp.part(torch.zeros(5))
    with pytest.raises(nf.SchemaError, match="src must be a rank"):
        nfd.broadcast(pop, src=1)
    with pytest.raises(nf.SpeciesMismatchError):
        sp.with_local(nf.population(nn.Linear(2, 2), 3))
    assert all(torch.equal(a, b) for a, b in zip(before, pop.leaves))


def test_replica_rejects_events_it_cannot_encode_without_the_general_codec(world_of_one):
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2)))
    rep = nfd.Replica(p)
    grown = nf.add_module(p, "1", nn.Linear(2, 1))
    with pytest.raises(nfd.DistributedError, match="AddModule"):
        rep.sync(grown)
    assert rep.version == 0


def test_pack_unpack_round_trip_one_buffer_per_dtype():
    ts = [torch.randn(3, 2, 2), torch.ones(3, dtype=torch.int64), torch.randn(3),
          torch.tensor([True, False, True])]
    bufs, layout = pack(ts, lead=(3,))
    assert [b.dtype for b in bufs] == [torch.float32, torch.int64, torch.uint8]
    assert [tuple(b.shape) for b in bufs] == [(3, 5), (3, 1), (3, 1)]
    back = unpack(bufs, layout, lead=(3,))
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back, ts))


def test_event_codec_round_trip_without_pickle():
    from nytorch_func._events import AddBuffer, AddParam, Configure, DelParam, SetNone

    cfg = nf.ParamConfig(operational=False, clone=False, scale=(1, "a"))
    evs = [AddParam("w", torch.randn(2, 3), cfg, True), AddBuffer("b", torch.arange(4), False),
           DelParam("w"), SetNone("x.bias"),
           Configure("", (("w", cfg),), (("w", nn.Parameter(torch.ones(2))),))]
    blob = encode_events(evs)
    assert b"\x80\x04" not in blob[:2]  # not a pickle stream
    back = decode_events(blob)
    assert [e.describe() for e in back] == [e.describe() for e in evs]
    assert back[0].config == cfg and torch.equal(back[0].snapshot, evs[0].snapshot)
    assert isinstance(back[4].to_shared[0][1], nn.Parameter)
    with pytest.raises(nfd.DistributedError, match="corrupt"):
        decode_events(blob[:-7])
