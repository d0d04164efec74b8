"""Evolution strategies on scikit-learn digits, the population sharded over torch.distributed.

    torchrun --nproc-per-node=2 examples/distributed_demo.py          # 2 processes, gloo
    python examples/distributed_demo.py                               # the same, 1 process
    torchrun --nproc-per-node=2 examples/distributed_demo.py --bench  # timing + bytes moved
    torchrun --nproc-per-node=2 --max-restarts=3 examples/distributed_demo.py --checkpoint ckpt
                                     # per-rank checkpoints every 10 generations; resumes

Every rank draws the perturbations of its own block of the population (member i from its own
seed, so the run does not depend on the number of processes), evaluates only that block (a vmap'd forward pass over the training set per member), and the ranks combine
fitness and the update with collectives: ``gather_tensor`` (fitness ranks), ``sum`` (the ES
gradient estimate, one all_reduce per dtype) and ``best``. The result is the same for any
number of processes; only the evaluation is split.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.distributed as nfd


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@torch.no_grad()
def fitness(pop: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative cross-entropy of every member on (x, y): one batched forward pass."""
    logits = torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    return -nn.functional.cross_entropy(logits.transpose(1, 2), y.expand(len(logits), -1),
                                        reduction="none").mean(1)


def es_generation(theta: nf.Particle, gen: int, n: int, sigma: float, lr: float,
                  x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[nf.Particle, float, float, nfd.ShardedPopulation]:
    """One ES step; returns (new theta, best fitness, seconds evaluating, this rank's noise)."""
    # Each rank draws only its own members' noise, member i from its own seed: the same
    # numbers for any number of processes, and no rank pays for the whole population.
    rank, world = nfd.init()
    sizes = nfd.split_sizes(n, world)
    first = sum(sizes[:rank])
    local = nf.stack([nf.randn_like(theta, generator=torch.Generator().manual_seed(
        1_000_003 * gen + i)) for i in range(first, first + sizes[rank])])
    eps = nfd.ShardedPopulation(local, total=n, rank=rank, world=world)
    t0 = time.perf_counter()
    f_local = fitness(sigma * eps.local + theta, x, y)
    t_eval = time.perf_counter() - t0
    f_all = eps.gather_tensor(f_local)                      # all_gather of n floats
    ranks = torch.argsort(torch.argsort(f_all)).float() / (n - 1) - 0.5
    step = eps.sum(eps.part(ranks))                         # all_reduce SUM, one per dtype
    theta = theta + (lr / (n * sigma)) * step
    return theta, float(f_all.max()), t_eval, eps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", type=int, default=150)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--bench", action="store_true",
                        help="time evaluation-heavy generations and count the bytes moved")
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="save per-rank checkpoints in DIR and resume from them")
    parser.add_argument("--every", type=int, default=10, help="generations between checkpoints")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank, world = nfd.init(timeout=60)
    x, y, x_test, y_test = load_digits()
    hidden = 256 if args.bench else args.hidden
    torch.manual_seed(0)  # the same initial model on every rank
    theta = nf.from_module(nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)))
    rep = nfd.Replica(theta)  # checks every rank built the same species

    if args.bench:
        gens = 6
        nfd.barrier()
        for g in range(2):  # warm-up
            theta, _, _, _ = es_generation(theta, g, args.population, 0.05, 0.2, x, y)
        nfd.barrier()
        start, t_eval = time.perf_counter(), 0.0
        with nfd.count_bytes() as traffic:
            for g in range(gens):
                theta, _, te, _ = es_generation(theta, g, args.population, 0.05, 0.2, x, y)
                t_eval += te
        nfd.barrier()
        total = time.perf_counter() - start
        if rank == 0:
            print(json.dumps({"world": world, "population": args.population,
                              "params": theta.numel(), "samples": len(x),
                              "seconds_per_generation": total / gens,
                              "eval_seconds_per_generation": t_eval / gens,
                              "bytes_per_generation": traffic.bytes / gens,
                              "collectives_per_generation": traffic.calls / gens,
                              "by_kind": {k: v / gens for k, v in traffic.by_kind.items()}}))
        nfd.shutdown()
        return

    first = 0
    ck = nfd.load_sharded(args.checkpoint) if args.checkpoint else None
    if ck is not None:  # a restart: go on from the newest step every rank saved
        theta, first = ck.extras["theta"], ck.step
        rep = nfd.Replica(theta)
        if rank == 0:
            print(f"resumed from generation {first} (species uid {rep.uid})", flush=True)
    start = time.perf_counter()
    for g in range(first, args.generations):
        theta, best, _, eps = es_generation(theta, g, args.population, 0.05, 0.2, x, y)
        if rank == 0 and (g % 25 == 0 or g == args.generations - 1):
            acc = (nf.apply(theta, x_test).argmax(1) == y_test).float().mean()
            print(f"gen {g:4d}  best member loss {-best:.3f}  centre test accuracy {acc:.3f}",
                  flush=True)
        if args.checkpoint and ((g + 1) % args.every == 0 or g + 1 == args.generations):
            # this rank's noise block and the centre; every rank commits step g + 1 together
            eps.save(args.checkpoint, g + 1, extras={"theta": theta})
    # Structure changes replicate too: freeze the output layer's bias on rank 0 only, sync.
    if rank == 0:
        theta = nf.configure(theta, "2.bias", operational=False)
    theta = rep.sync(theta)
    digest = nfd.all_mean(theta)  # the centre is identical on every rank: the soup changes nothing
    same = all(torch.allclose(a, b) for a, b in zip(digest.leaves, theta.leaves))
    if rank == 0:
        print(f"{world} process(es), {time.perf_counter() - start:.1f} s; version {theta.version} "
              f"on every rank; ranks agree: {same}")
    nfd.barrier()
    nfd.shutdown()


if __name__ == "__main__":
    main()
