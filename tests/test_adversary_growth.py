"""Adversarial findings on growth (widen, deepen, insert_module, del_module renumbering).

Each test is a bug found from outside, kept as a strict xfail until it is fixed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nytorch_func as nf


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _deepen_runs_or_is_refused(p: nf.Particle, after: str, x: torch.Tensor) -> None:
    """deepen either refuses (typed, nothing committed) or commits a version that runs the
    function it ran before."""
    before = len(nf.history(p.species))
    try:
        q = nf.deepen(p, after)
    except nf.NytorchFuncError:
        assert len(nf.history(p.species)) == before
        return
    assert torch.allclose(nf.apply(q, x), nf.apply(p, x), atol=1e-6)


def test_deepen_after_a_width_changing_cell_is_refused_or_runs():
    p = nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.RNNCell(4, 6), nn.Linear(6, 1)))
    _deepen_runs_or_is_refused(p, "1", torch.randn(5, 3))


def test_deepen_after_a_transposed_conv_is_refused_or_runs():
    p = nf.from_module(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ConvTranspose2d(4, 2, 3)))
    _deepen_runs_or_is_refused(p, "1", torch.randn(1, 1, 6, 6))


def test_widen_method_of_the_wrong_type_is_a_type_error():
    p = nf.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(TypeError):
        nf.widen(p, "0", "2", 2, method=None)
