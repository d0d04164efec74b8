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

__all__ = ["shows", "Run", "leaf_state", "same", "unchanged", "close", "kept", "twin_output",
           "expect", "outputs", "same_particle", "module_classes"]


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


_REL = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 1e-5,
        torch.complex64: 1e-5}
# the other precision a float32 (float64) output is recomputed in to see how much the model
# magnifies rounding, and the ratio of the two precisions' rounding errors
_TWIN = {torch.float32: (torch.float64, 1.0), torch.complex64: (torch.float64, 1.0),
         torch.float64: (torch.float32, torch.finfo(torch.float64).eps
                         / torch.finfo(torch.float32).eps),
         torch.complex128: (torch.float32, torch.finfo(torch.float64).eps
                            / torch.finfo(torch.float32).eps)}


def kept(after: Any, before: Any, what: str,
         twin: Callable[[torch.dtype], Any] | None = None) -> None:
    """Assert two outputs (trees of tensors) are equal up to rounding: max |after - before|
    within 1e-12 (float64), 1e-5 (float32) or 1e-1 (16 bits) of ``before``'s scale (its largest
    finite magnitude).

    A model can magnify rounding past any fixed tolerance (a norm over two nearly equal
    features, a BatchNorm in training mode over nearly constant ones, each divides by about
    sqrt(eps)). ``twin(dtype)`` recomputes ``before``'s output in another precision (float64
    for float32, float32 for float64); where the fixed tolerance fails, the change may be ten
    times the model's own rounding error, estimated from the difference between the two
    precisions (scaled by the ratio of their epsilons for float64), but no larger.
    """
    twins: dict[torch.dtype, list] = {}

    def noise(i: int, dtype: torch.dtype) -> float:
        other, ratio = _TWIN.get(dtype, (None, 0.0))
        if twin is None or other is None:
            return 0.0
        if other not in twins:
            twins[other] = optree.tree_leaves(twin(other), none_is_leaf=True)
        t, b = twins[other][i], flat_before[i]
        if not isinstance(t, torch.Tensor) or t.shape != b.shape:
            return 0.0
        wide = torch.complex128 if b.is_complex() or t.is_complex() else torch.float64
        d = (b.detach().to(wide) - t.detach().to(wide)).abs()
        d = d[d.isfinite()]
        return float(d.max()) * ratio if d.numel() else 0.0

    flat_after = optree.tree_leaves(after, none_is_leaf=True)
    flat_before = optree.tree_leaves(before, none_is_leaf=True)
    assert len(flat_after) == len(flat_before), f"{what}: the output's structure changed"
    for i, (a, b) in enumerate(zip(flat_after, flat_before)):
        if not isinstance(a, torch.Tensor):
            assert a == b, f"{what}: the output changed"
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, \
            f"{what}: {tuple(a.shape)} {a.dtype}, before {tuple(b.shape)} {b.dtype}"
        if not (a.is_floating_point() or a.is_complex()):
            assert torch.equal(a, b), f"{what}: the output changed"
            continue
        wide = torch.complex128 if a.is_complex() else torch.float64
        x, y = a.detach().to(wide), b.detach().to(wide)
        finite = y.isfinite()
        assert torch.equal(finite, x.isfinite()), f"{what}: other entries are inf/nan"
        if not bool(finite.any()):
            continue
        scale = float(y[finite].abs().max())
        err = float((x[finite] - y[finite]).abs().max())
        allowed = _REL.get(a.dtype, 1e-1) * scale
        if err > allowed:
            allowed = max(allowed, 10 * noise(i, a.dtype))
        assert err <= allowed or err == 0.0, \
            f"{what}: max |change| {err:.3g} > {allowed:.3g} (output scale {scale:.3g})"


def twin_output(run: "Run", p: nf.Particle, dtype: torch.dtype) -> Any:
    """``p``'s output computed in ``dtype`` by a plain torch copy (the input cast likewise)."""
    module = nf.to_module(p).to(dtype)
    args = run.forward.cast(dtype)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        return module(*args)


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
