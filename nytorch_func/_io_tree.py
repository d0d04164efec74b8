"""What a checkpoint holds: particles inside a tree of plain values, tensors and training state.

``nf.save`` takes any tree of particles (single or populations), tensors, Python numbers,
strings and ``None``, dicts (any encodable keys), lists, tuples, ``NamedTuple`` s (optimizer
states), enum members and ``torch.Generator`` s. :class:`TreeEncoder` encodes it, refusing a
particle whose leaves disagree with its schema, and records per species the oldest version a
particle is at (the history is saved from there); :class:`TreeDecoder` rebuilds it given the
decoded species' versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._codec import Decoder, Encoder
from ._codec_values import Where, described, need
from ._errors import CheckpointError
from ._particle import Particle
from ._schema import Schema
from ._species import Species

__all__ = ["TreeEncoder", "TreeDecoder"]


class TreeEncoder(Encoder):
    """Encodes the saved tree; ``species``: ``[(species, oldest saved version)]`` in order."""

    def __init__(self) -> None:
        super().__init__()
        self.species: list[tuple[Species, Schema]] = []
        self._index: dict[int, int] = {}
        self._in_tree = False

    def tree(self, obj: Any) -> Any:
        self._in_tree = True
        try:
            return self.value(obj, "")
        finally:
            self._in_tree = False

    def _more(self, v: Any, where: Where, metas: Mapping[int, int] | None) -> Any:
        if self._in_tree:
            if isinstance(v, Particle):
                return self._particle(v, described(where) or "the particle")
            if isinstance(v, (nn.Module, Schema, Species)):
                raise CheckpointError(
                    f"save: {described(where) or 'the object'} is a {type(v).__name__}; a "
                    "checkpoint holds "
                    "particles (nf.from_module(module)) and training state, not modules or "
                    "schemas (for plain PyTorch weights use nf.to_module(p).state_dict())")
        return super()._more(v, where, metas)

    def _particle(self, p: Particle, where: str) -> dict:
        s = p._schema
        sp = s.species
        i = self._index.get(id(sp))
        if i is None:
            i = self._index[id(sp)] = len(self.species)
            self.species.append((sp, s))
        elif s.version < self.species[i][1].version:
            self.species[i] = (sp, s)
        batch = _check_leaves(p, where)
        leaves = [self.table.add(t, (where, "particle {} leaf {!r}", k))
                  for k, t in zip(s.leaf_keys, p._leaves)]
        out = {"$t": "particle", "species": i, "version": s.version, "training": p._training,
               "leaves": leaves}
        if not leaves and batch:
            out["batch"] = list(batch)
        return out


def _check_leaves(p: Particle, where: str) -> tuple[int, ...]:
    """The particle's batch shape; a CheckpointError if a leaf disagrees with its spec."""
    s = p._schema
    if len(p._leaves) != len(s.leaf_specs):
        raise CheckpointError(f"save: {where} has {len(p._leaves)} tensors, its schema (version "
                              f"{s.version}) {len(s.leaf_specs)}; it was not built by "
                              "nytorch_func's operations")
    batch = tuple(p.batch_shape)
    first = s.leaf_keys[0] if s.leaf_keys else None
    for spec, t in zip(s.leaf_specs, p._leaves):
        if isinstance(t, torch.Tensor) and t.dim() >= len(spec.shape) and tuple(
                t.shape[:t.dim() - len(spec.shape)]) != batch:
            raise CheckpointError(
                f"save: {where} has leaves of different batch shapes ({first!r}: {batch}, "
                f"{spec.key!r}: {tuple(t.shape[:t.dim() - len(spec.shape)])}); every leaf of a "
                "particle has the same leading dimensions. It was not built by nytorch_func's "
                "operations")
        if not (isinstance(t, torch.Tensor) and spec.matches(t, batch)):
            got = (f"[{'x'.join(map(str, t.shape))} {str(t.dtype)[6:]} on {t.device}]"
                   if isinstance(t, torch.Tensor) else type(t).__name__)
            want = "x".join(map(str, (*batch, *spec.shape)))
            raise CheckpointError(
                f"save: {where} leaf {spec.key!r} is {got}, its schema says "
                f"[{want} {str(spec.dtype)[6:]} on {spec.device}]; a particle whose tensors "
                "disagree with its schema cannot be saved (it would not load). Change dtype or "
                "device with nf.to(p, dtype=..., device=...), which records the change")
    return batch


class TreeDecoder(Decoder):
    """Decodes the saved tree; ``chains[i]``: species ``i``'s schemas by version."""

    _chains: list[Mapping[int, Schema]] | None = None

    def tree(self, x: Any, chains: list[Mapping[int, Schema]]) -> Any:
        self._chains = chains
        try:
            return self.value(x)
        finally:
            self._chains = None

    def _more(self, tag: str, v: dict, metas: list | None) -> Any:
        if tag == "particle" and self._chains is not None:
            return self._particle(v)
        return super()._more(tag, v, metas)

    def _particle(self, x: dict) -> Particle:
        i = x["species"]
        need(type(i) is int and 0 <= i < len(self._chains), "bad species index")  # type: ignore[arg-type]
        chain = self._chains[i]  # type: ignore[index]
        schema = chain.get(x["version"])
        if schema is None:
            raise CheckpointError(f"load: a particle at version {x['version']!r} is outside the "
                                  f"saved history (versions {min(chain)}..{max(chain)})")
        training = x["training"]
        need(training is None or isinstance(training, bool), "bad training flag")
        need(isinstance(x["leaves"], list), "bad leaves")
        leaves = tuple(self.tensor(name) for name in x["leaves"])
        batch = x.get("batch", [])
        need(not leaves or not batch, "a batch shape beside leaves")
        need(isinstance(batch, list) and all(type(n) is int and n >= 0 for n in batch),
             "bad batch shape")
        _check_loaded(schema, leaves)
        return Particle._make(schema, leaves, training, tuple(batch))


def _check_loaded(schema: Schema, leaves: tuple) -> None:
    if len(leaves) != len(schema.leaf_specs):
        raise CheckpointError(f"load: a particle of version {schema.version} needs "
                              f"{len(schema.leaf_specs)} tensors, the file gives {len(leaves)}")
    batch = None
    for spec, t in zip(schema.leaf_specs, leaves):
        n = t.dim() - len(spec.shape)
        if batch is None and n >= 0:
            batch = tuple(t.shape[:n])
        if n < 0 or not spec.matches(t, batch):  # type: ignore[arg-type]
            raise CheckpointError(f"load: tensor for {spec.key!r} has shape {tuple(t.shape)} "
                                  f"{t.dtype} on {t.device}, the schema says {spec.shape} "
                                  f"{spec.dtype} on {spec.device}")

