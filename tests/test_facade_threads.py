"""Facade events from several threads are linearised like core events: none lost, none invented.

Each thread adds parameters to its *own* particle of one species by attribute assignment and
runs particle operations in between; every event must reach every particle exactly once.
"""

import sys
import threading

import pytest
import torch
from torch import nn

import nytorch_func as nf

THREADS = 4
EVENTS = 30
ROUNDS = 6


class Net(nf.NytoModule):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(2, 2)
        self.register_buffer("count", torch.zeros(1))


@pytest.fixture
def fast_switching():
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _round():
    root = Net()
    particles = [root] + [root.clone() for _ in range(THREADS - 1)]
    first = root._version_kernel  # keeps every version alive, so history shows them all
    errors = []
    start = threading.Barrier(THREADS)

    def work(i):
        try:
            p = particles[i]
            start.wait()
            for j in range(EVENTS):
                setattr(p, f"t{i}_{j}", nn.Parameter(torch.full((1,), float(100 * i + j))))
                p + p.clone()
                if j % 10 == 9:
                    p.touch()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return root, particles, errors, first


def test_events_from_threads_are_neither_lost_nor_invented(fast_switching):
    for _ in range(ROUNDS):
        root, particles, errors, first = _round()
        assert errors == []
        expected = {f"t{i}_{j}" for i in range(THREADS) for j in range(EVENTS)}
        events = [line for _, line in nf.history(first.species)]
        assert len(events) == len(first.species) - 1 == THREADS * EVENTS
        assert all(line.startswith("add_param t") for line in events), events
        for i, p in enumerate(particles):
            p.touch()
            names = {n for n, _ in p.named_parameters() if n.startswith("t")}
            assert names == expected
            assert p._version_kernel is root._version_kernel
            for j in range(EVENTS):  # each value arrived: the initiator's own, the others' clones
                assert getattr(p, f"t{i}_{j}").item() == 100 * i + j
                other = (i + 1) % THREADS
                assert getattr(p, f"t{other}_{j}").item() == 100 * other + j
            assert (sorted(n for n, _ in p.named_parameters())
                    == sorted(n for n, _ in root.named_parameters()))
