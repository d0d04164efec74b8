"""NytoModule: a thin mutable shell over the core (events, touch, bridges, errors, no cycles)."""

import gc
import weakref

import pytest
import torch
from torch import nn

import nytorch_func as nf


class Net(nf.NytoModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x))


class Inner(nf.NytoModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("count", torch.zeros(()))


class Outer(nf.NytoModule):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.scale = nn.Parameter(torch.ones(1))


def _same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_version_kernel_is_the_core_schema():
    net = Net()
    other = net.randn()
    v = net._version_kernel
    assert isinstance(v, nf.Schema) and v.is_newest
    assert other._version_kernel is v and net.to_particle().schema is v
    net.extra = nn.Parameter(torch.zeros(2))
    assert not v.is_newest and v.next is net._version_kernel
    assert nf.history(v.species)  # the core history sees the facade's event
    assert other._version_kernel is v


def test_particle_kernel_shared_by_root_and_submodules_only():
    a = Outer()
    b = a.clone()
    assert a._particle_kernel is a.inner._particle_kernel
    assert b._particle_kernel is b.inner._particle_kernel
    assert a._particle_kernel is not b._particle_kernel
    assert a.is_root and not a.inner.is_root


def test_event_from_a_nyto_submodule_reaches_the_species():
    a = Outer()
    b = a.randn()
    w = nn.Parameter(torch.randn(2))
    a.inner.bonus = w
    assert a.inner.bonus is w and "inner.bonus" in a.to_particle().params
    b.touch()
    assert torch.equal(b.inner.bonus, w) and b.inner.bonus is not w
    del a.inner.lin
    b.touch()
    assert not hasattr(b.inner, "lin") and not hasattr(a.inner, "lin")
    a.inner.lin = None  # a missing name set to None stays a plain attribute-free no-op
    b.inner.register_buffer("count", torch.ones(()))  # per-particle (Solution 2): no event
    assert b._version_kernel is a._version_kernel


def test_plain_child_structural_changes_become_events():
    net = Net()
    other = net.randn()
    net.head.bias = None  # nn.Linear is plain: the facade finds it before the next operation
    net.body[0].extra = nn.Parameter(torch.ones(4))
    net.body.append(nn.Tanh())
    v = net._version_kernel
    assert v.version == 3 and v.is_newest
    other.touch()
    assert other.head.bias is None
    assert torch.equal(other.body[0].extra, torch.ones(4))
    assert isinstance(other.body[3], nn.Tanh)
    assert other.eval()(torch.randn(5, 3)).shape == (5, 2)
    # a buffer reassigned in a plain child is per-particle state (the seed's Solution 1)
    net.body[1].running_mean = torch.full((4,), 7.)
    assert net._version_kernel is v
    assert torch.equal(other.touch().body[1].running_mean, torch.zeros(4))


def test_replacing_a_plain_child_is_replayed_with_its_attributes():
    net = Net()
    other = net.clone()
    net.body[0] = nn.Linear(3, 4, bias=False)
    net.touch()  # edits inside plain children are recorded at the particle's next facade call
    other.touch()
    assert other.body[0].bias is None and other.body[0] is not net.body[0]
    assert torch.equal(other.body[0].weight, net.body[0].weight)


def test_batchnorm_statistics_do_not_leak_between_particles():
    net = Net().train()
    clone = net.clone()
    mixed = 0.5 * net + 0.5 * clone
    net(torch.randn(8, 3) + 3)
    assert not torch.equal(net.body[1].running_mean, torch.zeros(4))
    assert torch.equal(clone.body[1].running_mean, torch.zeros(4))
    assert torch.equal(mixed.body[1].running_mean, torch.zeros(4))


def test_failed_events_change_nothing_and_are_typed():
    net = Outer()
    other = net.clone()
    v = net._version_kernel
    before = {k: t.clone() for k, t in net.state_dict().items()}
    failing = [
        (lambda: net.register_parameter("a.b", nn.Parameter(torch.ones(2))), "without dots"),
        (lambda: setattr(net.inner, "count", "seven"), "as buffer 'count'"),
        (lambda: net.register_parameter("typed", torch.ones(2)), "must be an nn.Parameter"),
        (lambda: setattr(net, "scale", torch.ones(1)), "torch.nn.Parameter or None expected"),
        (lambda: net.set_param_config(operational="yes"), "must be True, False or None"),
        (lambda: net.set_param_config(operational=False, name="nothing"),
         "not a parameter or submodule"),
        (lambda: net.apply_param_config(lambda pid, c: setattr(c, "tags", ["a"])), "hashable"),
        (lambda: net.register_buffer("buf", 3), "must be a tensor"),
    ]
    for action, message in failing:
        with pytest.raises(nf.NytorchFuncError, match=message):
            action()
        assert net._version_kernel is v and v.is_newest
    assert before.keys() == net.state_dict().keys()
    assert all(torch.equal(before[k], net.state_dict()[k]) for k in before)
    assert other.touch()._version_kernel is v


def test_failed_replacement_rolls_back_everything():
    net = Outer()
    other = net.clone()
    v = net._version_kernel
    weird = nn.Linear(2, 2)
    weird.__dict__["_unpicklable"] = (x for x in ())  # a generator: cannot be deep-copied
    with pytest.raises(nf.SchemaError, match="replacing 'inner'|cannot copy"):
        net.inner = weird
    assert net._version_kernel is v and v.is_newest
    assert isinstance(net.inner, Inner) and other._version_kernel is v


def test_events_before_binding_are_construction():
    net = Outer()
    net.late = nn.Parameter(torch.zeros(1))  # no species yet: plain construction
    assert net._version_kernel.version == 0
    assert "late" in net.to_particle().params


def test_child_configs_carry_into_the_parent_species():
    inner = Inner()
    inner.set_param_config(operational=False, clone=False, name="lin")

    class Holder(nf.NytoModule):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.w = nn.Parameter(torch.ones(1))

    h = Holder(inner)
    p = h.to_particle()
    assert p.config("inner.lin.weight").shared and p.config("w").operational
    assert (2 * h).inner.lin.weight is h.inner.lin.weight


def test_bridges_round_trip_through_the_core_particle():
    net = Net().eval()
    p = net.to_particle()
    assert nf.from_module(net).schema is p.schema  # the __nytorch_particle__ hook
    assert p["head.weight"] is net.head.weight
    x = torch.randn(4, 3)
    assert torch.allclose(nf.apply(p, x), net(x))
    back = nf.NytoModule.from_particle(p * 2)
    assert type(back) is Net and back._version_kernel is p.schema
    assert torch.allclose(back.head.weight, 2 * net.head.weight)
    assert torch.equal(back.body[1].running_var, net.body[1].running_var)
    # a particle op between the rebuilt module and the original works (same species)
    assert torch.allclose((back - net).head.weight, net.head.weight)
    with pytest.raises(nf.SchemaError, match="not a NytoModule"):
        nf.NytoModule.from_particle(nf.from_module(nn.Linear(2, 2)))


def test_core_add_module_uses_the_module_hook():
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2)))
    grown = nf.add_module(p, "1", Inner())
    assert "1.lin.weight" in grown.params and "1.count" in grown.buffers


def test_core_events_on_the_particle_reach_facade_modules():
    net = Net()
    q = nf.add_param(net.to_particle(), "from_core", torch.ones(3))
    assert not hasattr(net, "from_core")
    net.touch()
    assert torch.equal(net.from_core, torch.ones(3)) and q.schema is net._version_kernel


def test_orphaned_submodule_results_fail_with_a_typed_error():
    root = Outer()
    sub = root.inner + 1
    assert torch.equal(sub.lin.weight, root.inner.lin.weight + 1)
    gc.collect()
    with pytest.raises(nf.VersionError, match="root module was freed"):
        sub.touch()


def test_lstm_particle_operations_keep_flat_weights_in_sync():
    class Tagger(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4)

        def forward(self, x):
            return self.lstm(x)[0]

    a = Tagger()
    b = 0 * a
    x = torch.randn(5, 1, 3)
    expected = nf.apply(nf.from_module(nn.LSTM(3, 4)).zeros(), x)[0]
    assert torch.allclose(b(x), expected)


def test_no_objects_for_the_cycle_collector():
    gc.collect()
    gc.disable()
    try:
        net = Net()
        refs = [weakref.ref(net)]
        other = net.randn()
        for _ in range(3):
            other = 0.5 * net + 0.5 * other
            refs.append(weakref.ref(other))
        net.extra = nn.Linear(4, 4)
        other.touch()
        del net.extra
        net.head.bias = None
        other.touch()
        kernel = weakref.ref(other._particle_kernel)
        p = other.to_particle()
        product = other.product() * 2
        del net, other, p, product
        assert all(r() is None for r in refs) and kernel() is None
        assert gc.collect() == 0
    finally:
        gc.enable()
