"""nf.save / nf.load of training state: optimizer pytrees, tensors, numbers, generators, and a
population training run that resumes bit for bit."""

from __future__ import annotations

import collections
import math
import os
import pickle
import threading
from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func import _tensorfile, optim
from io_helpers import bits_equal, rewrite, roundtrip, same_particle


def same_tree(a, b) -> None:
    """Equal structure, types, values (bits) and tensor flags."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, nf.Particle):
        same_particle(a, b)
    elif isinstance(a, torch.Tensor):
        assert bits_equal(a, b) and a.requires_grad == b.requires_grad and a.device == b.device
    elif isinstance(a, torch.Generator):
        assert torch.equal(a.get_state(), b.get_state()) and a.device == b.device
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_tree(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


class Moments(NamedTuple):
    """A user's optimizer state: NamedTuple of particles, tensors and numbers."""

    step: dict
    m: nf.Particle
    v: nf.Particle | None
    lr: torch.Tensor
    note: str = "adam"


# what a state tree may hold ---------------------------------------------------------------------

def test_optimizer_states_of_nytorch_func_optim(tmp_path):
    pop = nf.population(nn.Linear(3, 2), 4)
    grads = pop.randn()
    for opt in (optim.Adam(lr=0.1), optim.SGD(lr=0.1, momentum=0.9), optim.SGD(lr=0.1)):
        state = opt.init(pop)
        pop2, state = opt.step(pop, grads, state)
        back = roundtrip(tmp_path, {"params": pop2, "state": state})
        same_tree({"params": pop2, "state": state}, back)
        assert back["state"].__class__ is type(state)


def test_general_pytrees(tmp_path):
    p = nf.population(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 3)
    per_param = {pid: torch.tensor(7 + pid) for pid in nf.param_ids(p).values()}
    tree = {
        "state": Moments(per_param, p.zeros(), None, torch.linspace(0.1, 0.3, 3)),
        "plain": [torch.ones(2, requires_grad=True), nn.Parameter(torch.zeros(3)),
                  torch.arange(6).reshape(2, 3).t(), torch.tensor(3.5), torch.zeros(0, 4)],
        "numbers": (1, -2.5, float("inf"), float("nan"), 1 + 2j, True, None, "text", 2 ** 70),
        "keys": {0: "int", 1.5: "float", (1, "a"): "tuple", None: "none", True: "bool"},
        "ordered": OrderedDict(b=1, a=2),
        "meta": (torch.float16, torch.device("cpu"), torch.Size([2, 3])),
        "empty": ({}, [], ()),
    }
    back = roundtrip(tmp_path, tree)
    same_tree(tree, back)
    assert isinstance(back["plain"][1], nn.Parameter) and back["plain"][0].requires_grad
    assert back["state"].v is None and back["state"].note == "adam"
    assert back["state"].m.species is p.species or back["state"].m.species.uid == p.species.uid


def test_aliases_stay_aliases(tmp_path):
    pop = nf.population(nn.Linear(2, 2), 2)
    t = torch.randn(3)
    back = roundtrip(tmp_path, {"a": t, "b": [t], "pop": pop, "w": pop["weight"],
                                "twice": (pop, pop)})
    assert back["a"] is back["b"][0]
    assert back["w"] is back["pop"]["weight"] and back["twice"][0]["bias"] is back["pop"]["bias"]


def test_generators_round_trip_and_continue_the_same_stream(tmp_path):
    g = torch.Generator().manual_seed(1234)
    torch.randn(5, generator=g)
    back = roundtrip(tmp_path, {"g": g, "state": g.get_state()})
    g2 = back["g"]
    assert torch.equal(torch.randn(7, generator=g2), torch.randn(7, generator=g))
    g3 = torch.Generator()
    g3.set_state(back["state"])
    assert back["state"].dtype == torch.uint8


def test_namedtuple_classes_are_trusted_like_module_classes(tmp_path):
    class Local(NamedTuple):
        a: int
        b: torch.Tensor

    path = tmp_path / "n.safetensors"
    nf.save(path, Local(1, torch.ones(2)))
    with pytest.raises(nf.CheckpointError, match=r"NamedTuple class .*Local.*classes="):
        nf.load(path)
    back = nf.load(path, classes=[Local])
    assert type(back) is Local and back.a == 1

    class Local(NamedTuple):  # noqa: F811 - the class changed since the file was written
        a: int
        c: torch.Tensor

    with pytest.raises(nf.CheckpointError, match=r"fields \['a', 'b'\].*\['a', 'c'\]"):
        nf.load(path, classes=[Local])


class Noisy(collections.namedtuple("Noisy", "x")):
    calls = 0

    def __new__(cls, x):  # user code that must not run on load
        Noisy.calls += 1
        return super().__new__(cls, x)


def test_loading_runs_no_user_code_and_no_pickle(tmp_path, monkeypatch):
    obj = {"n": Noisy(3), "pop": nf.population(nn.Linear(2, 2), 2)}
    path = tmp_path / "s.safetensors"
    nf.save(path, obj)
    before = Noisy.calls

    def refuse(*a, **k):
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    back = nf.load(path)
    assert back["n"] == (3,) and type(back["n"]) is Noisy and Noisy.calls == before


@pytest.mark.parametrize("value, match", [
    (b"bytes", "bytes"), ({1, 2}, "set"), (object(), "object"),
    (torch.nn.Linear(1, 1), "Linear"), (torch.optim.SGD, "type"),
    (type("MyInt", (int,), {})(3), "subclass of int"),
])
def test_what_state_cannot_hold(tmp_path, value, match):
    with pytest.raises(nf.CheckpointError, match=match):
        nf.save(tmp_path / "x.safetensors", {"ok": torch.ones(1), "bad": [value]})
    assert os.listdir(tmp_path) == []


def test_tampered_state_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    nf.save(path, {"n": Moments({}, nf.from_module(nn.Linear(1, 1)), None, torch.ones(1))})

    def misname(doc):
        doc["root"]["v"][0][1]["class"] = ["builtins", "dict"]

    rewrite(path, misname)
    with pytest.raises(nf.CheckpointError, match="as a NamedTuple class, but it is not"):
        nf.load(path)


def test_concurrent_saves_leave_one_whole_file(tmp_path):
    path = tmp_path / "s.safetensors"
    trees = [{"i": i, "t": torch.full((1000,), float(i))} for i in range(4)]
    threads = [threading.Thread(target=nf.save, args=(path, t)) for t in trees for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    back = nf.load(path)
    assert torch.equal(back["t"], torch.full((1000,), float(back["i"])))
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    nf.save(path, {"step": 1})
    calls = []

    def stop_at_second_chunk(f, data):
        calls.append(len(calls))
        if len(calls) == 2:
            raise KeyboardInterrupt
        f.write(data)

    monkeypatch.setattr(_tensorfile, "_write_bytes", stop_at_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        nf.save(path, {"step": 2, "t": torch.ones(10), "u": torch.zeros(10)})
    assert os.listdir(tmp_path) == ["s.safetensors"] and nf.load(path) == {"step": 1}


# a population training run, checkpointed mid-way ------------------------------------------------

def _run(pop, state, gen, steps, opt, data):
    """``steps`` minibatch steps of a population; batches drawn from ``gen``."""
    x_all, y_all = data
    for _ in range(steps):
        idx = torch.randint(0, x_all.shape[0], (16,), generator=gen)
        x, y = x_all[idx], y_all[idx]

        def loss(p):
            out = torch.func.vmap(nf.apply, in_dims=(0, None))(p, x)
            return nn.functional.cross_entropy(out.reshape(-1, 3), y.repeat(len(p))) * len(p)

        pop, state = opt.step(pop, torch.func.grad(loss)(pop), state)
    return pop, state


@pytest.mark.parametrize("opt", [optim.Adam(lr=0.05), optim.SGD(lr=0.1, momentum=0.9)],
                         ids=["adam", "sgd_momentum"])
def test_resumed_training_run_is_bit_identical(tmp_path, opt):
    torch.manual_seed(0)
    data = (torch.randn(64, 4), torch.randint(0, 3, (64,)))
    start = nf.population(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), 5)

    # uninterrupted: 12 steps
    gen = torch.Generator().manual_seed(7)
    full, full_state = _run(start, opt.init(start), gen, 12, opt, data)

    # 5 steps, checkpoint (params, optimizer state, generator), resume in a "new process"
    gen = torch.Generator().manual_seed(7)
    mid, mid_state = _run(start, opt.init(start), gen, 5, opt, data)
    path = tmp_path / "run.safetensors"
    nf.save(path, {"params": mid, "opt": mid_state, "gen": gen, "epoch": 0})
    ckpt = nf.load(path)
    resumed, resumed_state = _run(ckpt["params"], ckpt["opt"], ckpt["gen"], 7, opt, data)

    same_tree(full, resumed)
    for a, b in zip(full.leaves, resumed.leaves):
        assert bits_equal(a, b)
    same_tree(tuple(full_state), tuple(resumed_state))


def test_resumed_run_after_growth_joins_the_live_species(tmp_path):
    """A run that grew mid-way resumes from its checkpoint and mixes with live particles."""
    torch.manual_seed(1)
    opt = optim.Adam(lr=0.05)
    data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    pop = nf.population(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), 3)
    gen = torch.Generator().manual_seed(3)
    pop, state = _run(pop, opt.init(pop), gen, 4, opt, data)
    pop = nf.add_param(pop, "2.gate", nn.Parameter(torch.ones(3)))
    state = nf.touch_tree(state, fill="zeros")
    pop, state = _run(pop, state, gen, 2, opt, data)
    path = tmp_path / "run.safetensors"
    nf.save(path, {"params": pop, "opt": state, "gen": gen})
    ckpt = nf.load(path, species=pop.species)
    assert ckpt["params"].schema is pop.schema
    cont_a, _ = _run(ckpt["params"], ckpt["opt"], ckpt["gen"], 3, opt, data)
    cont_b, _ = _run(pop, state, gen, 3, opt, data)
    assert all(bits_equal(a, b) for a, b in zip(cont_a.leaves, cont_b.leaves))
    assert (cont_a - cont_b).species is pop.species


def test_round_trips_leave_no_cycles_and_no_growth(tmp_path):
    import gc
    import tracemalloc

    path = tmp_path / "loop.safetensors"
    pop = nf.population(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 2)), 8)
    opt = optim.Adam()
    state = opt.init(pop)

    def once():
        nf.save(path, {"p": pop, "s": state, "g": torch.Generator()}, sync=False)
        nf.load(path)
        nf.load(path, species=pop.species)

    for _ in range(10):
        once()
    gc.collect()
    gc.disable()
    try:
        once()
        assert gc.collect() == 0  # nothing for the cycle collector
        tracemalloc.start()
        for _ in range(10):
            once()
        gc.collect()  # empties the interpreter's free lists, which the loop refills
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            once()
        assert gc.collect() == 0
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert grown < 100_000, grown  # one round trip allocates ~50 KB: nothing is kept
