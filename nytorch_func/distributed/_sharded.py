"""Sharded populations: each rank holds a contiguous block of one species' members.

The collectives a distributed PSO, ES or model soup needs, each one collective per dtype of
leaves (plus one small ``all_reduce`` that checks every rank holds the same version):

* :meth:`ShardedPopulation.gather` - the whole population on every rank (``all_gather``);
* :meth:`ShardedPopulation.best` - the fittest member and its fitness on every rank
  (``all_reduce(MAX)`` over ``(fitness, index)`` slots, then a ``broadcast`` from its owner);
* :meth:`ShardedPopulation.sum` / :meth:`~ShardedPopulation.mean` - the (weighted) sum or mean
  of the operational parameters of all members (``all_reduce(SUM)``);
* :func:`all_mean` - one particle per rank averaged across ranks (a model soup);
* :func:`broadcast` - one rank's particle on every rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from .._errors import NytorchFuncError, SchemaError, SpeciesMismatchError
from .._particle import Particle
from .._reduce import combined, counter, reset_value
from .._touch import touch
from ._wire import agree, guarded, pack, require_group, unpack

__all__ = ["ShardedPopulation", "shard", "split_sizes", "all_mean", "broadcast"]


def split_sizes(total: int, world: int) -> list[int]:
    """Members per rank: ``total`` split into ``world`` contiguous blocks, the first ones larger.

    The same rule as ``torch.tensor_split``.

    >>> from nytorch_func.distributed import split_sizes
    >>> split_sizes(10, 4)
    [3, 3, 2, 2]
    """
    return [total // world + (1 if r < total % world else 0) for r in range(world)]


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedPopulation:
    """This rank's block of a population of ``total`` members spread over ``world`` ranks.

    ``local`` is an ordinary population particle (batch shape ``(count,)``): forward passes,
    arithmetic and events work on it as on any population. Rank ``r`` holds the members
    ``offset .. offset + count - 1`` of the whole population, blocks split as
    :func:`split_sizes` says. Build one with :func:`shard`; derive the next generation's with
    :meth:`with_local`. Every collective method must be called by all ranks of ``group``.

    >>> import torch, nytorch_func as nf, nytorch_func.distributed as nfd
    >>> nfd.init()   # no torchrun environment: a world of one process
    (0, 1)
    >>> pop = nf.population(torch.nn.Linear(3, 1), 6, generator=torch.Generator().manual_seed(0))
    >>> sp = nfd.shard(pop)
    >>> sp.count, sp.offset, sp.total
    (6, 0, 6)
    >>> best, value, index = sp.best(torch.arange(6.0))
    >>> index, value, torch.equal(best["weight"], pop[5]["weight"])
    (5, 5.0, True)
    """

    local: Particle
    total: int
    rank: int
    world: int
    group: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.local, Particle):
            raise NytorchFuncError(f"ShardedPopulation: local must be a Particle, got "
                                   f"{type(self.local).__name__}")
        shape = tuple(self.local.batch_shape)
        if len(shape) != 1 or shape[0] != self.sizes[self.rank]:
            raise SchemaError(
                f"ShardedPopulation: rank {self.rank} of {self.world} must hold "
                f"{self.sizes[self.rank]} of {self.total} members (batch shape "
                f"({self.sizes[self.rank]},)), got batch shape {shape}")

    # layout ------------------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        """Members held by each rank."""
        return split_sizes(self.total, self.world)

    @property
    def count(self) -> int:
        """Members held by this rank."""
        return self.sizes[self.rank]

    @property
    def offset(self) -> int:
        """Index of this rank's first member in the whole population."""
        return sum(self.sizes[: self.rank])

    @property
    def indices(self) -> torch.Tensor:
        """Indices of this rank's members in the whole population."""
        return torch.arange(self.offset, self.offset + self.count)

    def part(self, full: Any) -> Any:
        """This rank's block of something indexed by member: a ``(total, ...)`` tensor or population.

        Draw per-member randomness for the whole population from one seeded generator on every
        rank and take your part: the sharded run then matches the single-process one exactly.
        """
        n = full.shape[0] if isinstance(full, torch.Tensor) else len(full)
        if n != self.total:
            raise SchemaError(f"ShardedPopulation.part: expected {self.total} rows (one per "
                              f"member of the whole population), got {n}")
        return full[self.offset: self.offset + self.count]

    def with_local(self, local: Particle) -> "ShardedPopulation":
        """The same layout holding ``local`` (this rank's members of the next generation)."""
        if isinstance(local, Particle) and local._schema.species is not self.local._schema.species:
            raise SpeciesMismatchError(
                f"ShardedPopulation.with_local: the new members are of species "
                f"{local.species.name!r}, the population of {self.local.species.name!r}")
        return dataclasses.replace(self, local=local)

    def touch(self) -> "ShardedPopulation":
        """This rank's members brought to the head of their species."""
        return self.with_local(touch(self.local))

    # checkpoints ---------------------------------------------------------------------------------
    def save(self, directory: Any, step: int, *, extras: Any = None) -> str:
        """Collective: write this rank's checkpoint of ``step`` into ``directory``.

        Every rank writes its own block (and ``extras``: a dict of whatever ``nf.save`` takes:
        particles, tensors, optimizer states, numbers, e.g. velocities or the best member so
        far) with ``nf.save`` into
        ``step-<step>.rank-<rank>-of-<world>.safetensors``, then commits it with a small JSON
        manifest; both are written to temporary files and renamed, so a killed process never
        leaves a half-written checkpoint. One ``all_reduce`` then confirms that every rank has
        step ``step`` and only after it do ranks delete their other steps: a job killed at any
        moment restarts from the newest step every rank finished (see
        :func:`~nytorch_func.distributed.load_sharded`). Steps should increase. Returns the
        path of this rank's data file.

        >>> import tempfile, torch, nytorch_func as nf, nytorch_func.distributed as nfd
        >>> _ = nfd.init()
        >>> sp = nfd.shard(nf.population(torch.nn.Linear(2, 2), 4))
        >>> folder = tempfile.mkdtemp()
        >>> _ = sp.save(folder, step=1)
        >>> path = sp.save(folder, step=2)          # step 1 is removed once step 2 is confirmed
        >>> import os; sorted(os.listdir(folder))  # doctest: +NORMALIZE_WHITESPACE
        ['step-000000002.rank-00000-of-00001.json',
         'step-000000002.rank-00000-of-00001.safetensors']
        """
        from ._checkpoint import save_sharded

        return save_sharded(self, directory, step, extras=extras)

    # collectives ---------------------------------------------------------------------------------
    def gather(self) -> Particle:
        """The whole population on every rank: one ``all_gather`` per leaf dtype.

        Blocks of unequal size are padded to the largest one for the collective and trimmed.
        """
        what = "ShardedPopulation.gather"
        require_group(what)
        local = self.local
        agree(local._schema, what, self.group, _shape_check(self.total, self.world))
        bufs, layout = pack(local._leaves, lead=(self.count,))
        full = [_all_gather_rows(b, self.sizes, what, self.group) for b in bufs]
        leaves = _with_grad(unpack(full, layout, lead=(self.total,)), local)
        return Particle._make(local._schema, tuple(leaves), local._training,
                              (self.total, *local.batch_shape[1:]))

    def gather_tensor(self, values: torch.Tensor) -> torch.Tensor:
        """A per-member tensor (``(count, ...)`` on this rank) as ``(total, ...)`` on every rank.

        Handy for fitness values: rank, normalise or log them over the whole population.
        """
        what = "ShardedPopulation.gather_tensor"
        require_group(what)
        if not isinstance(values, torch.Tensor) or values.dim() < 1 or values.shape[0] != self.count:
            raise SchemaError(f"{what}: expected a tensor with {self.count} rows (one per local "
                              f"member), got {getattr(values, 'shape', type(values).__name__)}")
        return _all_gather_rows(values.detach().contiguous(), self.sizes, what, self.group)

    def best(self, fitness: torch.Tensor, *, maximize: bool = True) -> tuple[Particle, float, int]:
        """The fittest member of the whole population, on every rank: ``(member, fitness, index)``.

        ``fitness`` holds this rank's members' values (shape ``(count,)``); NaN counts as the
        worst. Ties go to the lowest global index, as ``torch.argmax`` on the whole population.
        One ``all_reduce(MAX)`` finds value and owner (it also checks the version), then the owner
        broadcasts the member's leaves, one ``broadcast`` per dtype.
        """
        what = "ShardedPopulation.best"
        require_group(what)
        fitness = _fitness(fitness, self.count, what)
        score = fitness if maximize else -fitness
        score = torch.nan_to_num(score.to(torch.float64), nan=-torch.inf)
        world = self.world
        slots = torch.full((2 * world,), -torch.inf, dtype=torch.float64)
        if self.count:
            i = int(torch.argmax(score))
            slots[self.rank] = score[i]
            slots[world + self.rank] = -(self.offset + i)  # MAX keeps each rank's own slot
        reduced = agree(self.local._schema, what, self.group, slots).cpu()
        values, owners = reduced[:world], reduced[world:]
        owner = int(torch.argmax(values))  # lowest rank among equal maxima
        index = int(-owners[owner])
        value = float(values[owner]) if maximize else -float(values[owner])
        member = self.local[index - self.offset] if owner == self.rank else self.local[0]
        member = _broadcast_leaves(member, owner, what, self.group)
        return member, value, index

    def sum(self, weights: torch.Tensor | None = None) -> Particle:
        """``sum_i weights[i] * member_i`` over the whole population, on every rank.

        Only operational parameters are summed (one ``all_reduce(SUM)`` per dtype); every other
        leaf (buffers, non-operational parameters) is this rank's first member's, unchanged.
        ``weights`` are this rank's members' weights (shape ``(count,)``; default all ones).
        """
        out, _ = self._reduce("ShardedPopulation.sum", weights, mean=False)
        return out

    def mean(self, weights: torch.Tensor | None = None) -> Particle:
        """The (weighted) mean of all members, on every rank, as ``nf.mean`` of the whole.

        Operational parameters and "mean" floating buffers: :meth:`sum` divided by the total
        weight (the sum of all ranks' weights, carried in the same ``all_reduce``); integer
        counters of policy "mean" take their maximum, "reset" buffers their reset value.
        """
        out, _ = self._reduce("ShardedPopulation.mean", weights, mean=True)
        return out

    def _reduce(self, what: str, weights: torch.Tensor | None, mean: bool) -> tuple[Particle, float]:
        require_group(what)
        local = self.local
        s = local._schema
        if weights is not None:
            weights = _fitness(weights, self.count, what)
        agree(s, what, self.group, _shape_check(self.total, self.world))
        leaves = list(local._leaves)
        # a sum adds the operational parameters; a mean also averages the buffers nf.mean does
        op = [i for i, (spec, t) in enumerate(zip(s.leaf_specs, leaves))
              if (combined(spec, t) if mean else i in s.op_index)]
        tensors = [leaves[i] for i in op]
        first = [t[0] if self.count else torch.zeros(t.shape[1:], dtype=t.dtype, device=t.device)
                 for t in leaves]
        if mean:
            _buffers_as_nf_mean(s, leaves, first, self.count, what, self.group)
        if not op:
            return Particle._make(s, tuple(first), local._training), float(self.total)
        bufs, layout = pack(tensors, lead=(self.count,))
        sums = []
        for b in bufs:
            if weights is None:
                sums.append(b.sum(0))
            else:
                w = weights.to(b.device, b.dtype if b.is_floating_point() else torch.float64)
                sums.append(torch.tensordot(w, b.to(w.dtype), dims=1).to(b.dtype))
        # The total weight rides along at the end of the first buffer: no extra collective.
        local_w = float(self.count) if weights is None else float(weights.sum())
        sums[0] = torch.cat([sums[0], sums[0].new_tensor([local_w])])
        for b in sums:
            guarded(what, "all_reduce", dist.all_reduce, [b], b, op=dist.ReduceOp.SUM,
                    group=self.group)
        total_w = float(sums[0][-1])
        sums[0] = sums[0][:-1]
        if mean:
            if total_w == 0:
                raise SchemaError(f"{what}: the weights of all ranks sum to 0; nothing to average")
            sums = [b / total_w if b.is_floating_point() or b.is_complex() else b // total_w
                    for b in sums]
        for i, t in zip(op, _with_grad(unpack(sums, layout), local, op)):
            first[i] = t
        return Particle._make(s, tuple(first), local._training), total_w


def shard(pop: Particle, rank: int | None = None, world: int | None = None, *,
          group: Any = None) -> ShardedPopulation:
    """This rank's block of ``pop`` (the whole population, built the same way on every rank).

    ``rank``/``world`` default to this process's place in ``group`` (``torch.distributed``'s
    default group). No collective runs: every rank slices its own copy.

    >>> import torch, nytorch_func as nf, nytorch_func.distributed as nfd
    >>> pop = nf.population(torch.nn.Linear(2, 2), 10)
    >>> [nfd.shard(pop, r, 4).count for r in range(4)], nfd.shard(pop, 2, 4).offset
    ([3, 3, 2, 2], 6)
    """
    if not isinstance(pop, Particle):
        raise NytorchFuncError(f"shard: expected a population Particle, got {type(pop).__name__}")
    if len(pop.batch_shape) != 1:
        raise SchemaError(f"shard: expected a population with one batch dimension, got batch "
                          f"shape {tuple(pop.batch_shape)}; use nf.stack or nf.population")
    if rank is None or world is None:
        require_group("shard")
        rank = dist.get_rank(group) if rank is None else rank
        world = dist.get_world_size(group) if world is None else world
    total = pop.batch_shape[0]
    for name, value in (("rank", rank), ("world", world)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"shard: {name} must be an int, got {value!r}")
    if world < 1 or not 0 <= rank < world:
        raise SchemaError(f"shard: need 0 <= rank < world, got rank={rank}, world={world}")
    if total < world:
        raise SchemaError(f"shard: a population of {total} cannot give each of {world} ranks a "
                          "member; make it at least as large as the world")
    sizes = split_sizes(total, world)
    offset = sum(sizes[:rank])
    local = pop[offset: offset + sizes[rank]]
    return ShardedPopulation(touch(local), total, rank, world, group)


def all_mean(p: Particle, weight: float | None = None, *, group: Any = None) -> Particle:
    """The average over all ranks of each rank's ``p`` (operational parameters only).

    A model soup across ranks: operational parameters are averaged (weighted by each rank's
    ``weight``, default 1) with one ``all_reduce(SUM)`` per dtype, the total weight riding in
    the same buffer. Buffers follow their policy as in ``nf.mean``: "mean" floating buffers
    (BatchNorm statistics) are averaged too and integer counters take their maximum over the
    ranks, "reset" ones get their reset value, "keep" ones and non-operational parameters stay
    this rank's own. ``p`` may be one particle or a population (averaged member by member).

    >>> import torch, nytorch_func as nf, nytorch_func.distributed as nfd
    >>> _ = nfd.init()
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> torch.allclose(nfd.all_mean(p)["weight"], p["weight"])
    True
    """
    what = "all_mean"
    require_group(what)
    if not isinstance(p, Particle):
        raise NytorchFuncError(f"{what}: expected a Particle, got {type(p).__name__}")
    p = touch(p)
    s = p._schema
    w = 1.0 if weight is None else float(weight)
    batch = tuple(p.batch_shape)
    agree(s, what, group, _shape_check(*batch))
    leaves = list(p._leaves)
    op = [i for i, (spec, t) in enumerate(zip(s.leaf_specs, leaves)) if combined(spec, t)]
    _buffers_as_nf_mean(s, p._leaves, leaves, None, what, group)
    if not op:
        return Particle._make(s, tuple(leaves), p._training, batch)
    bufs, layout = pack([leaves[i] for i in op], lead=())
    bufs = [b * w for b in bufs]
    bufs[0] = torch.cat([bufs[0], bufs[0].new_tensor([w])])
    for b in bufs:
        guarded(what, "all_reduce", dist.all_reduce, [b], b, op=dist.ReduceOp.SUM, group=group)
    total_w = float(bufs[0][-1])
    if total_w == 0:
        raise SchemaError(f"{what}: the weights of all ranks sum to 0; nothing to average")
    bufs[0] = bufs[0][:-1]
    out = unpack([b / total_w for b in bufs], layout)
    for i, t in zip(op, _with_grad(out, p, op)):
        leaves[i] = t
    return Particle._make(s, tuple(leaves), p._training)


def _buffers_as_nf_mean(s: Any, leaves: list, out: list, count: int | None, what: str,
                        group: Any) -> None:
    """Into ``out``: integer counters of policy "mean" as their maximum over every rank (and
    over this rank's ``count`` members, if given), "reset" buffers as their reset value."""
    for i, (spec, t) in enumerate(zip(s.leaf_specs, leaves)):
        if counter(spec, t):
            local = t if count is None else (t.amax(0) if count else torch.full(
                t.shape[1:], torch.iinfo(t.dtype).min, dtype=t.dtype, device=t.device))
            local = local.contiguous().clone()
            guarded(what, "all_reduce", dist.all_reduce, [local], local,
                    op=dist.ReduceOp.MAX, group=group)
            out[i] = local
        elif spec.kind == "buffer" and spec.policy == "reset":
            out[i] = reset_value(spec, tuple(t.shape[: t.dim() - len(spec.shape)])
                                 if count is None else (), what)


def broadcast(p: Particle, src: int = 0, *, group: Any = None) -> Particle:
    """Rank ``src``'s particle on every rank (all leaves; one ``broadcast`` per dtype).

    Every rank passes its own particle of the species at the same version and batch shape
    (its values are replaced); the schema stays each rank's own.

    >>> import torch, nytorch_func as nf, nytorch_func.distributed as nfd
    >>> _ = nfd.init()
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> torch.equal(nfd.broadcast(p, src=0)["weight"], p["weight"])
    True
    """
    what = "broadcast"
    require_group(what)
    if not isinstance(p, Particle):
        raise NytorchFuncError(f"{what}: expected a Particle, got {type(p).__name__}")
    world = dist.get_world_size(group)
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        raise SchemaError(f"{what}: src must be a rank in 0..{world - 1}, got {src!r}")
    p = touch(p)
    agree(p._schema, what, group, _shape_check(*p.batch_shape))
    return _broadcast_leaves(p, src, what, group)


# helpers ---------------------------------------------------------------------------------------

def _shape_check(*sizes: int) -> torch.Tensor:
    """MAX-payload that makes ``agree`` also compare integers (e.g. batch shapes) across ranks."""
    vals = [float(s) for s in sizes]
    return torch.tensor(vals + [-v for v in vals], dtype=torch.float64)


def _fitness(values: Any, count: int, what: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.shape != (count,):
        raise SchemaError(f"{what}: expected a tensor of shape ({count},), one value per local "
                          f"member, got {getattr(values, 'shape', type(values).__name__)}")
    return values.detach()


def _all_gather_rows(buf: torch.Tensor, sizes: list[int], what: str, group: Any) -> torch.Tensor:
    """Rows of every rank, concatenated in rank order (blocks padded to the largest for transport)."""
    rows = max(sizes)
    if buf.shape[0] < rows:
        pad = buf.new_zeros((rows - buf.shape[0], *buf.shape[1:]))
        buf = torch.cat([buf, pad])
    parts = [torch.empty_like(buf) for _ in sizes]
    guarded(what, "all_gather", dist.all_gather, parts, parts, buf.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _broadcast_leaves(p: Particle, src: int, what: str, group: Any) -> Particle:
    """``p`` with its leaves replaced by rank ``src``'s (same schema and batch shape everywhere)."""
    lead = tuple(p.batch_shape)
    bufs, layout = pack(p._leaves, lead=lead)
    # A buffer packed from one tensor may view that leaf: receivers write into a copy.
    bufs = [b.clone() if len(m) == 1 else b for b, m in zip(bufs, layout.members)]
    for b in bufs:
        guarded(what, "broadcast", dist.broadcast, [b], b, src=_global_rank(src, group),
                group=group)
    leaves = _with_grad(unpack(bufs, layout, lead=lead), p)
    return Particle._make(p._schema, tuple(leaves), p._training, lead)


def _global_rank(rank: int, group: Any) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _with_grad(leaves: list[torch.Tensor], like: Particle,
               idx: list[int] | None = None) -> list[torch.Tensor]:
    """Received leaves, requiring grad where the particle's own leaves do."""
    own = like._leaves if idx is None else [like._leaves[i] for i in idx]
    return [t.requires_grad_(True) if o.requires_grad and t.is_floating_point() else t
            for t, o in zip(leaves, own)]
