"""``python -m nytorch_func.bench [--quick] [--json out.json] [--only P1,P3]``."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from . import GROUPS, format_markdown, format_table, run

    parser = argparse.ArgumentParser(
        prog="python -m nytorch_func.bench",
        description="nytorch_func benchmarks: each row is a ratio against a baseline timed in the "
                    "same run, interleaved; median and IQR over the pairs.")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples (~1-2 min)")
    parser.add_argument("--json", metavar="PATH", default="bench.json",
                        help="where to write the report (default: bench.json; '-' for none)")
    parser.add_argument("--only", metavar="IDS", default=None,
                        help=f"comma-separated groups: {','.join(GROUPS)}")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved pairs per row")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = None if args.only is None else [s for s in args.only.split(",") if s.strip()]

    def progress(row: dict) -> None:
        if row.get("ratio") is not None:
            done = f"{row['ratio']:.3g}x"
        elif "ours_count" in row:
            done = f"{row['ours_count']} vs {row['base_count']} objects"
        else:
            done = f"{row['ours_s'] * 1e6:.3g} us"
        print(f"  {row['id']}: {done}", file=sys.stderr, flush=True)

    try:
        report = run(only, quick=args.quick, repeats=args.repeats, progress=progress)
    except ValueError as err:
        parser.error(str(err))
    print(format_table(report))
    if args.markdown:
        print("\n" + format_markdown(report))
    if args.json != "-":
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    missed = [row["id"] for row in report["rows"] if row["met"] is False]
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
