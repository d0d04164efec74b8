"""Events from many threads on one species are linearised; touches meanwhile stay consistent."""

from __future__ import annotations

import threading
import time

import torch
from torch import nn

import nytorch_func as nf

THREADS = 8
EVENTS = 200  # per thread, a multiple of 5
TIMEOUT = 60.0  # seconds; the test normally takes a few


def test_events_from_threads_are_linearised() -> None:
    base = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    species = base.species
    start = threading.Barrier(THREADS + 2)
    stop = threading.Event()
    versions: list[list[int]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    touches = [0]

    def writer(i: int) -> None:
        try:
            p = base.clone()
            start.wait()
            for k in range(EVENTS):  # cycles of five events on this thread's own names
                step = k % 5
                if step == 0:
                    p = nf.add_param(p, f"w{i}", nn.Parameter(torch.full((2,), float(i))))
                elif step == 1:
                    p = nf.configure(p, f"w{i}", operational=False, owner=i, step=k)
                elif step == 2:
                    p = nf.add_buffer(p, f"b{i}", torch.full((1,), float(k)))
                elif step == 3:
                    p = nf.del_buffer(p, f"b{i}")
                else:
                    assert p[f"w{i}"][0].item() == i  # our own parameter, untouched by others
                    assert p.config(f"w{i}").owner == i
                    p = nf.del_param(p, f"w{i}")
                versions[i].append(p.version)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    def toucher() -> None:
        try:
            q = base.clone()
            start.wait()
            while not stop.is_set():
                q = nf.touch(q)
                head = q.schema
                assert len(q.leaves) == len(head.leaf_keys)
                mixed = 0.5 * q + 0.5 * nf.touch(base)  # arithmetic across versions
                assert mixed.version >= head.version
                touches[0] += 1
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(THREADS)]
    threads += [threading.Thread(target=toucher, daemon=True) for _ in range(2)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads[:THREADS]:
        t.join(timeout=max(0.0, TIMEOUT - (time.monotonic() - began)))
    stop.set()
    for t in threads[THREADS:]:
        t.join(timeout=5.0)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish in time"
    assert not errors, errors[0]

    total = THREADS * EVENTS
    assert len(species) == 1 + total
    made = sorted(v for vs in versions for v in vs)
    assert made == list(range(1, total + 1))  # every event got its own version: linearised
    assert any(vs != list(range(vs[0], vs[0] + len(vs))) for vs in versions)  # they interleaved
    schema, seen = base.schema, [0]
    while schema.next is not None:  # the chain from version 0 is contiguous
        schema = schema.next
        seen.append(schema.version)
    assert seen == list(range(total + 1)) and schema is species.head
    head = nf.touch(base)
    assert sorted(head.params) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert sorted(head.buffers) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    assert touches[0] > 0
