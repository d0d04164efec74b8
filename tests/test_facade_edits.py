"""Edits through a NytoModule: a refused call changes nothing anywhere, ties and aliases stay
tied, None slots follow torch's rules, the very object again is no edit."""

import pytest
import torch
from torch import nn

import nytorch_func as nf


def _uncopyable():
    m = nn.Linear(2, 2)
    m.__dict__["_gen"] = (x for x in ())  # a generator: cannot be deep-copied for recipients
    return m


class Replaceable(nf.NytoModule):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(2, 2)
        self.w = nn.Parameter(torch.ones(2))
        self.register_buffer("b", torch.zeros(2))


def _state(m):
    return ([(n, t.clone()) for n, t in m.named_parameters()],
            [(n, t.clone()) for n, t in m.named_buffers()], [n for n, _ in m.named_modules()])


def _same_state(a, b):
    return (a[2] == b[2] and [n for n, _ in a[0]] == [n for n, _ in b[0]]
            and all(torch.equal(x, y) for (_, x), (_, y) in zip(a[0] + a[1], b[0] + b[1])))


@pytest.mark.parametrize("name, value, message", [
    ("l", nn.Linear(2, 2, device="meta"), "meta device"),
    ("w", nn.Parameter(torch.empty(2, device="meta")), "meta device"),
    ("b", torch.empty(2, device="meta"), "meta device"),
    ("l", _uncopyable(), "cannot copy"),
    ("w", nn.Linear(2, 2), "cannot assign a module as parameter"),
    ("b", nn.Linear(2, 2), None),
])
def test_a_refused_replacement_changes_nothing_anywhere(name, value, message):
    net = Replaceable()
    others = [net.clone(), net.randn()]
    v = net._version_kernel
    before = [_state(m) for m in (net, *others)]
    if message is None:  # a buffer replaced by a module, the module not copyable: refused
        value.__dict__["_gen"] = (x for x in ())
        message = "cannot copy"
    with pytest.raises(nf.SchemaError, match=message):
        setattr(net, name, value)
    assert net._version_kernel is v and v.is_newest and len(v.species) == 1
    for m, state in zip((net, *others), before):
        assert _same_state(_state(m.touch()), state)
    assert isinstance(net.l, nn.Linear) and net.l.weight.device.type == "cpu"


def test_a_refused_edit_behind_the_facade_changes_nothing_and_can_be_undone():
    net = Replaceable()
    other = net.clone()
    v = net._version_kernel
    good = nn.Parameter(torch.ones(3))
    net.l.extra = good  # fine on its own ...
    net.l.bias = nn.Parameter(torch.empty(2, device="meta"))  # ... but this one is refused
    with pytest.raises(nf.SchemaError, match="meta device"):
        net + other
    assert v.is_newest and len(v.species) == 1  # neither edit was committed
    net.l.bias = nn.Parameter(torch.zeros(2))
    assert torch.equal((net + other).l.extra, 2 * good) and net._version_kernel.version == 1
    assert torch.equal(other.touch().l.extra, good) and other.l.extra is not good


def test_ties_survive_events_operations_and_touch():
    class Tied(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(3, 3)
            self.dec = nn.Linear(3, 3)
            self.dec.weight = self.enc.weight  # tied at construction

    net = Tied()
    other = net.randn()
    assert other.dec.weight is other.enc.weight
    net.extra = nn.Parameter(torch.zeros(1))
    other.touch()
    for m in (net, other, net + other, net.clone(), net.detach()):
        assert m.dec.weight is m.enc.weight
    net.dec.weight = nn.Parameter(torch.ones(3, 3))  # untied behind the facade's back
    net.touch()
    other.touch()
    assert other.dec.weight is not other.enc.weight and torch.equal(other.dec.weight, torch.ones(3, 3))
    assert net.get_param_id(net.dec.weight) != net.get_param_id(net.enc.weight)
    net.head = net.enc  # a module alias after the species exists
    net.head.extra = nn.Parameter(torch.ones(3))  # an edit under the alias: both names see it
    net.touch()
    other.touch()
    assert other.head is other.enc and other.head.extra is other.enc.extra
    assert (net + other).head is not None


def test_none_slots_follow_torchs_rules_and_can_be_deleted():
    net = Replaceable()
    other = net.clone()
    net.w = None
    with pytest.raises(TypeError, match="cannot assign a module as parameter"):
        net.w = nn.Linear(2, 1)  # torch refuses a module in a parameter's (None) slot
    assert net.w is None and other.touch().w is None and net._version_kernel.version == 1
    net.l = None
    net.l = nn.Parameter(torch.full((3,), 2.0))  # a None module slot takes a parameter
    assert torch.equal(other.touch().l, torch.full((3,), 2.0)) and other.l is not net.l
    net.w = nn.Parameter(torch.ones(1))  # a None parameter slot is filled again
    assert other.touch().w.shape == (1,)
    net.w = None
    del net.w  # the None slot itself goes, everywhere
    assert "w" not in other.touch()._parameters and "w" not in net._parameters
    assert net._version_kernel is other._version_kernel and net._version_kernel.version == 6


def test_the_same_object_again_under_its_own_name_changes_nothing():
    net = Replaceable()
    other = net.randn()
    v = net._version_kernel
    net.l = net.l
    net.w = net.w
    net.add_module("l", net.l)
    assert net._version_kernel is v and v.is_newest
    assert other.touch().l.weight is not net.l.weight
