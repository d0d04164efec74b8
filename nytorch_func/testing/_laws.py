"""The migration laws: each a function of one :class:`Run` (a model, particles, an event chain).

Every law raises ``AssertionError`` (or lets a core error through) when it is broken, with the
line of code that replays the failing check attached (``_run.shows``).
"""

from __future__ import annotations

import os
import tempfile
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optree
import torch

import nytorch_func as nf

from ._edit import Edit
from ._kinds import GROWTH_KINDS, KINDS
from ._particles import assert_leaves_match_schema, assert_same_values, random_particle
from ._reference import OPS, UNARY, Reference
from ._roles import roles
from ._run import (Run, close, expect, kept, leaf_state, module_classes, outputs, same_particle,
                   shows, twin_output, unchanged)

__all__ = ["LAWS"]


def leaves_match_schema(run: Run) -> None:
    """Every leaf agrees with its schema (dtype, per-member shape, device) everywhere."""
    for k, p in enumerate(run.steps):
        with shows(f"nft.assert_leaves_match_schema(p{k})"):
            assert_leaves_match_schema(p)
    for k in range(run.n + 1):
        for name, x in (("r", run.r), ("pop", run.pop)):
            with shows(f"nft.assert_leaves_match_schema(nf.touch({name}, {k}))"):
                assert_leaves_match_schema(nf.touch(x, k))


def touch_pure(run: Run) -> None:
    """touch never changes its input, the species or any version."""
    species = run.head.species
    n, head = len(species), species.head
    before = {name: (x.schema, leaf_state(x)) for name, x in (("r", run.r), ("pop", run.pop))}
    for name, x in (("r", run.r), ("pop", run.pop)):
        with shows(f"nf.touch({name}); assert {name}.version == 0  # and its leaves unchanged"):
            for k in range(run.n + 1):
                nf.touch(x, k)
            nf.touch(x)
            schema, leaves = before[name]
            if x.schema is not schema:
                raise AssertionError(f"touch changed {name}'s schema")
            unchanged(x, leaves, name)
            if len(species) != n or species.head is not head:
                raise AssertionError("touch changed the species' chain")


def touch_idempotent(run: Run) -> None:
    """touch(touch(x)) is touch(x); a particle at the head is returned as it is."""
    with shows(f"assert nf.touch(p{run.n}) is p{run.n}"):
        assert nf.touch(run.head) is run.head, "touch of a particle at the head made a new one"
    for name, x in (("r", run.r), ("pop", run.pop)):
        once = nf.touch(x)
        with shows(f"t = nf.touch({name}); assert nf.touch(t) is t"):
            assert once.schema is run.head.schema, f"touch({name}) did not reach the head"
            assert nf.touch(once) is once, f"touching touch({name}) again made a new particle"
        with shows(f"nft.assert_same_values(nf.touch({name}), nf.touch({name}))"):
            assert_same_values(nf.touch(x), once)


def touch_composable(run: Run) -> None:
    """touch(touch(x, v1), v2) == touch(x, v2) for every v1 <= v2."""
    for v1 in range(run.n + 1):
        for v2 in range(v1, run.n + 1):
            with shows(f"nft.assert_same_values(nf.touch(nf.touch(r, {v1}), {v2}), "
                       f"nf.touch(r, {v2}))"):
                assert_same_values(nf.touch(nf.touch(run.r, v1), v2), nf.touch(run.r, v2))
        with shows(f"nft.assert_same_values(nf.touch(nf.touch(pop, {v1})), nf.touch(pop))"):
            assert_same_values(nf.touch(nf.touch(run.pop, v1)), nf.touch(run.pop))


def initiator_recipient(run: Run) -> None:
    """Per event: the initiator holds added objects, each recipient an equal clone in its own
    storage (buffers: the object itself); deletions, configs, policies and dtypes reach both."""
    for k, edit in enumerate(run.edits):
        after, r_k = run.steps[k + 1], nf.touch(run.r, k)
        r_after = nf.touch(r_k, k + 1)
        pop_after = nf.touch(run.pop, k + 1)
        with shows(f"r{k + 1} = nf.touch(r, {k + 1})", setup=True):
            roles(edit, k, run.steps[k], after, r_after, pop_after)
        expect(pop_after.schema is after.schema, f"assert nf.touch(pop, {k + 1}).schema is "
                f"p{k + 1}.schema", "the population did not reach the version")
        if edit.kind in ("del_param", "del_buffer", "del_module", "set_none"):
            kept = {s.pid: t for s, t in zip(r_after.schema.leaf_specs, r_after.leaves)
                    if s.pid is not None}
            for spec, leaf in zip(r_k.schema.leaf_specs, r_k.leaves):
                if spec.pid in kept:  # kept, perhaps renumbered: the very same tensor
                    expect(kept[spec.pid] is leaf, f"r{k + 1} = nf.touch(r, {k + 1})  # must "
                           f"hold nf.touch(r, {k})[{spec.key!r}] itself",
                           f"deleting {edit.path!r} copied {spec.key!r}")


def old_values_kept(run: Run) -> None:
    """Every particle holds what a plain dict-of-tensors model of the chain says: old values
    and parameter ids kept (through renames and renumbering), new ones from snapshots with new
    ids, shared ones from the initiator."""
    ids = nf.param_ids(nf.touch(run.r))
    with shows("assert nf.param_ids(nf.touch(r)) == nf.param_ids(p%d)" % run.n):
        assert nf.param_ids(run.head) == ids, "initiator and recipient disagree on ids"
    versions = [s.schema for s in run.steps]
    ref_p, ref_r = Reference.of(run.steps[0]), Reference.of(run.r)
    members = [Reference.of(m) for m in nf.unstack(run.pop)]
    for k, edit in enumerate(run.edits):
        schemas = (versions[k], versions[k + 1])
        ref_r = ref_r.event(edit, initiator=ref_p, schemas=schemas)
        members = [m.event(edit, initiator=ref_p, schemas=schemas) for m in members]
        ref_p = ref_p.event(edit, schemas=schemas)
    with shows(f"nft.Reference.of(p0)  # after the chain, must equal p{run.n}"):
        ref_p.check(run.head)
    with shows("nf.touch(r)  # must hold r's old values, the snapshots and the shared values"):
        ref_r.check(run.r)
    pop = nf.touch(run.pop)
    for i, (model, member) in enumerate(zip(members, nf.unstack(pop))):
        with shows(f"nf.touch(pop)[{i}]  # must equal nf.touch(pop[{i}])"):
            model.check(member)
    versions = [run.r.schema] + versions[1:]
    t = nf.touch(run.r)
    for key, leaf in zip(run.r.schema.leaf_keys, run.r.leaves):
        spec = run.r.schema.by_path[key]
        if all(key in v.leaf_index and v.by_path[key].pid == spec.pid and
               v.by_path[key].dtype == spec.dtype and v.by_path[key].shape == spec.shape
               for v in versions):
            with shows(f"assert nf.touch(r)[{key!r}] is r[{key!r}]"):
                assert t[key] is leaf, f"{key!r} was copied although no event touched it"


def ops_commute(run: Run) -> None:
    """Operations touch their operands first: touch(a op b) == touch(a) op touch(b)."""
    a = run.r
    b = random_particle(run.steps[run.b_version], 11)
    ta, tb = nf.touch(a), nf.touch(b)
    code_b = f"b = nft.random_particle(p{run.b_version}, seed=11)"
    for name, op in OPS.items():
        with shows(f"{code_b}; nft.assert_same_values(nf.touch(r {name} b), "
                   f"nf.touch(r) {name} nf.touch(b))"):
            got = op(a, b)
            assert got.schema is run.head.schema, f"r {name} b is not at the head"
            assert_same_values(nf.touch(got), op(ta, tb))
            Reference.of(ta).binary(name, Reference.of(tb)).check(got)
    s = run.scalar
    for name, op in OPS.items():
        with shows(f"nft.assert_same_values(nf.touch(r {name} {s}), nf.touch(r) {name} {s})"):
            assert_same_values(nf.touch(op(a, s)), op(ta, s))
            assert_same_values(nf.touch(op(s, a)), op(s, ta))
    for name, op in UNARY.items():
        with shows(f"nft.assert_same_values(nf.touch({name}(r)), {name}(nf.touch(r)))"):
            assert_same_values(nf.touch(op(a)), op(ta))
    with shows(f"{code_b}; nft.assert_same_values(nf.lerp(r, b, 0.25), "
               "nf.lerp(nf.touch(r), nf.touch(b), 0.25))"):
        assert_same_values(nf.lerp(a, b, 0.25), nf.lerp(ta, tb, 0.25))
    with shows(f"nft.assert_same_values(nf.touch(pop * {s}), nf.touch(pop) * {s})"):
        assert_same_values(nf.touch(run.pop * s), nf.touch(run.pop) * s)


def population_touch(run: Run) -> None:
    """Touching a population equals touching each member and stacking."""
    members = nf.unstack(run.pop)
    for k in range(run.n + 1):
        got = nf.touch(run.pop, k)
        with shows(f"assert nf.touch(pop, {k}).batch_shape == pop.batch_shape"):
            assert tuple(got.batch_shape) == tuple(run.pop.batch_shape), "batch shape changed"
        for i, member in enumerate(members):
            with shows(f"nft.assert_same_values(nf.touch(pop, {k})[{i}], "
                       f"nf.touch(pop[{i}], {k}))"):
                assert_same_values(got[i], nf.touch(member, k))
    with shows("nft.assert_same_values(nf.touch(pop), nf.stack(nf.unstack(pop)))"):
        assert_same_values(nf.touch(run.pop), nf.stack(members))


def model_runs(run: Run) -> None:
    """The model runs after every drawn event: initiator, recipient, and the population under
    vmap (equal to running each member)."""
    for e in run.ends:
        with shows(f"nf.apply(p{e}, *x)"):
            out = outputs(run, run.steps[e])
        with shows(f"nf.apply(nf.touch(r, {e}), *x)"):
            out_r = outputs(run, nf.touch(run.r, e))
            shapes = optree.tree_map(lambda t: (tuple(t.shape), t.dtype), (out, out_r),
                                     none_is_leaf=True)
            assert shapes[0] == shapes[1], f"outputs differ in structure: {shapes}"
    pop = nf.touch(run.pop)
    with shows("torch.testing.assert_close(nf.vmap_apply(nf.touch(pop), *x), "
               "torch.stack([nf.apply(m, *x) for m in nf.touch(pop)]))"):
        inputs = run.forward.inputs_for(pop.schema)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nf.VmapFallbackWarning)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                got = nf.vmap_apply(pop, *inputs)
        want = [outputs(run, m) for m in nf.unstack(pop)]
        want = optree.tree_map(lambda *xs: torch.stack(xs), *want, none_is_leaf=True)
        close(got, want, "vmap_apply vs member-wise apply")


def _fingerprint(value: Any) -> Any:
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_fingerprint(v) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple((k, _fingerprint(v)) for k, v in value.items()))
    return (type(value), id(value))


def _skeleton_state(schema: nf.Schema) -> dict[str, Any]:
    return {f"{name}.{k}" if name else k: _fingerprint(v)
            for name, m in schema._skeleton.named_modules(remove_duplicate=False)
            for k, v in vars(m).items()}


def apply_pure(run: Run) -> None:
    """nf.apply changes nothing: not the particle, not the species' shared module skeleton
    (its attributes, tensor references included), whatever the forward pass does."""
    for e in sorted({0, run.n}):
        p = run.steps[e]
        skeleton, leaves = _skeleton_state(p.schema), leaf_state(p)
        with shows(f"nf.apply(p{e}, *x)  # must leave p{e} and its schema's skeleton as they were"):
            outputs(run, p)
            outputs(run, nf.touch(run.r, e))
            unchanged(p, leaves, f"p{e}")
            after = _skeleton_state(p.schema)
            changed = sorted(k for k in skeleton.keys() | after.keys()
                             if skeleton.get(k) != after.get(k))
            assert not changed, f"the forward pass changed the shared skeleton's {changed}"


def output_kept(run: Run) -> None:
    """Events that change no value the forward uses (configs, buffer policies) keep the
    initiator's output; growth (``widen``, ``deepen``, ``insert_module`` of an identity) keeps
    every particle's own: the initiator's, a recipient's and each member's, up to rounding
    (1e-12 of the output's scale in float64, 1e-5 in float32, 1e-1 in 16 bits; more where the
    model itself magnifies rounding, see ``_run.kept``)."""
    pop = nf.unstack(run.pop)
    for i, edit in enumerate(run.chain):
        kind = KINDS.get(edit.kind)
        keeps = edit.keeps_output if edit.keeps_output is not None else (
            kind is not None and kind.keeps_output)
        if not keeps:
            continue
        before, after = run.ends[i], run.ends[i + 1]
        with shows(f"torch.testing.assert_close(nf.apply(p{after}, *x), nf.apply(p{before}, *x))"):
            kept(outputs(run, run.steps[after]), outputs(run, run.steps[before]),
                 f"output after {edit!r}", lambda d: twin_output(run, run.steps[before], d))
        if edit.kind not in GROWTH_KINDS:  # configure may hand recipients the initiator's values
            continue
        for name, x in (("r", run.r), *((f"pop[{j}]", m) for j, m in enumerate(pop))):
            with shows(f"torch.testing.assert_close(nf.apply(nf.touch({name}, {after}), *x), "
                       f"nf.apply(nf.touch({name}, {before}), *x))"):
                old = nf.touch(x, before)
                kept(outputs(run, nf.touch(x, after)), outputs(run, old),
                     f"{name}'s output after {edit!r}", lambda d, old=old: twin_output(run, old, d))


def checkpoint_round_trip(run: Run) -> None:
    """nf.save -> nf.load keeps every particle: structure, configs, values, attributes (enum
    members, torch functions), batch shape, version; loaded particles touch and run alike."""
    saved = {"p": run.head, "r": run.r, "pop": run.pop}
    with shows("nf.save(path, {'p': p%d, 'r': r, 'pop': pop}); back = nf.load(path)" % run.n):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ckpt.safetensors")
            nf.save(path, saved)
            # the model's own classes, which may live where nf.load does not look (a doctest,
            # a function's body): the user trusts them, the law is about the round trip
            back = nf.load(path, classes=module_classes(saved.values()))
        for name, x in saved.items():
            same_particle(x, back[name], f"loaded {name!r}")
        assert back["p"].species is back["r"].species is back["pop"].species, \
            "loaded particles of one species are of several"
        for name in ("r", "pop"):
            same_particle(nf.touch(saved[name]), nf.touch(back[name]), f"touched {name!r}")
        close(outputs(run, back["p"]), outputs(run, run.head), "output after load")


def invalid_events_change_nothing(run: Run) -> None:
    """An invalid event raises a typed error naming the function, and changes nothing."""
    edit = run.invalid
    species = run.head.species
    n, head = len(species), species.head
    r_before = nf.touch(run.r)
    for name, target in ((f"p{run.n}", run.head), ("nf.touch(pop)", nf.touch(run.pop))):
        before = leaf_state(target)
        with shows(edit.code_lines(name, [name])[0]):
            try:
                edit.apply(target)
            except nf.NytorchFuncError as err:
                assert isinstance(err, (TypeError, ValueError)), \
                    f"{type(err).__name__} is neither a TypeError nor a ValueError"
                assert edit.kind in str(err), f"the message does not name {edit.kind}: {err}"
            else:
                raise AssertionError(f"{edit!r} was accepted")
            assert len(species) == n and species.head is head and head.is_newest, \
                "a refused event changed the species' chain"
            unchanged(target, before, name)
    with shows("nf.touch(r)  # after the refused event: as before"):
        assert_same_values(nf.touch(run.r), r_before)


#: Every law by name, in the order the suite checks them.
LAWS: Mapping[str, Callable[[Run], None]] = types.MappingProxyType({f.__name__: f for f in (
    leaves_match_schema, touch_pure, touch_idempotent, touch_composable, initiator_recipient,
    old_values_kept, ops_commute, population_touch, apply_pure, model_runs, output_kept,
    checkpoint_round_trip, invalid_events_change_nothing)})
