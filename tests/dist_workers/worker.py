"""One rank of the distributed tests: ``python worker.py SCENARIO [SCENARIO ...]``.

Started by tests/test_distributed.py with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set (the
env:// rendezvous torchrun also uses). Each scenario checks its results on this rank (raising
on a mismatch) and prints one JSON line ``{"scenario": ..., "rank": ..., ...}``; the test reads
those lines and the exit codes.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib

import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.distributed as nfd

torch.set_num_threads(1)


def report(scenario: str, **fields) -> None:
    """One JSON line on stdout, written by one ``write`` call: ranks sharing a pipe (under
    torchrun) cannot interleave their lines (pipe writes under 4 KiB are atomic)."""
    line = json.dumps({"scenario": scenario, "rank": int(os.environ["RANK"]), **fields}) + "\n"
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line.encode())


def check(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def same_everywhere(values: list[float]) -> bool:
    """True when every rank passed the same numbers (all_reduce MAX == MIN)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    hi, lo = t.clone(), -t.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MAX)
    return torch.equal(hi, -lo)


class Scale(nn.Module):
    """A module class of this script (not torch.nn): receivers find it already imported."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(n))
        self.register_buffer("offset", torch.randn(n))
        self.act = nn.functional.softsign  # a module-level function kept as an attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * self.gain + self.offset)


def chain_crc(start: nf.Particle) -> int:
    """Digest of every event from ``start``'s version to the head: kinds, paths, skeletons,
    specs, configs and snapshot bytes (as the wire encodes them)."""
    from nytorch_func.distributed._eventwire import encode_events

    events, s = [], start.schema
    while s._next is not None:
        events.append(s._next[0])
        s = s._next[1]
    return zlib.crc32(encode_events(events))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


@torch.no_grad()
def fitness_of(pop: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop.eval(), x)
    return -nn.functional.cross_entropy(out.transpose(1, 2), y.expand(out.shape[0], -1),
                                        reduction="none").mean(1)


# scenarios -----------------------------------------------------------------------------------

def step(rank: int, world: int) -> None:
    """Sharded PSO and ES steps equal the single-process steps on the same population and seed."""
    g = torch.Generator().manual_seed(1)
    base = nf.configure(nf.from_module(net()), "3.bias", operational=False)
    n = 10
    x_full = nf.population(base, n, generator=g)
    v_full = x_full.zeros()
    data, labels = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    r1, r2 = torch.rand(n, generator=g), torch.rand(n, generator=g)

    # single-process reference
    fit_full = fitness_of(x_full, data, labels)
    i_best = int(torch.argmax(fit_full))
    gbest_ref = x_full[i_best]
    v_ref = 0.5 * v_full + r1 * (x_full - x_full) + r2 * (gbest_ref - x_full)
    x_ref = x_full + v_ref

    # sharded
    sx, sv = nfd.shard(x_full), nfd.shard(v_full)
    check(sx.count == nfd.split_sizes(n, world)[rank], "shard size")
    fit = fitness_of(sx.local, data, labels)
    check(torch.equal(fit, sx.part(fit_full)), "local fitness equals its part of the full one")
    gbest, value, index = sx.best(fit)
    check(index == i_best and value == float(fit_full[i_best]), f"best {index} vs {i_best}")
    check(all(torch.equal(a, b) for a, b in zip(gbest.leaves, gbest_ref.leaves)), "best leaves")
    x, v = sx.local, sv.local
    v = 0.5 * v + sx.part(r1) * (x - x) + sx.part(r2) * (gbest - x)
    sx = sx.with_local(x + v)
    check(all(torch.equal(a, b) for a, b in zip(sx.local.leaves, sx.part(x_ref).leaves)),
          "PSO step equals the single-process step")
    with nfd.count_bytes() as traffic:
        full = sx.gather()
    check(all(torch.equal(a, b) for a, b in zip(full.leaves, x_ref.leaves)), "gather")
    rows = max(nfd.split_sizes(n, world))
    per_member = sum(t[0].numel() * t.element_size() for t in x_ref.leaves)
    # gather: the version/shape check (8 float64) + one all_gather output per dtype
    check(traffic.bytes == 8 * 8 + world * rows * per_member, f"bytes {traffic.bytes}")
    check(traffic.by_kind["all_gather"] == world * rows * per_member, "all_gather bytes")
    check(traffic.calls == 1 + 2, f"calls {traffic.calls}: one check + one per dtype")

    # ES: theta + lr / (n sigma) * sum_i w_i eps_i with centred-rank weights
    theta, sigma, lr = base, 0.1, 0.05
    eps_full = nf.population(base, n, generator=g)
    seps = nfd.shard(eps_full)
    f_local = fitness_of(sigma * seps.local + theta, data, labels)
    f_all = seps.gather_tensor(f_local)
    check(torch.equal(f_all, fitness_of(sigma * eps_full + theta, data, labels)), "gather_tensor")
    w_all = torch.argsort(torch.argsort(f_all)).double() / (n - 1) - 0.5
    step_sum = seps.sum(seps.part(w_all))
    new_theta = theta + lr / (n * sigma) * step_sum
    # sum_i w_i eps_i as n * mean_i(w_i eps_i): map_params must keep each leaf's shape
    ref_sum = nf.mean(eps_full * w_all.to(eps_full["0.weight"].dtype)) * float(n)
    for key in ref_sum.schema.leaf_keys:
        if ref_sum.schema.by_key[key].config is not None and ref_sum.config(key).operational:
            check(torch.allclose(step_sum[key], ref_sum[key], atol=1e-6), f"ES sum {key}")
    check(torch.equal(step_sum["3.bias"], seps.local[0]["3.bias"]), "non-operational stays")
    check(torch.equal(step_sum["1.running_mean"], seps.local[0]["1.running_mean"]), "buffer stays")
    ref_theta = theta + lr / (n * sigma) * ref_sum
    check(torch.allclose(new_theta["0.weight"], ref_theta["0.weight"], atol=1e-6), "ES theta")
    check(same_everywhere([float(t.detach().double().sum()) for t in new_theta.leaves if t.is_floating_point()
                           and t.numel()][:4]), "ES result differs across ranks")

    # mean, all_mean, broadcast
    m = sx.mean()
    check(torch.allclose(m["0.weight"], full["0.weight"].mean(0), atol=1e-6), "mean")
    mine = base * float(rank + 1)
    soup = nfd.all_mean(mine, weight=float(rank + 1))
    expect = sum((r + 1) ** 2 for r in range(world)) / sum(r + 1 for r in range(world))
    check(torch.allclose(soup["0.weight"], base["0.weight"] * expect, atol=1e-5), "all_mean")
    check(torch.equal(soup["3.bias"], mine["3.bias"]), "all_mean keeps non-operational leaves")
    got = nfd.broadcast(base * float(rank), src=world - 1)
    check(torch.equal(got["0.weight"], (base * float(world - 1))["0.weight"]), "broadcast")
    # buffers follow nf.mean: BatchNorm statistics averaged, the counter's maximum taken
    stats = nf.stack([nf.apply_with_state(nf.apply_with_state(m.train(), data * (i + 1))[1],
                                          data)[1] if i % 2 else
                      nf.apply_with_state(m.train(), data * (i + 1))[1]
                      for i, m in enumerate(x_full)])
    whole, part = nf.mean(stats), nfd.shard(stats).mean()
    for key in whole.schema.leaf_keys:
        check(torch.allclose(part[key].double(), whole[key].double(), atol=1e-6),
              f"ShardedPopulation.mean {key} as nf.mean")
    check(int(part["1.num_batches_tracked"]) == 2, "counter: the maximum")
    own = nf.apply_with_state(base.train(), data * (rank + 1))[1]
    soup = nfd.all_mean(own)
    means = [nf.apply_with_state(base.train(), data * (r + 1))[1]["1.running_mean"]
             for r in range(world)]
    check(torch.allclose(soup["1.running_mean"], torch.stack(means).mean(0), atol=1e-6),
          "all_mean averages the BatchNorm statistics")
    report("step", ok=True, bytes_gather=traffic.bytes)


def skew(rank: int, world: int) -> None:
    """A rank at another version makes every rank raise VersionSkewError (nobody hangs)."""
    pop = nf.population(net(), 2 * world, generator=torch.Generator().manual_seed(0))
    if rank == 0:
        pop = nf.configure(pop, "0.bias", attr=1)  # an event on this rank only: version 1
    try:
        nfd.shard(pop).gather()
    except nfd.VersionSkewError as err:
        report("skew", error="VersionSkewError", message=str(err))
    else:
        raise AssertionError("no VersionSkewError")


def describe_crc(p: nf.Particle) -> int:
    return zlib.crc32(p.schema.describe().split("\n", 1)[1].encode())


def events(rank: int, world: int) -> None:
    """Events made on rank 1 (then rank 0) reach every rank in order; all touch identically."""
    p = nf.from_module(net())
    others = [p.clone(), nf.population(p, 3, generator=torch.Generator().manual_seed(2))]
    rep = nfd.Replica(p)
    if rank == 1 % world:
        g = torch.Generator().manual_seed(7)
        p = nf.add_param(p, "0.scale", nn.Parameter(torch.randn(8, generator=g)))
        p = nf.add_buffer(p, "3.tag", torch.arange(3.0), state=False)
        p = nf.configure(p, "0", operational=False, mutation=0.1)
        p = nf.set_none(p, "3.bias")
        p = nf.add_param(p, "gain", torch.ones(()), nf.ParamConfig(operational=False, clone=False))
    p = rep.sync(p)
    check(rep.version == 5 and p.version == 5, f"version {p.version}")
    if rank == 0:
        p = nf.del_param(p, "0.scale")
        p = nf.configure_buffer(p, "1.running_mean", policy="mean")
    p = rep.sync(p)
    check(p.version == 7, f"version {p.version}")
    touched = [nf.touch(o) for o in others]
    pids = nf.param_ids(touched[1])
    check(same_everywhere([p.version, describe_crc(p), len(p.species),
                           float(sum(pids.values()))]), "schemas differ across ranks")
    for q in [p, *touched]:
        q0 = nfd.broadcast(q, src=0)
        check(all(torch.equal(a, b) for a, b in zip(q.leaves, q0.leaves)),
              "touched particles differ across ranks")
    check(torch.equal(p.params["gain"], torch.ones(())), "shared param arrived")
    check(p.config("0.weight").get("mutation") == 0.1, "config attribute arrived")

    # add_module replicates: a module of this script and a torch.nn one, used by the forward
    # (a Sequential runs every child), made on the last rank
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    before = nf.apply(p.eval(), x)
    if rank == world - 1:
        torch.manual_seed(11 + rank)  # values other ranks could not reproduce: they must travel
        p = nf.add_module(p, "4", Scale(3))
        p = nf.add_module(p, "5", nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    p = rep.sync(p)
    check(p.version == 9 and p.schema.module_at("4").__class__ is Scale, f"version {p.version}")
    out = nf.apply(p.eval(), x)
    check(out.shape == (5, 3) and not torch.equal(out, before[:, :3]), "forward uses the modules")
    touched = [nf.touch(o) for o in others]
    outs = [out, nf.apply(touched[0].eval(), x),
            torch.func.vmap(nf.apply, in_dims=(0, None))(touched[1].eval(), x)]
    check(torch.equal(outs[0], outs[1]), "a touched clone computes what the head computes")
    pids = nf.param_ids(p)
    check(same_everywhere([p.version, describe_crc(p), chain_crc(others[0]), len(p.species),
                           float(sum(pids.values())), *(float(o.double().sum()) for o in outs)]),
          "chains (versions, events, snapshots, param ids) or forwards differ across ranks")
    for q in [p, *touched]:
        q0 = nfd.broadcast(q, src=0)
        check(all(torch.equal(a, b) for a, b in zip(q.leaves, q0.leaves)),
              "touched particles with the added modules differ across ranks")
    # the species is named by rank 0's uid on every rank; each species keeps its own uid
    check(same_everywhere([float(zlib.crc32(rep.uid.encode()))]), "replica uids differ")
    check((rep.uid == p.species.uid) == (rank == 0), "the replica is named by rank 0's uid")

    # nothing to send: one cheap check
    with nfd.count_bytes() as traffic:
        p = rep.sync(p)
    check(traffic.calls == 1, f"idle sync made {traffic.calls} collectives")

    # two ranks with events: every rank refuses
    if world > 1 and rank in (0, 1):
        p = nf.configure(p, "3.weight", who=rank)
    try:
        rep.sync(p)
    except nfd.EventConflictError as err:
        report("events", ok=True, conflict=str(err), version=p.version, crc=describe_crc(p))
    else:
        check(world == 1, "no EventConflictError")
        report("events", ok=True, version=p.version, crc=describe_crc(p))


def kill(rank: int, world: int) -> None:
    """Rank 1 dies before a collective; the others fail with RankFailureError, not a hang."""
    pop = nfd.shard(nf.population(net(), 2 * world))
    pop.gather()
    if rank == 1:
        os._exit(3)
    start = time.monotonic()
    try:
        for _ in range(50):
            pop.gather()
            time.sleep(0.05)
    except nfd.RankFailureError as err:
        report("kill", error="RankFailureError", message=str(err),
               seconds=time.monotonic() - start)
    else:
        raise AssertionError("no RankFailureError")


def stall(rank: int, world: int) -> None:
    """Rank 1 does not arrive at a barrier: rank 0 fails within the timeout and names it."""
    nfd.barrier(timeout=5)
    if rank == 1:
        time.sleep(60)  # the test kills this process
        return
    start = time.monotonic()
    try:
        nfd.barrier(timeout=2)
    except nfd.RankFailureError:
        barrier_s = time.monotonic() - start
    else:
        raise AssertionError("no RankFailureError from the barrier")
    start = time.monotonic()
    try:  # a plain collective is bounded by the process group's timeout (NFD_TIMEOUT)
        nfd.all_mean(nf.from_module(net()))
    except nfd.RankFailureError as err:
        report("stall", error="RankFailureError", message=str(err), barrier_seconds=barrier_s,
               seconds=time.monotonic() - start)
    else:
        raise AssertionError("no RankFailureError from the collective")


GENERATIONS = 6


def pso(rank: int, world: int, directory: str | None, die_before: int | None = None):
    """A sharded PSO with a structure change at generation 2 (rank 0 adds a module the forward
    uses), checkpointed after every generation when ``directory`` is given and resumed from it.
    Every random number is drawn per (generation, member) so a resumed run can redraw it."""
    g = torch.Generator().manual_seed(4)
    data, labels = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    n = 6
    ck = nfd.load_sharded(directory) if directory else None
    if ck is None:
        torch.manual_seed(0)
        base = nf.from_module(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
        x = nfd.shard(nf.population(base, n, generator=torch.Generator().manual_seed(1)))
        v, start = x.local.zeros(), 0
    else:
        x, v, start = ck.pop, ck.extras["v"], ck.step
    rep = nfd.Replica(x.local)
    if ck is not None:
        check(rep.uid == ck.uid, "the replicated species keeps its uid across the restart")
    for gen in range(start, GENERATIONS):
        if gen == 2:
            local = x.local
            if rank == 0:
                torch.manual_seed(5)
                local = nf.add_module(local, "3", Scale(3))
            x = x.with_local(rep.sync(local))
            v = nf.touch(v)
        best, _, _ = x.best(fitness_of(x.local, data, labels))
        r = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(100 * gen + i))
                         for i in x.indices.tolist()])
        v = 0.5 * v + r * (best - x.local)
        x = x.with_local(x.local + v)
        if directory:
            if die_before == gen + 1:
                die_while_committing(gen + 1)
            x.save(directory, gen + 1, extras={"v": v})
    return x, v, start


def die_while_committing(step: int) -> None:
    """Make this process die inside ``save`` of ``step``: its data file is written, its
    manifest (the commit) is not, while the peer completes its own files and waits."""
    from nytorch_func.distributed import _checkpoint

    write = _checkpoint._atomic_write

    def dying(path: str, data: bytes) -> None:
        if path.endswith(".json"):
            report("resume", attempt=0, died_saving=step)
            os._exit(7)
        write(path, data)

    _checkpoint._atomic_write = dying


def resume(rank: int, world: int) -> None:
    """Run under ``torchrun --max-restarts=1``: in attempt 0 rank 1 dies while saving step 4
    (rank 0 has written step 4, uncommitted elsewhere); attempt 1 resumes from step 3 and must
    equal an uninterrupted run."""
    directory = os.environ["NFD_CKPT_DIR"]
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0:
        try:
            pso(rank, world, directory, die_before=4 if rank == 1 else None)
        except nfd.RankFailureError as err:
            report("resume", attempt=0, error=type(err).__name__)
            sys.stdout.flush()
            os._exit(5)
        raise AssertionError("the peer's death went unnoticed")
    before = sorted(os.listdir(directory))
    x, v, start = pso(rank, world, directory)
    x_ref, v_ref, _ = pso(rank, world, None)
    same = all(torch.equal(a, b) for a, b in zip([*x.local.leaves, *v.leaves],
                                                 [*x_ref.local.leaves, *v_ref.leaves]))
    same_chain = (x.local.version == x_ref.local.version
                  and nf.param_ids(x.local) == nf.param_ids(x_ref.local)
                  and describe_crc(x.local) == describe_crc(x_ref.local))
    report("resume", attempt=attempt, resumed_from=start, equal=same, same_chain=same_chain,
           version=x.local.version, before=before, after=sorted(os.listdir(directory)))


SCENARIOS = {f.__name__: f for f in (step, skew, events, kill, stall, resume)}


def main() -> None:
    timeout = float(os.environ.get("NFD_TIMEOUT", "30"))
    rank, world = nfd.init(timeout=timeout)
    for name in sys.argv[1:]:
        SCENARIOS[name](rank, world)
    if "kill" not in sys.argv[1:] and "stall" not in sys.argv[1:]:
        nfd.barrier()
        nfd.shutdown()
    else:
        # The process group is broken on purpose: skip its destructors, which may abort the
        # process ("terminate called without an active exception") after the error was reported.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
