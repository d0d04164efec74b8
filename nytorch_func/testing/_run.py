"""One example of the law suite made real, and the checks the laws share.

:class:`Run` holds the particles the laws look at; :func:`shows` attaches to a failure the line
of code that replays it, so the suite can print it under the replayable example.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import optree
import torch

import nytorch_func as nf

from ._edit import Edit
from ._particles import random_particle, random_population
from ._view import Forward

__all__ = ["shows", "Run", "leaf_state", "same", "unchanged", "close", "expect", "outputs",
           "same_particle", "module_classes"]


@contextlib.contextmanager
def shows(code: str, *, setup: bool = False) -> Iterator[None]:
    """Attach ``code`` (the line that replays the check) to an error raised inside.

    The innermost check wins; an enclosing ``setup=True`` line (one that defines a name the
    check uses) goes before it.
    """
    try:
        yield
    except BaseException as err:
        lines = getattr(err, "nft_check", None)
        try:
            if lines is None:
                err.nft_check = [code]  # type: ignore[attr-defined]
            elif setup:
                lines.insert(0, code)
        except AttributeError:  # an exception type with __slots__
            pass
        raise


@dataclasses.dataclass
class Run:
    """One example made real: initiator ``steps[k]`` at version ``k`` after the primitive
    ``edits[:k]``, a recipient ``r`` and a population ``pop`` left at version 0, and ``ends``:
    the version after each drawn edit (a ``replace_module`` edit is two versions)."""

    forward: Forward
    steps: list[nf.Particle]
    edits: list[Edit]
    ends: list[int]
    r: nf.Particle
    pop: nf.Particle
    invalid: Edit
    b_version: int
    scalar: float
    chain: tuple[Edit, ...]

    @classmethod
    def build(cls, make_model: Callable[[], torch.nn.Module], forward: Forward, case: Any
              ) -> "Run":
        p = random_particle(nf.from_module(make_model()), case.seed)
        r = random_particle(p, case.recipient_seed)
        pop = random_population(p, case.members, case.pop_seed)
        steps, edits, ends = [p], [], [0]
        for k, edit in enumerate(case.chain):
            for step in edit.steps():
                with shows(f"p{len(steps)} = ...  # edit {k + 1} of the chain: {step!r}"):
                    steps.append(step.apply(steps[-1]))
                edits.append(step)
            ends.append(len(edits))
        return cls(forward, steps, edits, ends, r, pop, case.invalid,
                   min(case.b_version, len(edits)), case.scalar, case.chain)

    @property
    def head(self) -> nf.Particle:
        return self.steps[-1]

    @property
    def n(self) -> int:
        return len(self.edits)


def leaf_state(p: nf.Particle) -> list[tuple[int, torch.Tensor]]:
    return [(id(t), t.detach().clone()) for t in p.leaves]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach(), b.detach()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def unchanged(p: nf.Particle, before: list[tuple[int, torch.Tensor]], name: str) -> None:
    if [id(t) for t in p.leaves] != [i for i, _ in before]:
        raise AssertionError(f"{name}'s leaves were replaced")
    for t, (_, v) in zip(p.leaves, before):
        if not same(t, v):
            raise AssertionError(f"{name}'s leaf values changed")


def close(a: Any, b: Any, what: str) -> None:
    def one(x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dtype in (torch.float16, torch.bfloat16):  # 3 significant digits, several layers
            peak = y.detach().abs().float().nan_to_num().max() if y.numel() else 1.0
            scale = max(1.0, float(peak))
            rtol, atol = 0.1, 0.1 * scale
        else:
            rtol, atol = 1e-4, 1e-4
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{what}: {m}")
    optree.tree_map(one, a, b, none_is_leaf=True)


def expect(ok: bool, code: str, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``ok``, with ``code`` as the replay line."""
    if not ok:
        with shows(code):
            raise AssertionError(message)


def outputs(run: Run, p: nf.Particle) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return run.forward.run(p)


def _plain_attributes(module: torch.nn.Module) -> dict[str, Any]:
    return {f"{name}.{k}" if name else k: (type(v), v)
            for name, m in module.named_modules(remove_duplicate=False)
            for k, v in vars(m).items() if not k.startswith("_") and k != "training"}


def same_particle(a: nf.Particle, b: nf.Particle, what: str) -> None:
    sa, sb = a.schema, b.schema
    assert sa.version == sb.version, f"{what}: version {sb.version}, saved {sa.version}"
    assert tuple(a.batch_shape) == tuple(b.batch_shape), \
        f"{what}: batch shape {tuple(b.batch_shape)}, saved {tuple(a.batch_shape)}"
    assert a.training == b.training, f"{what}: training flag changed"
    fields = ("kind", "paths", "shape", "dtype", "config", "state", "persistent", "policy", "pid")
    for x, y in zip(sa.specs, sb.specs):
        for f in fields:
            assert getattr(x, f) == getattr(y, f), \
                f"{what}: {f} of {x.key!r} is {getattr(y, f)!r}, saved {getattr(x, f)!r}"
        if x.reset is not None or y.reset is not None:
            assert x.reset is not None and y.reset is not None and same(x.reset, y.reset), \
                f"{what}: the reset value of {x.key!r} was not kept"
    assert len(sa.specs) == len(sb.specs), f"{what}: {len(sb.specs)} specs, saved {len(sa.specs)}"
    for path in sa.by_path:
        assert same(a[path], b[path]), f"{what}: {path!r} changed"
    attrs_a, attrs_b = _plain_attributes(sa._skeleton), _plain_attributes(sb._skeleton)
    for key, (kind, value) in attrs_a.items():
        got = attrs_b.get(key)
        assert got is not None and got[0] is kind and (got[1] == value or got[1] is value), \
            f"{what}: attribute {key!r} is {got[1] if got else 'missing'!r}, saved {value!r}"


def module_classes(particles: Any) -> list[type]:
    """The module classes of every live version of the particles' species."""
    found = {type(m) for p in particles for s in p.species.live_versions()
             for m in s._skeleton.modules()}
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))
