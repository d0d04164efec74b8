"""The README demo (``python -m nytorch_func.demo``): a population trained, mixed and widened
mid-run with ``nf.widen``; every member keeps its accuracy through the growth."""

from __future__ import annotations

import pytest
import torch

import nytorch_func as nf

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from nytorch_func import demo  # noqa: E402


def test_demo_widens_every_member_keeping_its_accuracy(tmp_path):
    r = demo.run(members=4, steps=20, mix_every=5, progress=False, hidden=16, grow_by=8)
    assert r.grown_at == 10 and r.widths == (16, 24)
    assert len(r.before) == len(r.after) == 4
    assert r.before == r.after  # the function is preserved, so is every member's accuracy
    assert 0 < r.max_change < 1e-4  # float32 net2net: the consumer columns are divided
    # the population and its Adam state are at the grown version, and the ids are kept
    pop, state = r.population, r.state
    assert pop["body.0.weight"].shape == (4, 24, 64) and pop["head.weight"].shape == (4, 10, 24)
    assert state.m.schema is pop.schema and state.v["head.weight"].shape == (4, 10, 24)
    assert set(state.step.values()) == {20}  # per-parameter step counts, kept by growth
    fresh = nf.from_module(demo.DigitsNet(16))
    assert nf.param_ids(pop) == nf.param_ids(fresh)  # the same four ids: none was replaced
    assert max(r.accuracy) > 0.5 and r.history[-1][0] == 19
    demo.plot(r, str(tmp_path / "acc.png"))
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_demo_command_prints_accuracy_before_and_after_growing(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        r = demo.main(["--members", "3", "--steps", "10", "--hidden", "6", "--grow-by", "6",
                       "--quiet", "--plot", str(tmp_path / "p.png")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    before = next(line for line in out.splitlines() if "just before growing" in line)
    after = next(line for line in out.splitlines() if "just after growing" in line)
    assert before.split(":")[1].split() == after.split(":")[1].split() == [
        f"{a:.3f}" for a in r.before]
    assert "hidden layer widened 6\u219212 at step 5" in out
    assert "kept its function" in out and (tmp_path / "p.png").exists()
