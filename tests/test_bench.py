"""The benchmark harness and the generated API page: structure only, never timings."""

import json

import pytest
import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.bench as bench
from nytorch_func.bench import Case, Side, Target, measure
from nytorch_func.bench.__main__ import main
from nytorch_func.bench._apidoc import DEFAULT_PATH, render
from nytorch_func.bench._cases import gc_workload, mlp, nytorch_available, raw_snes_step

ROW_KEYS = {"id", "group", "name", "ours", "baseline", "repeats", "ours_s", "base_s", "ratio",
            "ratio_q25", "ratio_q75", "ratio_iqr", "speedup", "target", "met"}


def _tiny_case(target=None):
    x = [torch.randn(3)]
    return Case("T", "T", "tiny", Side("ours", lambda: lambda: torch._foreach_mul(x, 2.0)),
                Side("base", lambda: lambda: torch._foreach_mul(x, 3.0)), target)


def test_measure_reports_ratio_and_spread():
    row = measure(_tiny_case(Target("max_ratio", 1e9)), repeats=3, min_time=1e-4)
    assert ROW_KEYS <= set(row)
    assert row["repeats"] == 3 and row["ours_number"] >= 1 and row["base_number"] >= 1
    assert row["ratio_q25"] <= row["ratio"] <= row["ratio_q75"]
    assert row["ratio_iqr"] == pytest.approx(row["ratio_q75"] - row["ratio_q25"])
    assert row["speedup"] == pytest.approx(1 / row["ratio"])
    assert row["target"] == "<= 1e+09x" and row["met"] is True


def test_targets_judge_both_directions():
    assert Target("max_ratio", 1.5).met(1.4) and not Target("max_ratio", 1.5).met(1.6)
    assert Target("min_speedup", 10).met(0.05) and not Target("min_speedup", 10).met(0.2)


def test_non_repeatable_side_gets_a_fresh_setup_every_sample():
    calls = []

    def setup():
        calls.append(0)
        index = len(calls) - 1

        def call():
            calls[index] += 1

        return call

    case = Case("T", "T", "fresh", Side("ours", lambda: lambda: None),
                Side("stateful", setup, per_call=4, repeatable=False))
    row = measure(case, repeats=3, min_time=1e-4)
    assert len(calls) >= 3 and set(calls) == {1}, calls  # each prepared state used exactly once
    assert row["base_number"] == 1 and row["ratio"] is not None


def test_a_row_without_baseline_has_no_ratio():
    row = measure(Case("T", "T", "alone", Side("ours", lambda: lambda: None)), repeats=2,
                  min_time=1e-4)
    assert row["ratio"] is None and row["met"] is None and row["ours_s"] >= 0


def test_run_p1_report_structure():
    report = bench.run(only=["p1"], repeats=2, min_time=1e-4)
    ids = [row["id"] for row in report["rows"]]
    assert ids[0] == "P1" and report["rows"][0]["baseline"] == "raw torch._foreach"
    if nytorch_available():
        assert ids == ["P1", "P1-nytorch", "P1-nytorch-lerp", "P1-nytorch-grad"]
    else:
        assert ids == ["P1"] and "nytorch" in report["skipped"]["P1-nytorch"]
    assert report["machine"]["torch"] == torch.__version__
    json.dumps(report)  # JSON-ready
    table = bench.format_table(report)
    assert table.splitlines()[0].split()[:3] == ["id", "case", "ours"]
    assert "P1" in table and "<= 1.5x" in table
    md = bench.format_markdown(report).splitlines()
    assert md[0].startswith("| id |") and md[2].startswith("| P1 |") and len(md) == 2 + len(ids)


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="unknown benchmark 'P9'"):
        bench.run(only=["P9"])


def test_skipped_groups_say_why():
    report = bench.run(only=["io", "P7"], repeats=1, min_time=1e-4)
    if not hasattr(nf, "save"):
        assert "nf.save" in report["skipped"]["io"]
    try:
        import nytorch_func.evolution  # noqa: F401
    except ImportError:
        assert "evolution" in report["skipped"]["P7"]


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["--only", "P6", "--json", str(out), "--repeats", "1"])
    report = json.loads(out.read_text())
    assert code == 0 and report["rows"][0]["id"] == "P6"
    assert report["rows"][0]["ours_count"] == 0
    assert "P6" in capsys.readouterr().out


def test_gc_workload_ours_leaves_nothing_for_the_collector():
    assert gc_workload(lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3),
                                             nn.Linear(3, 2)), ours=True) == 0


def test_raw_snes_improves_fitness():
    g = torch.Generator().manual_seed(1)
    target = torch.tensor([1.0, -2.0, 0.5])

    def fitness(ps):
        return -((ps["x"] - target) ** 2).sum(1)

    state = {"mu": {"x": torch.zeros(3)}, "sigma": {"x": torch.ones(3)}}
    before = fitness({"x": state["mu"]["x"][None]}).item()
    for _ in range(60):
        state = raw_snes_step(state, fitness, n=16, generator=g)
    assert fitness({"x": state["mu"]["x"][None]}).item() > before / 10


def test_mlp_instances_stack_with_torch_func():
    params, _ = torch.func.stack_module_state([mlp((4, 3, 2)) for _ in range(3)])
    assert params["l0.weight"].shape == (3, 3, 4)


def test_api_page_lists_every_public_name():
    text = DEFAULT_PATH.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## `")]
    listed = {h[4:].split("(")[0].rstrip("`") for h in headings}
    missing = [name for name in nf.__all__ if name not in listed]
    assert not missing, (f"docs/api.md lacks {missing}: regenerate it with "
                         "python -m nytorch_func.bench._apidoc")


def test_api_page_is_generated_from_the_code():
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), (
        "docs/api.md is stale: run python -m nytorch_func.bench._apidoc")


def test_every_code_block_in_docs_is_a_doctest():
    import re

    docs = DEFAULT_PATH.parent
    bad = []
    for page in sorted(docs.glob("*.md")):
        for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", page.read_text(encoding="utf-8"),
                                      re.S):
            if lang in ("bash", "console", "shell", "text"):
                continue  # commands to type, not Python
            if ">>>" not in block:
                bad.append(f"{page.name}: {block.strip().splitlines()[0] if block.strip() else '(empty)'}")
    assert not bad, f"code blocks that pytest cannot run as doctests: {bad}"
