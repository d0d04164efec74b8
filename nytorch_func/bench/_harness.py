"""The timing harness: every benchmark is a ratio against a baseline timed in the same run.

Two sides are timed alternately (A B A B ...), so drift of the machine (other processes, CPU
frequency, allocator state) hits both alike; each pair gives one ratio, and a row reports the
median ratio and its interquartile range (IQR) over the pairs. Absolute times are reported too,
but only the ratios are meant to be compared across machines.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Side", "Target", "Case", "measure", "quantiles"]


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison.

    ``setup()`` is called untimed and returns the callable that is timed. A *repeatable* callable
    may be called many times in one sample (the harness picks how many); a non-repeatable one
    (nytorch's in-place ``touch``: a touched particle is already at the head) gets a fresh
    ``setup()`` for every sample and is called once. ``per_call`` is how many operations one call
    performs (e.g. 256 touches), so the reported time is per operation.
    """

    label: str
    setup: Callable[[], Callable[[], Any]]
    per_call: int = 1
    repeatable: bool = True


@dataclasses.dataclass(frozen=True)
class Target:
    """``kind="max_ratio"``: ours/baseline <= value. ``kind="min_speedup"``: baseline/ours >= value."""

    kind: str
    value: float

    def met(self, ratio: float) -> bool:
        if self.kind == "max_ratio":
            return ratio <= self.value
        return ratio > 0 and 1.0 / ratio >= self.value

    def describe(self) -> str:
        if self.kind == "max_ratio":
            return f"<= {self.value:g}x"
        return f">= {self.value:g}x faster"


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the report: ours against one baseline (or alone when ``base`` is None)."""

    id: str
    group: str
    name: str
    ours: Side
    base: Side | None = None
    target: Target | None = None


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """``(q25, median, q75)`` of ``values`` (inclusive method; a single value repeats)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _sample(fn: Callable[[], Any], number: int, *, warm: bool = True) -> float:
    """Seconds for ``number`` calls of ``fn``, the collector off; one untimed call first when
    ``warm`` (``gc.collect`` walks every object and leaves the caches cold)."""
    gc.collect()
    if warm:
        fn()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def _calibrate(side: Side, min_time: float) -> tuple[Callable[[], Any] | None, int]:
    """The callable to reuse (repeatable sides) and how many calls make one sample."""
    if not side.repeatable:
        return None, 1
    fn = side.setup()
    fn()  # warm-up: first-call costs (lazy imports, allocator growth) are not measured
    number = 1
    while True:
        elapsed = _sample(fn, number)
        if elapsed >= min_time or number >= 1 << 20:
            return fn, number
        number = max(number * 2, int(number * min_time / max(elapsed, 1e-9) * 1.2))


def _time_once(side: Side, fn: Callable[[], Any] | None, number: int) -> float:
    """Seconds per operation for one sample."""
    if fn is None:
        call = side.setup()
        return _sample(call, 1, warm=False) / side.per_call
    return _sample(fn, number) / (number * side.per_call)


def measure(case: Case, *, repeats: int, min_time: float) -> dict[str, Any]:
    """Time ``case`` and return its report row (a JSON-ready dict).

    The row has ``ours_s``/``base_s`` (median seconds per operation), ``ratio`` (median of the
    per-pair ratios ours/base), ``ratio_q25``/``ratio_q75`` and ``ratio_iqr``, ``target`` and
    ``met`` (None without a target or baseline).
    """
    # Samples of both sides should last about as long: on a shared machine a long sample absorbs
    # more preemptions than a short one. A non-repeatable side's sample is one call, so the
    # repeatable side is calibrated to that duration instead of ``min_time`` when it is shorter.
    for one, other in ((case.ours, case.base), (case.base, case.ours)):
        if one is not None and other is not None and not one.repeatable and other.repeatable:
            single = min(_sample(one.setup(), 1, warm=False) for _ in range(2))
            min_time = min(min_time, max(single, 1e-3))
    ours_fn, ours_n = _calibrate(case.ours, min_time)
    base_fn, base_n = (_calibrate(case.base, min_time) if case.base is not None else (None, 0))
    ours_t, base_t, ratios = [], [], []
    for _ in range(repeats):
        a = _time_once(case.ours, ours_fn, ours_n)
        ours_t.append(a)
        if case.base is not None:
            b = _time_once(case.base, base_fn, base_n)
            base_t.append(b)
            ratios.append(a / b)
    row: dict[str, Any] = {
        "id": case.id, "group": case.group, "name": case.name,
        "ours": case.ours.label, "baseline": case.base.label if case.base else None,
        "repeats": repeats, "ours_number": ours_n, "base_number": base_n,
        "ours_s": quantiles(ours_t)[1], "ours_s_iqr": _iqr(ours_t),
        "base_s": None, "base_s_iqr": None, "ratio": None, "ratio_q25": None, "ratio_q75": None,
        "ratio_iqr": None, "speedup": None,
        "target": case.target.describe() if case.target else None, "met": None,
    }
    if ratios:
        q1, med, q3 = quantiles(ratios)
        row.update(base_s=quantiles(base_t)[1], base_s_iqr=_iqr(base_t), ratio=med,
                   ratio_q25=q1, ratio_q75=q3, ratio_iqr=q3 - q1, speedup=1.0 / med)
        if case.target is not None:
            row["met"] = case.target.met(med)
    # release what the sides hold before the next case runs
    del ours_fn, base_fn
    gc.collect()
    return row


def _iqr(values: list[float]) -> float:
    q1, _, q3 = quantiles(values)
    return q3 - q1
