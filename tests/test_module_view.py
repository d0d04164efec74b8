"""Schema.skeleton / Schema.module_at hand out read-only views (nytorch_func/_module_view.py).

Every particle of a species runs one skeleton module tree, so a view must read like the module
and refuse every change with FrozenError, leaving the tree and every particle's forward pass as
they were.
"""

from __future__ import annotations

import copy
import pickle
import tempfile
import threading
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

import nytorch_func as nf
from nytorch_func._module_view import ModuleView


class _Net(nn.Sequential):
    """A Sequential holding a ModuleList and a ModuleDict, with a forward that uses them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[1](self[0](x))
        for m in self[2]:
            x = m(x)
        return self[4](self[3]["a"](x))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Net(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ModuleList([nn.ReLU(), nn.Tanh()]),
                nn.ModuleDict({"a": nn.Linear(3, 3)}), nn.LeakyReLU(0.01))


def _fingerprint(s: nf.Schema) -> list:
    """What a change to the live skeleton would show: classes, plain attributes, tensors."""
    out = []
    for name, m in s._skeleton.named_modules(remove_duplicate=False):
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_")}
        tensors = [(k, id(t), tuple(t.shape), t.dtype, t.requires_grad, t.is_meta)
                   for k, t in [*m._parameters.items(), *m._buffers.items()] if t is not None]
        out.append((name, type(m), attrs, tensors, list(m._modules),
                    sorted(m._non_persistent_buffers_set), len(m._forward_hooks)))
    return out


def test_a_view_reads_as_the_module():
    p = nf.from_module(_net())
    s = p.schema
    sk, live = s.skeleton, s._skeleton
    assert type(sk) is ModuleView and sk.__class__ is _Net
    assert isinstance(sk, nn.Sequential) and isinstance(sk[0], nn.Linear)
    assert repr(sk) == repr(live)
    assert [n for n, _ in sk.named_modules()] == [n for n, _ in live.named_modules()]
    assert list(sk.state_dict()) == list(live.state_dict())
    assert len(sk) == 5 and bool(sk) and bool(sk[0]) and len(sk[2]) == 2
    assert isinstance(list(sk[2])[1], nn.Tanh) and "a" in sk[3] and isinstance(sk[3]["a"], nn.Linear)
    assert sk[4].negative_slope == 0.01 and sk[1].eps == 1e-5 and sk[0].weight.is_meta
    assert sk[0](torch.empty(4, 2, device="meta")).shape == (4, 3)  # a forward on meta tensors
    assert s.module_at("3.a") == sk[3]["a"] and s.module_at("3.a") != sk[0]
    assert hash(s.module_at("1")) == hash(sk[1]) and s.module_at("9") is None
    with pytest.raises(TypeError, match="has no len"):
        len(sk[0])
    with pytest.raises(AttributeError):
        sk._nf_module  # the live module is not reachable by attribute  # noqa: B018
    assert weakref.ref(sk)() is sk
    lstm = nf.from_module(nn.LSTM(2, 3)).schema.skeleton
    assert lstm.all_weights[0][0].shape == (12, 2) and lstm._flat_weights_names[0] == "weight_ih_l0"


def test_ties_are_one_module_and_one_tensor_within_a_view():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(2, 2)
            self.again = self.l

    sk = nf.from_module(Tied()).schema.skeleton
    assert sk.l == sk.again and sk.l.weight is sk.again.weight
    assert len(list(sk.modules())) == 2 and len(list(sk.parameters())) == 2


_CHANGES = {
    "setattr": lambda sk: setattr(sk[4], "negative_slope", 0.9),
    "delattr": lambda sk: delattr(sk[4], "negative_slope"),
    "class": lambda sk: setattr(sk, "__class__", nn.Module),
    "to": lambda sk: sk.to(torch.float64),
    "double": lambda sk: sk.double(),
    "half": lambda sk: sk.half(),
    "cpu": lambda sk: sk.cpu(),
    "to_empty": lambda sk: sk.to_empty(device="cpu"),
    "train": lambda sk: sk.train(False),
    "eval": lambda sk: sk.eval(),
    "requires_grad_": lambda sk: sk.requires_grad_(False),
    "zero_grad": lambda sk: sk.zero_grad(),
    "register_buffer": lambda sk: sk.register_buffer("z", torch.ones(1)),
    "register_parameter": lambda sk: sk.register_parameter("z", nn.Parameter(torch.ones(1))),
    "add_module": lambda sk: sk.add_module("z", nn.ReLU()),
    "set_submodule": lambda sk: sk.set_submodule("0", nn.ReLU()),
    "forward_hook": lambda sk: sk[0].register_forward_hook(lambda *a: None),
    "forward_pre_hook": lambda sk: sk.register_forward_pre_hook(lambda *a: None),
    "load_state_dict": lambda sk: sk.load_state_dict(sk.state_dict()),
    "apply": lambda sk: sk.apply(lambda m: setattr(m, "x", 1)),
    "setitem": lambda sk: sk.__setitem__(0, nn.ReLU()),
    "delitem": lambda sk: sk.__delitem__(0),
    "iadd": lambda sk: sk.__iadd__(nn.Sequential(nn.ReLU())),
    "append": lambda sk: sk.append(nn.ReLU()),
    "modulelist_insert": lambda sk: sk[2].insert(0, nn.ReLU()),
    "moduledict_update": lambda sk: sk[3].update({"b": nn.ReLU()}),
    "moduledict_pop": lambda sk: sk[3].pop("a"),
    "_modules": lambda sk: sk._modules.__setitem__("9", nn.ReLU()),
    "_parameters": lambda sk: sk[0]._parameters.pop("bias"),
    "__dict__": lambda sk: vars(sk[4]).update(negative_slope=0.9),
    "non_persistent_set": lambda sk: sk._modules.get("0")._non_persistent_buffers_set.add("x"),
    "compile": lambda sk: sk.compile(),
    "share_memory": lambda sk: sk.share_memory(),
    "functional_call": lambda sk: torch.func.functional_call(
        sk, {"0.weight": torch.ones(3, 2)}, (torch.ones(1, 2),)),
}


@pytest.mark.parametrize("change", sorted(_CHANGES))
def test_every_change_through_a_view_is_refused_and_changes_nothing(change):
    p = nf.from_module(_net())
    other = p.randn().eval()
    x = torch.randn(4, 2)
    before, fingerprint = nf.apply(other, x), _fingerprint(p.schema)
    try:
        _CHANGES[change](p.schema.skeleton)
    except nf.FrozenError as err:
        assert "skeleton" in str(err) and "nf.to_module" in str(err)
    except AttributeError:  # a set is handed out frozen: frozenset has no .add
        assert change == "non_persistent_set"
    else:
        pytest.fail(f"{change} went through")
    assert _fingerprint(p.schema) == fingerprint
    assert torch.equal(nf.apply(other, x), before)


def test_lists_held_by_modules_are_read_only():
    sk = nf.from_module(nn.LSTM(2, 3)).schema.skeleton
    with pytest.raises(nf.FrozenError):
        sk._flat_weights_names.append("x")
    with pytest.raises(nf.FrozenError):
        sk._flat_weights_names[0] = "x"
    assert sk._flat_weights_names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


def test_tensors_are_handed_out_as_copies():
    """An in-place change of a tensor read through a view once corrupted the skeleton (a later
    nf.save wrote a file nf.load refused)."""
    p = nf.from_module(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    x = torch.randn(4, 2)
    y = nf.apply(p, x)
    w = p.schema.skeleton[0].weight
    w.requires_grad_(False)
    w.data = torch.empty(7, device="meta")
    assert p.schema._skeleton[0].weight.shape == (3, 2)
    with tempfile.TemporaryDirectory() as d:
        nf.save(Path(d) / "p.nf", p)
        assert torch.equal(nf.apply(nf.load(Path(d) / "p.nf"), x), y)


def test_deepcopy_gives_a_module_of_ones_own_and_pickle_is_refused():
    p = nf.from_module(_net())
    mine = copy.deepcopy(p.schema.skeleton)
    assert type(mine) is _Net and mine[0].weight.is_meta
    mine.eval()
    mine[4].negative_slope = 0.9
    assert p.schema._skeleton.training and p.schema._skeleton[4].negative_slope == 0.01
    assert copy.copy(p.schema.skeleton) == p.schema.skeleton
    with pytest.raises(TypeError, match="deepcopy"):
        pickle.dumps(p.schema.skeleton)


def test_views_never_see_another_threads_forward_pass():
    """Views read under the species' call lock: never the particle tensors nf.apply swaps in."""
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    members = [p.randn() for _ in range(3)]
    x = torch.randn(5, 2)
    seen = []
    done = threading.Event()

    def run(q: nf.Particle) -> None:
        for _ in range(200):
            nf.apply(q, x)

    def read() -> None:
        while not done.is_set():
            sk = p.schema.skeleton
            seen.append(sk[0].weight.is_meta and all(t.is_meta for t in sk.parameters()))

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=run, args=(q,)) for q in members]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    reader.join()
    assert seen and all(seen)


def test_an_added_modules_event_does_not_hand_out_the_versions_tree():
    """Regression: AddModule/InsertModules put their own skeleton into the new version, so
    ``p.schema.event.skeleton.weight = None`` changed every particle's forward pass."""
    p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    q = nf.add_module(p, "extra", torch.nn.Linear(2, 2))
    r = nf.insert_module(q, "", 0, torch.nn.Linear(2, 2))
    x = torch.randn(3, 2)
    before = nf.apply(r, x)
    add, insert = p.schema.event, q.schema.event
    del add.skeleton.weight  # the event's module is its own: nothing of the versions changes
    insert.skeletons[0].in_features = 7
    assert torch.equal(nf.apply(r, x), before)
    assert nf.to_module(r)[0].in_features == 2 and nf.to_module(q).extra.weight is not None
