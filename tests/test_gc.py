"""No reference cycles: the collector finds no objects of ours, and old versions are freed."""

import gc
import weakref

import torch
from torch import nn

import nytorch_func as nf

from helpers import bn_net, example_input, mlp, tied_model


def _cyclic_garbage(work):
    """Run ``work()`` and return the unreachable objects the cycle collector found after it."""
    gc.collect()
    gc.garbage.clear()
    was_enabled = gc.isenabled()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    return found


def _ours(objects):
    return [o for o in objects if type(o).__module__.startswith("nytorch_func")]


def _combine_fifty():
    p = nf.from_module(bn_net())
    ps = [p.randn(generator=torch.Generator().manual_seed(i)) for i in range(50)]
    total = ps[0]
    for q in ps[1:]:
        total = total + 0.5 * q - q / 3 + abs(q) ** 2
    pop = nf.stack(ps)
    x = example_input("bn_net")
    nf.apply(total, x)
    out, after = nf.apply_with_state(pop[3], x)
    torch.func.vmap(nf.apply, in_dims=(0, None))(pop, x)
    nf.map_params(lambda a, b, cfg: a - b, ps[1], ps[2])
    nf.unstack(pop[10:20])
    nf.to_module(total)
    m = nf.from_module(mlp())
    torch.func.grad(lambda r: nf.apply(r, torch.randn(3, 4)).sum())(m)


def _events_and_touches():
    p = nf.from_module(tied_model())
    others = [p.randn() for _ in range(5)]
    pop = nf.population(p, 4)
    for i in range(30):
        p = nf.add_param(p, f"a{i}", nn.Parameter(torch.randn(2)))
        p = nf.add_buffer(p, f"b{i}", torch.zeros(1), state=i % 2 == 0)
        p = nf.add_module(p, f"m{i}", nn.Linear(2, 2))
        p = nf.configure(p, f"a{i}", operational=False, clone=i % 3 == 0)
        if i % 4 == 0:
            p = nf.set_none(p, f"m{i}.bias")
            p = nf.del_module(p, f"m{i}")
        others = [nf.touch(o) for o in others]
        others[i % 5] = others[i % 5] + p
    nf.touch(pop)
    nf.del_param(p, "emb.weight")
    nf.configure_buffer(p, "b0", policy="mean")
    str(nf.history(p.species))
    nf.diff(others[0].schema, p.schema)
    for bad in (lambda: nf.del_param(p, "nope"), lambda: nf.touch(p, to=0),
                lambda: p + nf.from_module(mlp()), lambda: nf.add_module(p, "m1", 3),
                lambda: nf.configure(p, "a1", tag=[1])):
        try:
            bad()
        except nf.NytorchFuncError:
            pass


def test_combining_fifty_particles_leaves_no_cycles_of_ours():
    found = _cyclic_garbage(_combine_fifty)
    assert _ours(found) == []


def test_events_touches_and_errors_leave_no_cycles_of_ours():
    found = _cyclic_garbage(_events_and_touches)
    assert _ours(found) == []


def test_the_check_can_fail():
    """The detector itself: a deliberate cycle through a particle is found."""

    def make_cycle():
        p = nf.from_module(nn.Linear(1, 1))
        box = [p]
        box.append(box)

    assert any(isinstance(o, nf.Particle) for o in _cyclic_garbage(make_cycle))


def test_old_versions_are_freed_when_unreferenced():
    p = nf.from_module(mlp())
    species = weakref.ref(p.species)
    v0 = weakref.ref(p.schema)
    q = p.randn()  # holds version 0 too
    p = nf.add_param(p, "a", torch.ones(1))
    v1 = weakref.ref(p.schema)
    p = nf.del_param(p, "a")
    gc.disable()  # freed by reference counting alone, without the collector
    try:
        assert v0() is not None and v1() is not None  # q reaches them (forward links)
        del q
        assert v0() is None and v1() is None
        assert [s.version for s in p.species.live_versions()] == [2]
        assert p.species.head is p.schema
        del p
        assert species() is None
    finally:
        gc.enable()


def test_touched_particles_release_old_versions():
    p = nf.from_module(mlp())
    old = [p.randn() for _ in range(3)]
    v0 = weakref.ref(p.schema)
    first = p
    for i in range(5):
        p = nf.add_param(p, f"a{i}", torch.ones(1))
    old = [nf.touch(o) for o in old]
    assert v0() is not None  # the initiator's first particle still holds it
    gc.disable()
    try:
        del first
        assert v0() is None
        assert len(old[0].species.live_versions()) == 1
    finally:
        gc.enable()
