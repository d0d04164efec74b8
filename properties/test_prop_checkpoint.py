"""Checkpoint round trips over generated modules, event chains and populations.

``nf.save`` -> ``nf.load`` must be the identity on everything a particle carries: versions,
specs, configs, buffer policies and reset values, values, batch shapes and the skeleton's plain
attributes (enum members, torch functions). The comparison is the law suite's own
(``checkpoint_round_trip``).
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, given, settings, strategies as st

import nytorch_func as nf
import nytorch_func.testing as nft
from nytorch_func.testing._run import same_particle

from _model import apply_chain


def _round_trip(tmp_path, tree):
    path = tmp_path / "ckpt.safetensors"
    nf.save(path, tree)
    return nf.load(path)


def _check(tmp_path, saved):
    back = _round_trip(tmp_path, saved)
    for name, x in saved.items():
        same_particle(x, back[name], f"loaded {name!r}")
        same_particle(nf.touch(x), nf.touch(back[name]), f"touched {name!r}")
    assert len({id(x.species) for x in back.values()}) == 1


@given(p=nft.particles(modules=nft.modules(attributes=False)), data=st.data())
def test_checkpoint_round_trip(tmp_path_factory, p, data):
    """Initiator at the head, a stale recipient and a stale population, after any chain."""
    r = nft.random_particle(p, seed=1)
    pop = nft.random_population(p, data.draw(st.integers(1, 3), label="members"), seed=2)
    q, _ = apply_chain(p, data.draw(nft.event_chains(p, 3), label="chain"))
    _check(tmp_path_factory.mktemp("ckpt"), {"q": q, "r": r, "pop": pop})


# Regression guards for checkpoint bugs (issue 14 item 4): generation only, no shrinking.
_NO_SHRINK = (Phase.explicit, Phase.generate)


def _has_attributes(m) -> bool:
    return any(k.startswith("nft_") for mod in m.modules() for k in vars(mod))


@settings(derandomize=True, database=None, max_examples=10, phases=_NO_SHRINK)
@given(m=nft.modules().filter(_has_attributes))
def test_checkpoint_keeps_enum_and_function_attributes(tmp_path_factory, m):
    p = nft.random_particle(nf.from_module(m), seed=0)
    _check(tmp_path_factory.mktemp("attrs"), {"p": p})


@settings(derandomize=True, database=None, max_examples=10, phases=_NO_SHRINK)
@given(p=nft.particles(modules=nft.modules(attributes=False)), n=st.integers(2, 4))
def test_checkpoint_keeps_all_shared_populations(tmp_path_factory, p, n):
    if not p.schema.params:
        p = nf.add_param(p, "w", nft.seeded_param((2,)))
    shared = nf.configure(p, "", operational=False, clone=False)
    for spec in shared.schema.buffers:
        if spec.state:
            shared = nf.del_buffer(shared, spec.key)
    pop = nf.population(shared, n)
    assert not pop.leaves and pop.batch_shape == (n,)
    _check(tmp_path_factory.mktemp("shared"), {"pop": pop})
