"""The facade benchmark group: structure only, never timings (ratios live in docs)."""

import nytorch_func.bench as bench
from nytorch_func.bench._cases import nytorch_available
from nytorch_func.bench._facade_cases import EXPRESSIONS


def test_the_facade_group_compares_with_nytorch_or_says_why_not():
    report = bench.run(only=["facade"], repeats=1, min_time=1e-4)
    ids = [row["id"] for row in report["rows"]]
    if not nytorch_available():
        assert ids == [] and set(report["skipped"]) == set(EXPRESSIONS)
        assert all("nytorch" in why for why in report["skipped"].values())
        return
    assert ids == list(EXPRESSIONS)
    rows = {row["id"]: row for row in report["rows"]}
    assert rows["facade-add"]["target"] == ">= 5x faster"
    assert rows["facade-add"]["baseline"] == "nytorch 1.1.0 NytoModule"
    assert all(row["ratio"] is not None and row["group"] == "facade" for row in rows.values())
