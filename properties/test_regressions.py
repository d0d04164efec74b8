"""Failing examples the property suite found, kept as explicit tests.

Each was a core bug (kept as a strict xfail until fixed); now each guards its fix.
"""

from __future__ import annotations

import pytest
import torch

import nytorch_func as nf


def _grown(p):
    """``p``'s species after one added parameter (p itself stays at its version)."""
    return nf.add_param(p.clone(), "extra", torch.nn.Parameter(torch.full((2,), -3.0)))


@pytest.mark.parametrize("op", [lambda p: -p, lambda p: 3.0 * p, lambda p: p ** 2,
                                lambda p: p / 2, abs])
def test_unary_and_scalar_ops_touch_first(op):
    p = nf.from_module(torch.nn.Linear(1, 1))
    _grown(p)
    assert torch.equal(nf.touch(op(p))["extra"].detach(), op(nf.touch(p))["extra"].detach())


def test_binary_op_on_two_stale_operands_touches_first():
    p = nf.from_module(torch.nn.Linear(1, 1))
    _grown(p)
    assert torch.equal(nf.touch(p + p)["extra"].detach(), (nf.touch(p) + nf.touch(p))["extra"].detach())


def test_population_survives_a_version_without_leaves():
    p = nf.from_module(torch.nn.Linear(1, 1, bias=False))
    pop = nf.stack([p.clone(), p.randn()])
    p = nf.del_param(p, "weight")  # version 1 has no leaves at all
    pop = nf.touch(pop)
    nf.add_param(p, "extra", torch.nn.Parameter(torch.zeros(())))
    assert nf.touch(pop).batch_shape == (2,)


def test_arithmetic_on_a_particle_without_leaves():
    p = nf.del_param(nf.from_module(torch.nn.Embedding(1, 1)), "weight")
    assert (p * 3.0).leaves == () and (p + p).leaves == () and (-p).leaves == ()


def test_particle_arithmetic_under_vmap():
    pop = nf.population(torch.nn.Linear(2, 1), 3)
    out = torch.func.vmap(lambda p: 2 * p)(pop)
    assert torch.equal(out["weight"], 2 * pop["weight"])
