"""Events from many threads on one species are linearised; touches meanwhile stay consistent;
forward passes from many threads each see their own particle's weights."""

from __future__ import annotations

import sys
import threading
import time

import pytest
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


# forward passes from threads ---------------------------------------------------------------------

APPLY_THREADS = 6
APPLIES = 150  # per thread


def _forward_race(members: list[nf.Particle], x: torch.Tensor, references: list[torch.Tensor],
                  with_events: bool = False) -> tuple[list[str], list[BaseException], bool]:
    """Threads run nf.apply / apply_with_state / to_module on different particles of one species
    at once (switching threads as often as CPython allows) and compare each output with the
    particle's eager module, computed beforehand on one thread."""
    start = threading.Barrier(APPLY_THREADS)
    wrong: list[str] = []
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for k in range(APPLIES):
                i = (t + k) % len(members)
                p = members[i]
                if k % 3 == 0:
                    out = nf.apply(p, x)
                elif k % 3 == 1:
                    out, _ = nf.apply_with_state(p, x)
                else:
                    out = nf.to_module(p)(x)
                if not torch.allclose(out, references[i], atol=1e-5):
                    wrong.append(f"thread {t}, call {k}: particle {i}")
                if with_events and k % 25 == 0:
                    nf.add_buffer(p, f"t{t}_{k}", torch.zeros(1))  # copies the skeleton path
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True)
               for t in range(APPLY_THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        began = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=max(0.0, TIMEOUT - (time.monotonic() - began)))
    finally:
        sys.setswitchinterval(interval)
    return wrong, errors, any(th.is_alive() for th in threads)


def _members() -> tuple[list[nf.Particle], torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    base = nf.from_module(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                        nn.Linear(8, 3)))
    members = [base.randn() for _ in range(8)]
    members = [q.eval() if i % 2 else q.train() for i, q in enumerate(members)]  # mode flips too
    x = torch.randn(16, 4)
    with torch.no_grad():
        references = [nf.to_module(q)(x) for q in members]
    return members, x, references


def test_forward_passes_from_threads_see_their_own_weights() -> None:
    """Regression: functional_call swaps each particle's tensors into the species' one meta
    skeleton, and apply flips its train/eval flags; two threads applying particles of one
    species read each other's weights (or the meta placeholders) without the species' call
    lock."""
    members, x, references = _members()
    with torch.no_grad():
        wrong, errors, alive = _forward_race(members, x, references)
    assert not alive, "deadlock: a thread did not finish in time"
    assert not errors, errors[0]
    assert not wrong, f"{len(wrong)} forward passes read another particle's weights: {wrong[:3]}"
    skeleton = members[0].schema.skeleton
    assert all(t.is_meta for t in [*skeleton.parameters(), *skeleton.buffers()])
    assert skeleton.training  # every mode flip was undone


def test_events_during_forward_passes_keep_skeletons_data_free() -> None:
    """An event copies the modules on its path from the skeleton; a forward pass on another
    thread must not have its tensors swapped in at that moment, or the new version's skeleton
    would keep a particle's real weights."""
    members, x, references = _members()
    with torch.no_grad():
        wrong, errors, alive = _forward_race(members, x, references, with_events=True)
    assert not alive and not errors and not wrong, (alive, errors[:1], wrong[:3])
    head = nf.touch(members[0]).schema
    assert len(head.species) > 1
    for schema in head.species.live_versions():
        assert all(t.is_meta for t in [*schema.skeleton.parameters(), *schema.skeleton.buffers()])


@pytest.mark.parametrize("read", ["live_versions", "history", "touch_error",
                                  "load_species_error"])
def test_readers_of_the_live_versions_while_another_thread_appends(read, tmp_path) -> None:
    """nf.history, touch's and load(species=)'s error paths list the live versions: they must
    not fail ('dictionary changed size during iteration') while events are appended."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        keep = [nf.add_buffer(nf.from_module(nn.Linear(1, 1)), "w", torch.zeros(1))]
        for i in range(150):
            keep.append(nf.add_buffer(keep[-1], f"w{i}", torch.zeros(1)))
        p = keep[0]  # version 0 is freed: loading a file that starts there lists the live ones
        nf.save(tmp_path / "v0.nf", nf.from_module(nn.Linear(1, 1)))
        calls = {
            "live_versions": lambda: p.species.live_versions(),
            "history": lambda: nf.history(p.species),
            "touch_error": lambda: nf.touch(p, to=10**9),  # never made: names the live versions
            "load_species_error": lambda: nf.load(tmp_path / "v0.nf", species=p.species),
        }
        for call in calls.values():  # each reaches the path that lists the live versions
            try:
                call()
            except nf.NytorchFuncError as err:
                assert "live" in str(err), err
        errors: list[BaseException] = []
        done = threading.Event()

        def writer() -> None:
            q = keep[-1]
            for i in range(800):
                if done.is_set():
                    break
                q = nf.add_buffer(q, f"b{i}", torch.zeros(1))
                keep.append(q)
            done.set()

        def reader() -> None:
            while not done.is_set():
                try:
                    calls[read]()
                except nf.NytorchFuncError:
                    pass  # the refusal the call is about
                except Exception as err:  # noqa: BLE001 - any other exception is the bug
                    errors.append(err)
                    done.set()

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, repr(errors[0])
