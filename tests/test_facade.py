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
    v = net._version_kernel  # the three edits found at once: one event, all or nothing
    assert v.version == 1 and v.is_newest
    assert [kind for kind, _ in _steps(v)] == ["add_param", "add_module_sharing_buffers", "set_none"]
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


def _steps(version):
    """``(kind, path)`` of the event that led to ``version`` (the steps of a batch)."""
    species = version.species
    event = species.version(version.version - 1).event
    return [(e.kind, e.path) for e in getattr(event, "events", (event,))]


def test_buffers_are_shared_between_particles_as_in_nytorch():
    net = Net().train()
    clone = net.clone()
    mixed = 0.5 * net + 0.5 * clone
    assert clone.body[1].running_mean is net.body[1].running_mean is mixed.body[1].running_mean
    net(torch.randn(8, 3) + 3)  # BatchNorm updates its statistics in place: every particle sees it
    assert not torch.equal(clone.body[1].running_mean, torch.zeros(4))
    # a particle that needs its own statistics gives itself its own tensors (no event: the
    # seed's Solution 1, a buffer reassigned inside a plain module)
    v = clone._version_kernel
    clone.body[1].running_mean = torch.zeros(4)
    clone(torch.randn(8, 3))
    assert clone.body[1].running_mean is not net.body[1].running_mean
    assert clone._version_kernel is v and v.is_newest


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
    # nytorch's clone=False: per particle in the core, the very tensor in operation results
    assert p.config("inner.lin.weight") == nf.ParamConfig(operational=False, clone=True,
                                                         nytorch_clone=False)
    assert p.config("w").operational
    assert (2 * h).inner.lin.weight is h.inner.lin.weight
    seen = []
    h.apply_param_config(lambda pid, c: seen.append((pid, c.operational, c.clone)))
    assert seen == [(0, False, False), (1, False, False), (2, True, True)]


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


# --- round two: save/load, None slots filled again, the fast path's structure check ----------

class Saved(nf.NytoModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.inner = Inner()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.inner.lin(self.body(x)[:, :2]).repeat(1, 2))


def test_save_and_load_a_facade_particle_after_events(tmp_path):
    torch.manual_seed(0)
    net = Saved()
    other = net.randn()
    net.body(torch.randn(8, 3))  # BatchNorm statistics: per-particle state that must round-trip
    net.extra = nn.Parameter(torch.ones(2))
    net.more = Inner()
    net.head.bias = None
    net.apply_param_config(lambda pid, c: setattr(c, "tag", pid % 2 == 0))
    net.set_param_config(operational=False, name="inner")
    for module in (net, other.touch()):
        path = tmp_path / "p.safetensors"
        nf.save(path, module.to_particle())
        back = nf.NytoModule.from_particle(nf.load(path))
        x = torch.randn(5, 3)
        assert type(back) is Saved and type(back.inner) is Inner and type(back.more) is Inner
        assert torch.equal(back.eval()(x), module.eval()(x))
        assert _same_tensors(back, module) and back.head.bias is None
        assert back._version_kernel.version == module._version_kernel.version == 5
        assert back.to_particle().config("extra") == module.to_particle().config("extra")
        assert back.to_particle().config("inner.lin.weight").operational is False
        # a working module of a species of its own: arithmetic, events, no tie to the source
        doubled = back + back
        assert torch.equal(doubled.extra, 2 * module.extra)
        assert torch.equal(doubled.inner.lin.weight, back.inner.lin.weight)  # not operational
        back.late = nn.Parameter(torch.zeros(1))
        assert not hasattr(doubled, "late") and hasattr(doubled.touch(), "late")
        with pytest.raises(nf.SpeciesMismatchError):
            back + module


def test_a_none_slot_can_be_filled_again_on_every_particle():
    class Lin(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.bias = nn.Parameter(torch.zeros(2))
            self.sub = nn.Linear(2, 2)
            self.plain = nn.Linear(2, 2)

    net = Lin()
    other = net.clone()
    net.bias = None
    assert net.bias is None and other.touch().bias is None
    filled = nn.Parameter(torch.full((2,), 3.0))
    net.bias = filled
    assert net.bias is filled  # the initiator keeps its very object
    assert other.touch().bias is not filled and torch.equal(other.bias, filled)
    net.sub = None
    assert other.touch().sub is None
    new_sub = nn.Linear(2, 3)
    net.sub = new_sub
    assert net.sub is new_sub and other.touch().sub is not new_sub
    assert other.sub.weight.shape == (3, 2) and torch.equal(other.sub.weight, new_sub.weight)
    net.plain.bias = None  # inside a plain child: an event when the facade next looks at net
    assert net.touch().plain.bias is None and other.touch().plain.bias is None
    net.plain.bias = nn.Parameter(torch.ones(2))
    assert torch.equal(net.touch().plain.bias, torch.ones(2))
    assert torch.equal(other.touch().plain.bias, torch.ones(2))
    assert net._version_kernel is other._version_kernel and net._version_kernel.version == 6
    total = net + other
    assert torch.equal(total.bias, torch.full((2,), 6.0))
    assert torch.equal(total.plain.bias, torch.full((2,), 2.0))


@pytest.mark.parametrize("edit", [
    "del_plain_param", "add_plain_param", "swap_plain_names", "replace_plain_child",
    "param_shape", "param_dtype", "fill_none", "add_plain_buffer"])
def test_edits_behind_the_facade_are_seen_by_the_next_operation(edit):
    class M(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1, bias=False))

    a = M()
    b = a.randn()
    a + b  # plans are cached now: the next operation must still see the edit
    before = a._version_kernel
    lin0, lin2 = a.seq[0], a.seq[2]
    if edit == "del_plain_param":
        del lin0.bias
    elif edit == "add_plain_param":
        lin2.extra = nn.Parameter(torch.ones(1))
    elif edit == "swap_plain_names":  # same sizes, other names
        del lin0.bias
        lin0.other = nn.Parameter(torch.ones(3))
    elif edit == "replace_plain_child":
        a.seq[1] = nn.Tanh()
    elif edit == "param_shape":
        lin2.weight = nn.Parameter(torch.ones(2, 3))
    elif edit == "param_dtype":
        lin2.weight.data = lin2.weight.data.double()
    elif edit == "fill_none":
        lin2.bias = nn.Parameter(torch.ones(1))
    elif edit == "add_plain_buffer":
        a.seq[1].register_buffer("seen", torch.zeros(1))
    out = a + b
    assert not before.is_newest and a._version_kernel.is_newest
    assert out._version_kernel is a._version_kernel is b._version_kernel
    assert [n for n, _ in out.named_parameters()] == [n for n, _ in a.named_parameters()]
    assert [n for n, _ in b.named_buffers()] == [n for n, _ in a.named_buffers()]
    assert type(out.seq[1]) is type(a.seq[1]) and out.seq[1] is not a.seq[1]


def test_results_are_new_trees_that_share_no_storage_or_dicts():
    a = Net()
    b = a.randn()
    a.set_param_config(operational=False, name="head")
    for out in (a + b, 2 * a, a.clone(), -a):
        pairs = list(zip(out.modules(), a.modules()))
        assert all(m is not n and type(m) is type(n) for m, n in pairs)
        assert all(m._parameters is not n._parameters and m._modules is not n._modules
                   and m._buffers is not n._buffers for m, n in pairs)
        for (name, t), u in zip(out.named_parameters(), a.parameters()):
            assert type(t) is nn.Parameter and t.requires_grad and t.is_leaf
            assert t.untyped_storage().data_ptr() != u.untyped_storage().data_ptr(), name
        assert torch.equal(out.head.weight, a.head.weight)  # carried over, as a copy
        assert out._particle_kernel is not a._particle_kernel
    assert torch.equal((a + b).body[0].weight, a.body[0].weight + b.body[0].weight)
    assert torch.equal((3 - a).body[0].bias, 3 - a.body[0].bias)
    assert torch.equal((a ** 2).body[0].bias, a.body[0].bias ** 2)
    a.body[0].weight.sum().backward()  # autograd still works on the source


def test_module_cycles_warn_as_in_nytorch_and_never_hang():
    class A(nf.NytoModule):
        def __init__(self, root):
            super().__init__()
            self.root = root

    class B(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.submodule = A(self)

    with pytest.warns(UserWarning, match="circular references"):
        b = B()  # the back-reference closes a cycle: kept as a plain attribute
    a = b.submodule
    assert "submodule" not in b._modules and a.root is b
    # as in nytorch: B went into A's particle (A.root = B came first), A is the root
    assert a.is_root and not b.is_root and b._particle_kernel is a._particle_kernel
    assert [n for n, _ in a.named_modules()] == ["", "root"]
    twice = a.clone()
    assert twice.root is not b and twice.root.submodule is a  # a plain attribute is shared
    del a, b, twice

    class Plain(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(2, 2))

    net = Plain()
    other = net.clone()
    net.seq.append(net.seq)  # behind the facade's back, inside a plain module: no warning there
    with pytest.raises(nf.SchemaError, match="cycle"):
        net + other
    del net.seq[1]
    assert torch.equal((net + other).seq[0].weight, net.seq[0].weight + other.seq[0].weight)
