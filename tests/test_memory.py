"""Memory stays bounded over many events, old versions are freed, and nothing forms a cycle."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import Schema

EVENTS = 10_000


def _ours(obj: object) -> bool:
    module = getattr(type(obj), "__module__", "") or ""
    if module.startswith("nytorch_func"):
        return True
    return callable(obj) and (getattr(obj, "__module__", "") or "").startswith("nytorch_func")


def test_many_events_keep_memory_bounded() -> None:
    p = nf.from_module(nn.Linear(2, 1))
    lagging = p.clone()  # a recipient touched every 10 events
    species = p.species
    snapshots: list[weakref.ref] = []
    live_counts: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(EVENTS):
            if i % 2 == 0:
                p = nf.add_param(p, "extra", nn.Parameter(torch.randn(16)))
                if i % 200 == 0:  # a sample: the list itself must not grow the traced memory
                    snapshots.append(weakref.ref(species.version(p.version - 1).event.snapshot))
            else:
                p = nf.del_param(p, "extra")
            if i % 10 == 9:
                lagging = nf.touch(lagging)
                assert 0.5 * lagging + 0.5 * p is not None
            if i == 999:
                gc.collect()
                warm, _ = tracemalloc.get_traced_memory()
            if i % 1000 == 999:
                live_counts.append(len(species.live_versions()))
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    schemas = sum(isinstance(o, Schema) and o.species is species for o in gc.get_objects())
    alive = sum(r() is not None for r in snapshots)
    growth = end - warm
    print(f"\n{EVENTS} events: live versions per 1000 events {live_counts}, schemas alive "
          f"{schemas}, snapshots alive {alive}/{len(snapshots)}, traced memory after 1000 "
          f"events {warm / 1024:.0f} KiB, after {EVENTS} {end / 1024:.0f} KiB "
          f"(growth {growth / 1024:.1f} KiB, peak {peak / 1024:.0f} KiB)")
    assert len(species) == EVENTS + 1 and p.version == EVENTS
    assert max(live_counts) <= 11  # the head plus at most the 10 the lagging particle is behind
    assert schemas <= 11
    assert alive == 0  # every sampled add_param snapshot was freed with its versions
    assert growth < 64 * 1024  # no per-event growth (10,000 leaked schemas would be many MiB)
    del p, lagging
    gc.collect()
    assert species.head is None and species.live_versions() == []


def _workload(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    p = nf.from_module(net)
    q = p.randn()
    p = nf.add_param(p, "scale", nn.Parameter(torch.ones(2)))
    p = nf.add_buffer(p, "mem", torch.zeros(2))
    p = nf.add_module(p, "extra", nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)))
    p = nf.configure(p, "extra", operational=False, clone=False)
    p = nf.configure(p, "extra", clone=True)
    p = nf.configure_buffer(p, "1.running_mean", policy="mean")
    p = nf.set_none(p, "3.bias")
    p = nf.del_module(p, "extra")
    p = nf.del_buffer(nf.del_param(p, "scale"), "mem")
    mixed = 0.5 * p + 0.5 * q - p / 2 + abs(-p) ** 2
    pop = nf.population(mixed, 4)
    pop = nf.stack([nf.touch(q), *nf.unstack(pop)[:2]])
    x = torch.randn(5, 3)
    out = torch.func.vmap(nf.apply, in_dims=(0, None))(pop.eval(), x)
    _, after = nf.apply_with_state(p, x)
    lin = nf.from_module(nn.Linear(3, 2))
    grads = torch.func.grad(lambda r: nf.apply(r, x).pow(2).sum())(lin)
    assert out.shape == (3, 5, 2) and grads.species is lin.species and after.version == p.version
    for bad in (lambda: p + nf.from_module(nn.Linear(1, 1)), lambda: nf.touch(p, to=0),
                lambda: nf.add_param(p, "0.weight", torch.ones(1))):
        with pytest.raises(nf.NytorchFuncError):
            bad()
    path = tmp_path / "w.safetensors"
    nf.save(path, {"p": p, "q": q, "pop": pop})
    back = nf.load(path)
    assert nf.touch(back["q"]).version == back["p"].version
    str(nf.history(p.species)), nf.diff(q.schema, p.schema), nf.to_module(p).state_dict()


def test_no_cycles_after_mixed_workload(tmp_path) -> None:
    _workload(tmp_path)  # warm-up: torch builds caches and types lazily on first use
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        _workload(tmp_path)
        found = gc.collect()
        ours = [o for o in gc.garbage if _ours(o)]
        total = len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    print(f"\ncycle collector after the mixed workload: {found} unreachable objects, "
          f"{len(ours)} of nytorch_func types")
    assert ours == [], [type(o).__name__ for o in ours[:10]]
    assert total == found
