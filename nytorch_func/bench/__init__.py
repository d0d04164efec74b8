"""Benchmarks: ``python -m nytorch_func.bench [--quick] [--json out.json] [--only P1,P3]``.

Every row is a ratio against a baseline timed in the same process and run, the two interleaved
(A B A B ...); rows report the median ratio and its IQR, the target from DESIGN.md and whether it
is met. Baselines: raw ``torch._foreach_*`` on the same tensors, one flat tensor, raw torch.func
ensembling, a hand-written SNES on raw tensors, and nytorch 1.1.0 where it is installed (the
optional ``bench`` extra; its rows are skipped cleanly when it is absent). See
``docs/performance.md`` for measured figures.

>>> import nytorch_func.bench as bench
>>> report = bench.run(only=["P1"], repeats=3, min_time=0.001)
>>> [row["id"] for row in report["rows"]][:1], report["rows"][0]["target"]
(['P1'], '<= 1.5x')
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from typing import Any

import torch

from ._harness import Case, Side, Target, measure
from ._cases import BUILDERS, GROUPS, nytorch_available, p6_row

__all__ = ["run", "format_table", "format_markdown", "GROUPS", "Case", "Side", "Target", "measure"]

QUICK = {"repeats": 7, "min_time": 0.01}
FULL = {"repeats": 21, "min_time": 0.05}


def _select(only: Iterable[str] | None) -> list[str]:
    if only is None:
        return list(GROUPS)
    by_lower = {g.lower(): g for g in GROUPS}
    chosen = []
    for name in only:
        group = by_lower.get(name.strip().lower())
        if group is None:
            raise ValueError(f"bench: unknown benchmark {name!r}; choose from {', '.join(GROUPS)}")
        chosen.append(group)
    return [g for g in GROUPS if g in chosen]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "nytorch": _nytorch_version()}


def _nytorch_version() -> str | None:
    if not nytorch_available():
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nytorch")
    except PackageNotFoundError:  # importable but not installed as a distribution
        return "unknown"


def run(only: Iterable[str] | None = None, *, quick: bool = False, repeats: int | None = None,
        min_time: float | None = None, progress: Any = None) -> dict[str, Any]:
    """Run the selected benchmark groups; the report as a JSON-ready dict.

    ``only``: group names (``P1`` ... ``P7``, ``touch``, ``event``, ``io``, ``init``, ``adam``);
    all by default.
    ``quick`` uses fewer, shorter samples; ``repeats`` (pairs per row) and ``min_time`` (seconds
    per sample) override either preset. ``progress(row)`` is called after each row.
    """
    preset = QUICK if quick else FULL
    repeats = preset["repeats"] if repeats is None else repeats
    min_time = preset["min_time"] if min_time is None else min_time
    if repeats < 1:
        raise ValueError(f"bench: repeats must be at least 1, got {repeats}")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for group in _select(only):
        if group == "P6":
            new = [p6_row()]
            if new[0]["base_count"] is None:
                skipped["P6-nytorch"] = "nytorch is not installed"
        else:
            cases, skip = BUILDERS[group]()
            skipped.update(skip)
            new = []
            for case in cases:
                new.append(measure(case, repeats=repeats, min_time=min_time))
                if progress is not None:
                    progress(new[-1])
            rows.extend(new)
            continue
        rows.extend(new)
        if progress is not None:
            progress(new[0])
    return {"machine": machine(), "quick": quick, "repeats": repeats, "min_time": min_time,
            "seconds": time.perf_counter() - start, "rows": rows, "skipped": skipped}


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: one line per row, then the skipped rows."""
    header = ("id", "case", "ours", "baseline", "ours/base [IQR]", "target", "met")
    lines = []
    for row in report["rows"]:
        if "ours_count" in row:
            ours, base = str(row["ours_count"]), ("-" if row["base_count"] is None
                                                  else str(row["base_count"]))
            ratio = f"{ours} vs {base} objects"
        else:
            ours, base = _fmt_time(row["ours_s"]), _fmt_time(row["base_s"])
            if row["ratio"] is None:
                ratio = "-"
            else:
                ratio = f"{row['ratio']:.3g}x [{row['ratio_q25']:.3g}-{row['ratio_q75']:.3g}]"
                if row["ratio"] < 1:
                    ratio += f" ({row['speedup']:.3g}x faster)"
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        base_label = row["baseline"] or "-"
        lines.append((row["id"], row["name"], f"{ours} ({row['ours']})",
                      f"{base} ({base_label})", ratio, row["target"] or "-", met))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    m = report["machine"]
    out.append(f"\n{m['cpu_count']} CPU(s), torch {m['torch']} ({m['torch_threads']} thread(s)), "
               f"python {m['python']}, nytorch {m['nytorch'] or 'absent'}; "
               f"{report['repeats']} interleaved pairs per row, {report['seconds']:.0f} s")
    for key, reason in report["skipped"].items():
        out.append(f"skipped {key}: {reason}")
    return "\n".join(out)


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (what ``docs/performance.md`` shows)."""
    lines = ["| id | case | ours | baseline | ours/base, median [IQR] | target | met |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        if "ours_count" in row:
            ours = f"{row['ours_count']} objects"
            base = "-" if row["base_count"] is None else f"{row['base_count']} objects"
            ratio = "-"
        else:
            ours, base = _fmt_time(row["ours_s"]), _fmt_time(row["base_s"])
            ratio = "-" if row["ratio"] is None else (
                f"{row['ratio']:.3g}x [{row['ratio_q25']:.3g}-{row['ratio_q75']:.3g}]"
                + (f" ({row['speedup']:.3g}x faster)" if row["ratio"] < 1 else ""))
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['id']} | {row['name']} | {ours} ({row['ours']}) | {base} "
                     f"({row['baseline'] or '-'}) | {ratio} | {row['target'] or '-'} | {met} |")
    return "\n".join(lines)
