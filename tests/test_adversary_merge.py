"""Adversarial findings on nytorch_func.merge.

Each test is a bug found from outside, kept as a strict xfail until it is fixed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import merge


def _setup():
    base = nf.from_module(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))).detach()
    models = nf.population(base, 3, generator=torch.Generator().manual_seed(0)).detach()
    return base, models


def test_dare_unknown_rescale_string_is_a_value_error():
    base, models = _setup()
    with pytest.raises(ValueError):
        merge.dare(base, models, density=0.5, rescale="bogus")
