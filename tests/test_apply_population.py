"""nf.apply on a population: a clear error that says how to run every member (issue 16.8)."""

import pytest
import torch
from torch import nn

import nytorch_func as nf


@pytest.mark.parametrize("fn", [nf.apply, nf.apply_with_state])
def test_forgetting_vmap_says_what_to_do(fn):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    pop = nf.population(net, 5)
    x = torch.randn(8, 3)
    with pytest.raises(nf.SchemaError, match=r"population of batch shape \(5,\).*"
                       r"torch\.func\.vmap\(nf\.apply.*in_dims=\(0, None\)\).*nf\.vmap_apply"):
        fn(pop, x)
    out = torch.func.vmap(fn, in_dims=(0, None))(pop, x)  # what the message says works
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (5, 8, 2)
    assert fn(pop[2], x) is not None


def test_populations_of_modules_without_tensors_and_nested_batches_are_refused():
    with pytest.raises(nf.SchemaError, match="population"):
        nf.apply(nf.population(nn.ReLU(), 3), torch.randn(2))
    pop = nf.stack([nf.population(nn.Linear(2, 2), 3)] * 2)  # batch shape (2, 3)
    with pytest.raises(nf.SchemaError, match=r"\(2, 3\)"):
        nf.apply(pop, torch.randn(4, 2))
    assert nf.vmap_apply(pop, torch.randn(4, 2)).shape == (2, 3, 4, 2)
    assert nf.apply(nf.from_module(nn.ReLU()), -torch.ones(2)).sum() == 0
