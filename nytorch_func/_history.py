"""Reading a species' history, for a person: what each event changed, and what differs."""

from __future__ import annotations

from ._errors import expect
from ._schema import Schema
from ._species import Species

__all__ = ["history", "diff", "History"]


class History(list):
    """A list of ``(version, event_description)`` lines that prints as a readable log."""

    def __init__(self, species: Species, rows: list[tuple[int, str]], oldest: int) -> None:
        super().__init__(rows)
        self.species_name = species.name
        self.oldest = oldest
        self.count = len(species)

    def __str__(self) -> str:
        lines = [f"species {self.species_name!r}: {self.count} version(s)"]
        if self.oldest > 0:
            freed = "version 0" if self.oldest == 1 else f"versions 0..{self.oldest - 1}"
            lines.append(f"  ({freed} freed: nothing references them)")
        lines += [f"  v{v} -> v{v + 1}: {text}" for v, text in self]
        return "\n".join(lines)

    __repr__ = __str__


def history(species: Species) -> History:
    """The events of ``species`` still in memory, oldest first.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> q = nf.set_none(p, "bias")
    >>> print(nf.history(p.species))
    species 'Linear#...': 2 version(s)
      v0 -> v1: set_none bias
    """
    expect(species, Species, "history", "a Species (p.species)")
    live = species.live_versions()
    rows = [(s.version, s.event.describe()) for s in live if s.event is not None]
    return History(species, rows, live[0].version if live else len(species))


def diff(a: Schema, b: Schema) -> str:
    """What differs between two schemas, by parameter id and path, one line per change.

    >>> import torch, nytorch_func as nf
    >>> p = nf.from_module(torch.nn.Linear(2, 1))
    >>> q = nf.configure(nf.del_param(p, "bias"), "weight", operational=False)
    >>> print(nf.diff(p.schema, q.schema))
    - param bias [1 float32] id=1 ParamConfig(operational=True, clone=True)
    ~ param weight: ParamConfig(operational=True, clone=True) -> ParamConfig(operational=False, clone=True)
    """
    for s in (a, b):
        expect(s, Schema, "diff", "two Schemas (p.schema)")
    lines = []
    old = {_ident(s): s for s in a.specs}
    new = {_ident(s): s for s in b.specs}
    for ident, spec in old.items():
        if ident not in new:
            lines.append("- " + spec.describe())
    for ident, spec in new.items():
        before = old.get(ident)
        if before is None:
            lines.append("+ " + spec.describe())
            continue
        changes = []
        if before.paths != spec.paths:
            changes.append(f"paths {list(before.paths)} -> {list(spec.paths)}")
        if before.shape != spec.shape:
            changes.append(f"shape {_dims(before.shape)} -> {_dims(spec.shape)}")
        if before.dtype != spec.dtype:
            changes.append(f"dtype {_name(before.dtype)} -> {_name(spec.dtype)}")
        if before.device != spec.device:
            changes.append(f"device {before.device} -> {spec.device}")
        if before.config != spec.config:
            changes.append(f"{before.config} -> {spec.config}")
        if before.state != spec.state:
            changes.append("shared -> state" if spec.state else "state -> shared")
        if changes:
            lines.append(f"~ {spec.kind} {spec.key}: " + "; ".join(changes))
    return "\n".join(lines) if lines else "(no differences)"


def _ident(spec) -> tuple:
    return ("param", spec.pid) if spec.kind == "param" else ("buffer", spec.paths[0])


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _name(dtype: object) -> str:
    return str(dtype).replace("torch.", "")
