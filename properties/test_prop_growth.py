"""Growth under generated models and event chains: ``nf.widen``, ``nf.deepen`` and
``nf.insert_module`` drawn by the ``nytorch_func.testing`` growth kinds on generated MLP and Conv
stacks (BatchNorm, LayerNorm, GroupNorm, pooling, a flatten), applied by a particle or by a
population, and checked on everything else of the species:

The stacks come in three layouts: one flat Sequential, each layer (with its norm and
activation) a Sequential of its own inside the outer one, and an OrderedDict Sequential whose
named children are followed by numbered ones. Checked on everything else of the species:

* every member keeps *its own* function (stale particles, populations, the initiator), in
  training and eval mode, to 1e-12 (float64) or 1e-5 (float32) of the output's scale (or ten
  times the model's own rounding error where it magnifies rounding more, see ``_run.kept``);
* touching a population equals touching each member, bit for bit;
* Adam's moments carried with ``nf.touch_tree(state, fill="zeros")`` keep every old coordinate
  bit for bit and are zero on every new one; step counts are kept per parameter id;
* ``nf.save`` -> ``nf.load`` -> more growth -> ``nf.touch`` gives what the live species gives;
* named children keep their names, numbered ones are keyed by their place, and
  ``nft.Reference`` follows the same rule on its own.

Examples are capped below the ci profile's 200 so that this file adds seconds, not minutes, to
the ci run (docs/testing.md has the timings).
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict

import optree
import pytest
import torch
from hypothesis import Phase, event, find, given, settings, strategies as st
from torch import nn

import nytorch_func as nf
import nytorch_func.testing as nft
from nytorch_func.optim import Adam
from nytorch_func.testing._run import kept

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


LAYOUTS = ("flat", "nested", "named")


@st.composite
def stacks(draw, layouts=LAYOUTS):
    """A readable description of a growable Sequential: ``("mlp", in, layers, out, layout)``
    with layers ``(width, norm, activation)``, or ``("conv", channels, layers, out, layout)``
    with layers ``(channels, kernel, norm, activation, pool)`` and a flatten and Linear head.
    ``layout``: ``"flat"`` (one Sequential), ``"nested"`` (each layer with its norm and
    activation a Sequential of its own, the head too) or ``"named"`` (an OrderedDict
    Sequential, ``fc1``/``bn1``/``act1``..., with the head appended, so numbered after names)."""
    acts = st.sampled_from(sorted(_ACTS))
    layout = draw(st.sampled_from(layouts))
    if draw(st.booleans()):
        layers = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
        return ("mlp", draw(st.integers(1, 3)),
                tuple((w, _norm(draw, w, False), draw(acts)) for w in layers),
                draw(st.integers(1, 2)), layout)
    layers, size = [], 4
    for c in draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)):
        pool = size >= 2 and draw(st.booleans())
        size //= 2 if pool else 1
        layers.append((c, draw(st.sampled_from((1, 3))), _norm(draw, c, True), draw(acts), pool))
    return ("conv", draw(st.integers(1, 2)), tuple(layers), draw(st.integers(1, 2)), layout)


def build(stack, dtype) -> tuple[nn.Module, torch.Tensor]:
    """The Sequential a :func:`stacks` description names, and an input batch for it."""
    kind, first, layers, out, layout = stack
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        blocks: list[list[tuple[str, nn.Module]]] = []
        prev = first
        if kind == "mlp":
            for i, (width, norm, act) in enumerate(layers, 1):
                blocks.append([(f"fc{i}", nn.Linear(prev, width)),
                               *_norm_module(norm, width, nn.BatchNorm1d, i),
                               (f"act{i}", _ACTS[act]())])
                prev = width
            head = [("head", nn.Linear(prev, out))]
            x = torch.randn(4, first)
        else:
            size = 4
            for i, (channels, k, norm, act, pool) in enumerate(layers, 1):
                blocks.append([(f"conv{i}", nn.Conv2d(prev, channels, k, padding=k // 2)),
                               *_norm_module(norm, channels, nn.BatchNorm2d, i),
                               (f"act{i}", _ACTS[act]())])
                if pool:
                    blocks[-1].append((f"pool{i}", nn.MaxPool2d(2)))
                    size //= 2
                prev = channels
            head = [("flatten", nn.Flatten()), ("head", nn.Linear(prev * size * size, out))]
            x = torch.randn(3, first, 4, 4)
        if layout == "nested":
            seq = nn.Sequential(*(nn.Sequential(*(m for _, m in b)) for b in [*blocks, head]))
        elif layout == "named":
            seq = nn.Sequential(OrderedDict(item for b in blocks for item in b))
            for _, m in head:
                seq.append(m)  # keyed by its place: "4" after "fc1", "bn1", ...
        else:
            seq = nn.Sequential(*(m for b in [*blocks, head] for _, m in b))
    return seq.to(dtype), x.to(dtype)


def _norm_module(norm, width: int, batchnorm: type, i: int) -> list[tuple[str, nn.Module]]:
    if norm is None:
        return []
    if norm == "bn":
        return [(f"bn{i}", batchnorm(width))]
    if norm == "ln":
        return [(f"ln{i}", nn.LayerNorm(width))]
    return [(f"gn{i}", nn.GroupNorm(norm[1], width))]


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
    for edit in chain:  # --hypothesis-show-statistics shows what was drawn
        event(f"{stack[0]} {stack[-1]}: {edit.kind} {dict(edit.kwargs).get('method', '')}")
    return x, initiator, r, pop, chain


def _grow(initiator: nf.Particle, chain) -> tuple[nf.Particle, list[nf.Particle]]:
    steps = [initiator]
    for edit in chain:
        steps.append(edit.apply(steps[-1]))
    return steps[-1], steps


@settings(max_examples=_examples(100), deadline=None)
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


@settings(max_examples=_examples(60), deadline=None)
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


@settings(max_examples=_examples(60), deadline=None)
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
            nonzero = new[new != 0]  # the tags are distinct and nonzero: old coordinates
            assert torch.equal(nonzero, old.reshape(-1)), (name, key, chain)  # bit for bit
    head = nf.touch(owner)  # and training goes on at the new sizes
    stepped, after = opt.step(head, head.randn(generator=torch.Generator().manual_seed(2)),
                              carried)
    assert [t.shape for t in stepped.leaves] == [t.shape for t in head.leaves]
    for pid in nf.param_ids(head).values():  # old parameters count on, inserted ones start
        assert after.step[pid] == state.step.get(pid, 0) + 1, (pid, chain)


@settings(max_examples=_examples(50), deadline=None)
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


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_growth_kind_is_drawn_on_every_layout(kind, layout):
    """Each growth kind has a site the forward pass accepts on a stack of each layout (guards
    against a kind never drawn, e.g. sites that assume numbered keys or one flat Sequential)."""
    stack = ("mlp", 2, ((3, "bn", "relu"), (3, None, "relu")), 2, layout) if kind == "mlp" \
        else ("conv", 1, ((2, 3, "bn", "relu", True), (2, 1, None, "relu", False)), 2, layout)
    module, x = build(stack, torch.float64)
    p = nf.from_module(module)
    for growth in nft.GROWTH_KINDS:
        edit = find(nft.events(p, kinds=(growth,), example_input=x), lambda e: True,
                    settings=settings(database=None, max_examples=5, phases=[Phase.generate]))
        assert_same_function(p, edit.apply(p), x, False, f"{edit!r} on {stack}")


def _keys(p: nf.Particle, container: str = "") -> list[str]:
    return list(p.schema.module_at(container)._modules)


@settings(max_examples=_examples(60), deadline=None)
@given(stacks(("named",)), _seeds, st.data())
def test_named_children_keep_their_names_and_the_reference_follows(stack, seed, data):
    """On an OrderedDict Sequential with numbered children after the named ones, growth,
    deletions and replaced blocks keep the names of named children, key numbered (and inserted)
    ones by their place, keep parameter ids, and nft.Reference (a plain dict of tensors that
    follows the same rule on its own) agrees with the initiator and a stale recipient."""
    module, x = build(stack, torch.float64)
    p = nft.random_particle(nf.from_module(module), seed)
    r = nft.random_particle(p, seed + 1)
    names = {k for k in _keys(p) if not k.isdigit()}
    chain = data.draw(nft.event_chains(p, 3, min_size=1, example_input=x, kinds=(
        *nft.GROWTH_KINDS, "del_module", "replace_module")), label="chain")
    ref_p, ref_r = nft.Reference.of(p), nft.Reference.of(r)
    for edit in chain:
        event(f"{edit.kind}{'' if '.' in str(edit.path) or str(edit.path).isdigit() else ' named'}")
        before = p
        p = edit.apply(p)
        schemas = (before.schema, p.schema)
        ref_p, ref_r = (ref_p.event(edit, schemas=schemas),
                        ref_r.event(edit, initiator=ref_p, schemas=schemas))
        ref_p.check(p)
        ref_r.check(r)
        keys = _keys(p)
        assert [k for k in keys if k.isdigit()] == \
            [str(i) for i, k in enumerate(keys) if k.isdigit()], (keys, chain)
        assert {k for k in keys if not k.isdigit()} <= names, (keys, chain)
        plain = nf.to_module(p)
        for k in keys:  # an ordinary Sequential: names by attribute, numbers by index
            child = getattr(plain, k)
            assert child is plain[keys.index(k)], (k, keys)
        nf.apply(nf.touch(r), x)  # the stale recipient still runs at every version
