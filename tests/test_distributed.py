"""nytorch_func.distributed on real gloo process groups over 127.0.0.1.

Each test starts 2 or 3 worker processes (tests/dist_workers/worker.py) with the env://
rendezvous torchrun uses, a free port and a bounded wait; the workers check their results
against the single-process computation and print one JSON line per scenario. One test runs the
workers under torchrun itself (--max-restarts=1) to kill a rank mid-checkpoint and resume.
In-process tests cover the world of one, the event codec and per-rank checkpoints.
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
from nytorch_func._config_events import Configure, ConfigureBuffer
from nytorch_func._convert import Convert
from nytorch_func._events import AddBuffer, AddModule, AddParam, DelParam, SetNone
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


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharded_steps_replication_and_skew_match_single_process(world):
    # world 3: blocks of unequal size (4, 3, 3) and a rank that neither sends nor is rank 0
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


def test_torchrun_restart_resumes_from_per_rank_checkpoints(tmp_path):
    """torchrun --max-restarts=1, 2 gloo ranks: rank 1 dies while saving step 4 (its data file
    written, its manifest not; rank 0 has all of step 4); the restarted job resumes from step 3,
    the newest step both finished, and ends equal to an uninterrupted run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NFD_TIMEOUT": "30",
           "NFD_CKPT_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--max-restarts=1", "--monitor-interval=0.2", str(WORKER), "resume"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # the agent and its workers share this session: end them all
            os.killpg(proc.pid, 9)
            proc.communicate()
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-6000:]}"
    # the workers' report lines (torchrun may prefix lines, and other output may hold braces)
    lines = [json.loads(line[line.index('{"scenario"'):]) for line in out.splitlines()
             if '{"scenario"' in line]
    first = sorted((d["rank"], d.get("died_saving"), d.get("error"))
                   for d in lines if d["attempt"] == 0)
    assert first == [(0, None, "RankFailureError"), (1, 4, None)]
    resumed = {d["rank"]: d for d in lines if d["attempt"] == 1}
    assert sorted(resumed) == [0, 1], out
    step4 = "step-000000004.rank-0000{}-of-00002.{}"
    for d in resumed.values():
        assert d["resumed_from"] == 3 and d["equal"] and d["same_chain"] and d["version"] == 1
        # what the crash left: rank 0's step 4 complete, rank 1's step 4 data without manifest
        assert {step4.format(0, "json"), step4.format(1, "safetensors")} <= set(d["before"])
        assert step4.format(1, "json") not in d["before"]
    assert sorted(os.listdir(tmp_path)) == [f"step-000000006.rank-0000{r}-of-00002.{ext}"
                                            for r in (0, 1) for ext in ("json", "safetensors")]


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


class Gate(nn.Module):
    """A module class of the tests (imported here, not part of torch.nn)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.fn = nn.functional.softsign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x * self.w)


def test_replica_syncs_add_module_and_names_the_species_by_rank_0s_uid(world_of_one):
    p = nf.from_module(nn.Sequential(nn.Linear(2, 3)))
    old = p.clone()
    rep = nfd.Replica(p)
    assert rep.uid == p.species.uid  # rank 0 here
    grown = nf.add_module(p, "1", Gate(3))
    grown = nf.add_module(grown, "2", nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    grown = rep.sync(grown)
    assert rep.version == grown.version == 2
    assert f"uid={rep.uid!r}" in repr(rep)
    x = torch.randn(4, 2)
    out = nf.apply(nf.touch(old).eval(), x)
    assert torch.equal(out, nf.apply(grown.eval(), x))
    assert not torch.equal(out, nf.apply(old, x))  # the added modules take part in the forward


def test_event_codec_round_trip_every_kind_without_pickle():
    cfg = nf.ParamConfig(operational=False, clone=False, scale=(1, "a"), rate=float("inf"))
    p = nf.from_module(nn.Linear(2, 2))
    grown = nf.add_module(p, "gate", Gate(2))
    add_module = grown.schema.species.version(0)._next[0]
    assert isinstance(add_module, AddModule)
    evs = [AddParam("w", torch.randn(2, 3), cfg, True), AddBuffer("b", torch.arange(4), False),
           DelParam("w"), SetNone("x.bias"),
           Configure("", (("w", cfg),), (("w", nn.Parameter(torch.ones(2))),)), add_module,
           Configure("x", (("x.w", cfg),), (), (("x.w", torch.zeros(3)),)),
           ConfigureBuffer("b", "reset", torch.arange(4)),
           Convert(torch.bfloat16, torch.device("cpu")), Convert(None, torch.device("cpu"))]
    blob = encode_events(evs, uid="abc")
    assert b"\x80\x04" not in blob and b"\x80\x05" not in blob  # no pickle stream anywhere
    back = decode_events(blob, uid="abc")
    assert [e.describe() for e in back] == [e.describe() for e in evs]
    assert [type(e) for e in back] == [type(e) for e in evs]
    assert torch.equal(back[6].to_leaf[0][1], torch.zeros(3))
    assert torch.equal(back[7].value, torch.arange(4))
    assert back[8].dtype is torch.bfloat16 and back[8].device == torch.device("cpu")
    assert back[9].dtype is None
    assert back[0].config == cfg and torch.equal(back[0].snapshot, evs[0].snapshot)
    assert isinstance(back[4].to_shared[0][1], nn.Parameter)
    m = back[5]
    assert type(m.skeleton) is Gate and m.skeleton.fn is nn.functional.softsign
    assert m.skeleton.w.device.type == "meta" and m.specs == add_module.specs
    assert all(torch.equal(a, b) for a, b in zip(m.values, add_module.values))
    # replayed on the old version, the received event gives the sender's next version
    s0 = p.schema
    assert m.apply(s0).describe() == grown.schema.describe()
    with pytest.raises(nfd.DistributedError, match="corrupt"):
        decode_events(blob[:-7])
    with pytest.raises(nfd.DistributedError, match="species 'abc'"):
        decode_events(blob, uid="other")


def test_event_codec_refuses_classes_the_receiver_has_not_imported():
    class Local(nn.Linear):
        pass

    Local.__module__ = "not_imported_anywhere"  # as if the sender had code the receiver lacks
    p = nf.from_module(nn.Linear(2, 2))
    event = nf.add_module(p, "extra", Local(2, 2)).species.version(0)._next[0]
    blob = encode_events([event])
    with pytest.raises(nfd.DistributedError, match="not_imported_anywhere.*classes="):
        decode_events(blob)
    (back,) = decode_events(blob, classes=[Local])  # trusted: passed in
    assert type(back.skeleton) is Local


def test_replica_refuses_unencodable_events_on_every_rank_and_keeps_its_anchor(world_of_one):
    m = nn.Linear(2, 2)
    m.handle = m.register_forward_hook(print)  # hooks are code: no pickle, so no wire form
    p = nf.from_module(nn.Linear(2, 2))
    rep = nfd.Replica(p)
    hooked = nf.add_module(p, "hooked", m)
    with pytest.raises(nfd.DistributedError, match="_forward_hooks registered"):
        rep.sync(hooked)
    assert rep.version == 0 and rep.anchor is p.schema


# per-rank checkpoints in a world of one ---------------------------------------------------

def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_checkpoint_round_trip_keeps_history_extras_and_uid(world_of_one, tmp_path):
    pop = nf.population(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 5,
                        generator=torch.Generator().manual_seed(0))
    pop = nf.add_module(pop, "2", Gate(4))
    sp = nfd.shard(pop)
    best = sp.local[2]
    assert nfd.load_sharded(tmp_path) is None  # a fresh start
    sp.save(tmp_path, 1)
    path = sp.save(tmp_path, 2, extras={"best": best, "history": [sp.local[0], sp.local[1]]})
    assert path.endswith("step-000000002.rank-00000-of-00001.safetensors")
    assert _files(tmp_path) == [f"step-000000002.rank-00000-of-00001.{e}"
                                for e in ("json", "safetensors")]  # step 1 pruned
    ck = nfd.load_sharded(tmp_path)
    assert (ck.step, ck.uid, ck.pop.total, ck.pop.count) == (2, pop.species.uid, 5, 5)
    got = ck.pop.local
    assert got.version == pop.version and nf.param_ids(got) == nf.param_ids(pop)
    assert got.species.uid == pop.species.uid  # nf.load keeps it: identity survives restarts
    assert all(torch.equal(a, b) for a, b in zip(got.leaves, pop.leaves))
    assert got.species is ck.extras["best"].species is ck.extras["history"][1].species
    assert torch.equal(ck.extras["best"]["2.w"], best["2.w"])
    x = torch.randn(6, 3)
    f = torch.func.vmap(nf.apply, in_dims=(0, None))
    assert torch.equal(f(got.eval(), x), f(pop.eval(), x))
    # a Replica of the resumed species is named as the saved one
    assert nfd.Replica(got).uid == ck.uid


def test_checkpoint_resumes_from_the_newest_committed_step(world_of_one, tmp_path):
    sp = nfd.shard(nf.population(nn.Linear(2, 2), 2))
    sp.save(tmp_path, 3)
    data, manifest = nfd.checkpoint_files(tmp_path, 4, 0, 1)
    (tmp_path / os.path.basename(data)).write_bytes(b"half-written")  # a crash before commit
    (tmp_path / ".step-000000004.rank-00000-of-00001.safetensors.x1.tmp").write_bytes(b"")
    assert nfd.load_sharded(tmp_path).step == 3  # no manifest: step 4 does not count
    sp.save(tmp_path, 4)
    assert _files(tmp_path) == [f"step-000000004.rank-00000-of-00001.{e}"
                                for e in ("json", "safetensors")]  # junk removed too


def test_damaged_or_foreign_checkpoints_raise_typed_errors(world_of_one, tmp_path):
    sp = nfd.shard(nf.population(nn.Linear(2, 2), 2))
    before = [t.clone() for t in sp.local.leaves]
    data = sp.save(tmp_path, 1)
    raw = bytearray(Path(data).read_bytes())
    raw[-1] ^= 0xFF
    Path(data).write_bytes(bytes(raw))
    with pytest.raises(nfd.ShardedCheckpointError, match="checksum") as info:
        nfd.load_sharded(tmp_path)
    assert isinstance(info.value, nf.CheckpointError)
    assert all(torch.equal(a, b) for a, b in zip(before, sp.local.leaves))
    other = tmp_path / "other"
    other.mkdir()
    (other / "step-000000001.rank-00001-of-00002.json").write_text("{}")
    with pytest.raises(nfd.ShardedCheckpointError, match=r"job of \[2\] ranks"):
        nfd.load_sharded(other)
    sp.save(tmp_path, 2)
    manifest = tmp_path / "step-000000002.rank-00000-of-00001.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "rank": 1}))
    with pytest.raises(nfd.ShardedCheckpointError, match="does not describe step 2"):
        nfd.load_sharded(tmp_path)
    with pytest.raises(nf.NytorchFuncError, match="non-negative int"):
        sp.save(tmp_path, -1)
    with pytest.raises(nf.NytorchFuncError, match="extras"):
        sp.save(tmp_path, 3, extras=[sp.local])
    with pytest.raises(nfd.ShardedCheckpointError, match="Linear"):
        sp.save(tmp_path, 3, extras={"x": nn.Linear(1, 1)})  # not saveable: nothing committed
    assert not any(n.startswith("step-000000003") for n in _files(tmp_path))


def test_pack_unpack_round_trip_one_buffer_per_dtype():
    ts = [torch.randn(3, 2, 2), torch.ones(3, dtype=torch.int64), torch.randn(3),
          torch.tensor([True, False, True])]
    bufs, layout = pack(ts, lead=(3,))
    assert [b.dtype for b in bufs] == [torch.float32, torch.int64, torch.uint8]
    assert [tuple(b.shape) for b in bufs] == [(3, 5), (3, 1), (3, 1)]
    back = unpack(bufs, layout, lead=(3,))
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back, ts))


def test_gather_and_broadcast_keep_the_batch_shape_of_leafless_populations(world_of_one):
    shared = nf.configure(nf.from_module(nn.Linear(3, 2)), "", operational=False, clone=False)
    for p in (nf.from_module(nn.ReLU()), shared):
        pop = nf.population(p, 5)
        assert not pop.leaves
        assert nfd.shard(pop).gather().batch_shape == (5,)
        assert nfd.broadcast(pop).batch_shape == (5,)
        assert nfd.broadcast(nf.stack([pop] * 2)).batch_shape == (2, 5)
