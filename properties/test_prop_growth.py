"""Growth under generated models and event chains: ``nf.widen``, ``nf.deepen`` and
``nf.insert_module`` drawn by the ``nytorch_func.testing`` growth kinds on generated MLP and Conv
stacks (BatchNorm, LayerNorm, GroupNorm, pooling, a flatten), applied by a particle or by a
population, and checked on everything else of the species:

* every member keeps *its own* function (stale particles, populations, the initiator), in
  training and eval mode, to 1e-12 (float64) or 1e-5 (float32) of the output's scale;
* touching a population equals touching each member, bit for bit;
* Adam's moments carried with ``nf.touch_tree(state, fill="zeros")`` keep every old coordinate
  bit for bit and are zero on every new one; step counts are kept;
* ``nf.save`` -> ``nf.load`` -> more growth -> ``nf.touch`` gives what the live species gives.

Examples are capped below the profile's count so that this file adds seconds, not minutes, to
the ci run (docs/testing.md has the timings).
"""

from __future__ import annotations

import os
import tempfile

import optree
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import nytorch_func as nf
import nytorch_func.testing as nft
from nytorch_func.optim import Adam
from nytorch_func.testing._run import kept
from nytorch_func.testing._view import View

_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
         "relu6": nn.ReLU6, "identity": nn.Identity}
_seeds = st.integers(0, 2**16)


def _examples(cap: int) -> int:
    return min(settings.default.max_examples, cap)


def _norm(draw, width: int, conv: bool):
    """A normalisation over the layer's units (a GroupNorm of one unit per group too: it
    outputs its bias plus rounding noise, which a BatchNorm in training mode magnifies)."""
    kind = draw(st.sampled_from((None, "bn", "gn") if conv else (None, "bn", "ln", "gn")))
    if kind == "gn":
        return ("gn", draw(st.sampled_from([g for g in range(1, width + 1) if width % g == 0])))
    return kind


@st.composite
def stacks(draw):
    """A readable description of a growable Sequential: ``("mlp", in, layers, out)`` with
    layers ``(width, norm, activation)``, or ``("conv", channels, layers, out)`` with layers
    ``(channels, kernel, norm, activation, pool)`` and a flatten and Linear head."""
    acts = st.sampled_from(sorted(_ACTS))
    if draw(st.booleans()):
        layers = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
        return ("mlp", draw(st.integers(1, 3)),
                tuple((w, _norm(draw, w, False), draw(acts)) for w in layers),
                draw(st.integers(1, 2)))
    layers, size = [], 4
    for c in draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)):
        pool = size >= 2 and draw(st.booleans())
        size //= 2 if pool else 1
        layers.append((c, draw(st.sampled_from((1, 3))), _norm(draw, c, True), draw(acts), pool))
    return ("conv", draw(st.integers(1, 2)), tuple(layers), draw(st.integers(1, 2)))


def build(stack, dtype) -> tuple[nn.Module, torch.Tensor]:
    """The Sequential a :func:`stacks` description names, and an input batch for it."""
    kind, first, layers, out = stack
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        modules: list[nn.Module] = []
        prev = first
        if kind == "mlp":
            for width, norm, act in layers:
                modules.append(nn.Linear(prev, width))
                modules += _norm_module(norm, width, nn.BatchNorm1d)
                modules.append(_ACTS[act]())
                prev = width
            modules.append(nn.Linear(prev, out))
            x = torch.randn(4, first)
        else:
            size = 4
            for channels, k, norm, act, pool in layers:
                modules.append(nn.Conv2d(prev, channels, k, padding=k // 2))
                modules += _norm_module(norm, channels, nn.BatchNorm2d)
                modules.append(_ACTS[act]())
                if pool:
                    modules.append(nn.MaxPool2d(2))
                    size //= 2
                prev = channels
            modules += [nn.Flatten(), nn.Linear(prev * size * size, out)]
            x = torch.randn(3, first, 4, 4)
    return nn.Sequential(*modules).to(dtype), x.to(dtype)


def _norm_module(norm, width: int, batchnorm: type) -> list[nn.Module]:
    if norm is None:
        return []
    if norm == "bn":
        return [batchnorm(width)]
    if norm == "ln":
        return [nn.LayerNorm(width)]
    return [nn.GroupNorm(norm[1], width)]


def outputs(p: nf.Particle, x: torch.Tensor, training: bool) -> torch.Tensor:
    """Every member's output, member by member (the reference for any batched path)."""
    p = p.train(training)
    with torch.no_grad():
        if p.batch_shape:
            return torch.stack([nf.apply(m, x) for m in nf.unstack(p)])
        return nf.apply(p, x)


def twin(p: nf.Particle, x: torch.Tensor, training: bool, dtype: torch.dtype) -> torch.Tensor:
    """:func:`outputs` computed in ``dtype`` by plain torch copies (how much the model itself
    magnifies rounding)."""
    members = nf.unstack(p) if p.batch_shape else [p]
    with torch.no_grad():
        out = [nf.to_module(m).to(dtype).train(training)(x.to(dtype)) for m in members]
    return torch.stack(out) if p.batch_shape else out[0]


def assert_same_function(before: nf.Particle, after: nf.Particle, x: torch.Tensor,
                         training: bool, what: str, want: torch.Tensor | None = None) -> None:
    """``after`` computes what ``before`` did, member by member, up to rounding: 1e-12 of the
    output scale in float64, 1e-5 in float32, or ten times the model's own rounding error where
    it magnifies rounding more than that (``nytorch_func.testing._run.kept``)."""
    want = outputs(before, x, training) if want is None else want
    kept(outputs(after, x, training), want, what, lambda d: twin(before, x, training, d))


@st.composite
def scenarios(draw, max_events: int = 3):
    """A model, an initiator (a particle or a population) and a chain of growth events for it,
    plus particles and a population that are *not* the initiator."""
    stack = draw(stacks(), label="stack")
    dtype = draw(st.sampled_from((torch.float64, torch.float32)), label="dtype")
    module, x = build(stack, dtype)
    p = nft.random_particle(nf.from_module(module), draw(_seeds, label="seed"))
    r = nft.random_particle(p, draw(_seeds, label="recipient seed"))
    pop = nft.random_population(p, draw(st.integers(1, 3), label="members"),
                                draw(_seeds, label="population seed"))
    by_population = draw(st.booleans(), label="a population initiates")
    initiator = nft.random_population(p, 2, seed=5) if by_population else p
    chain = draw(nft.event_chains(initiator, max_events, min_size=1, kinds=nft.GROWTH_KINDS,
                                  example_input=x), label="growth")
    return x, initiator, r, pop, chain


def _grow(initiator: nf.Particle, chain) -> tuple[nf.Particle, list[nf.Particle]]:
    steps = [initiator]
    for edit in chain:
        steps.append(edit.apply(steps[-1]))
    return steps[-1], steps


@settings(max_examples=_examples(40), deadline=None)
@given(scenarios())
def test_growth_keeps_every_members_own_function(scenario):
    x, initiator, r, pop, chain = scenario
    others = {"initiator": initiator, "stale particle": r, "population": pop}
    grown, _ = _grow(initiator, chain)
    for mode in (True, False):
        assert_same_function(initiator, grown, x, mode,
                             f"the initiator after {chain} (training={mode})")
        for name, q in others.items():
            assert_same_function(q, nf.touch(q), x, mode,
                                 f"the {name} after {chain} (training={mode})")


@settings(max_examples=_examples(30), deadline=None)
@given(scenarios())
def test_population_touch_equals_memberwise_touch_across_growth(scenario):
    _, initiator, _, pop, chain = scenario
    members = nf.unstack(pop)
    _grow(initiator, chain)
    touched = nf.touch(pop)
    assert touched.batch_shape == pop.batch_shape
    for i, member in enumerate(members):
        one = nf.touch(member)
        for key in one.schema.by_path:
            assert torch.equal(touched[key][i], one[key]), (i, key, chain)


def _tagged(p: nf.Particle, start: float) -> nf.Particle:
    """``p`` with every floating leaf holding distinct nonzero values (start, start + 1, ...),
    exact in float32: a moment can then be followed to wherever growth puts it."""
    def tag(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        n = t.numel()
        return (torch.arange(n, dtype=torch.float64) + start).reshape(t.shape).to(t.dtype)
    return optree.tree_map(tag, p)


@settings(max_examples=_examples(30), deadline=None)
@given(scenarios(), st.booleans())
def test_adam_moments_are_kept_on_old_coordinates_and_zero_on_new_ones(scenario, stale):
    """The state of the grown particle itself, or of a population that did not grow (stale)."""
    _, initiator, _, pop, chain = scenario
    opt = Adam(lr=1e-2)
    owner = pop if stale else initiator
    state = opt.init(owner)
    owner, state = opt.step(owner, owner.randn(generator=torch.Generator().manual_seed(1)),
                            state)
    state = state._replace(m=_tagged(owner, 1.0), v=_tagged(owner, 0.5))
    _grow(initiator if stale else owner, chain)
    carried = nf.touch_tree(state, fill="zeros")
    assert carried.step == state.step, "step counts must be kept"
    key_of = {pid: key for key, pid in nf.param_ids(owner).items()}
    for key, pid in nf.param_ids(carried.m).items():
        for name in ("m", "v"):
            new = getattr(carried, name)[key]
            if pid not in key_of:  # a parameter the growth inserted: fresh moments
                assert not new.any(), (name, key, chain)
                continue
            old = getattr(state, name)[key_of[pid]]
            kept = new[new != 0]
            assert torch.equal(kept, old.reshape(-1)), (name, key, chain)  # bit for bit, in order
            assert new.numel() - kept.numel() == new.numel() - old.numel(), (name, key, chain)
    head = nf.touch(owner)  # and training goes on at the new sizes
    stepped, _ = opt.step(head, head.randn(generator=torch.Generator().manual_seed(2)), carried)
    assert [t.shape for t in stepped.leaves] == [t.shape for t in head.leaves]


@settings(max_examples=_examples(25), deadline=None)
@given(scenarios(max_events=4), st.data())
def test_save_load_then_touch_across_growth(scenario, data):
    x, initiator, _, pop, chain = scenario
    k = data.draw(st.integers(0, len(chain)), label="events before saving")
    m = _tagged(pop, 1.0)
    live, _ = _grow(initiator, chain[:k])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "grow.safetensors")
        nf.save(path, {"pop": pop, "m": m, "head": live})
        back = nf.load(path)
    assert back["pop"].version == 0 and back["head"].version == k
    for edit in chain[k:]:  # the rest of the growth, on the live and on the loaded species
        live = edit.apply(live)
        back["head"] = edit.apply(back["head"])
    for a, b in ((nf.touch(pop), nf.touch(back["pop"])),
                 (nf.touch(m, fill="zeros"), nf.touch(back["m"], fill="zeros"))):
        assert list(a.schema.by_path) == list(b.schema.by_path)
        for key in a.schema.by_path:
            assert torch.equal(a[key], b[key]), (key, chain, k)
    for mode in (True, False):
        assert_same_function(pop, nf.touch(back["pop"]), x, mode,
                             f"the loaded population after {chain} (saved after {k})")


def test_the_stacks_are_growable_everywhere():
    """Every growth kind applies to some generated stack (guards against a kind never drawn)."""
    from hypothesis import find

    for kind in nft.GROWTH_KINDS:
        def applies(stack, kind=kind):
            p = nf.from_module(build(stack, torch.float64)[0])
            return bool(list(nft.KINDS[kind].targets(View(p))))
        find(stacks(), applies, settings=settings(database=None, max_examples=200))
