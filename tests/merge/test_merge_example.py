"""examples/evolve_merge.py runs small (--quick): it writes its plot and JSON and nothing else."""

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "evolve_merge.py"


@pytest.mark.filterwarnings("ignore::UserWarning")  # matplotlib font cache / tqdm on no tty
def test_evolve_merge_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("evolve_merge", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    results = module.main(["--quick", "--out", str(out), "--popsize", "8"])
    assert sorted(p.name for p in out.iterdir()) == ["evolve_merge.png", "results.json"]
    rows = results["rows"]
    assert {"linear", "task arithmetic", "TIES (density 0.2)", "DARE (density 0.5)",
            "evolved TIES (SNES)"} <= set(rows)
    assert all(0.0 <= a <= 1.0 for accs in rows.values() for a in accs)
    assert results["search"]["candidates"] == 4 * 8
    assert "| evolved TIES (SNES) |" in capsys.readouterr().out
