"""Trying to break the facade: results built when first used, dtypes, real models, populations,
checkpoints, long loops (memory, the cycle collector)."""

import copy
import gc
import io
import pickle
import weakref

import pytest
import torch
from torch import nn

import nytorch_func as nf
import nytorch_func.compat as nyto
from nytorch_func._facade._handle import TAGS
from nytorch_func._facade._plan import DEFERRED


class Zoo(nf.NytoModule):
    """Conv2d + BatchNorm, an LSTM, an Embedding, nested Sequentials, a plain attribute."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        self.lstm = nn.LSTM(4, 3)
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), nn.Linear(3, 2))
        self.rate = 0.5

    def forward(self, x, s):
        image = self.conv(x).mean((2, 3))
        seq = self.lstm(self.emb(s).unsqueeze(1))[0][-1]
        return self.head(seq) * self.rate + image.sum(1, keepdim=True)


X = torch.randn(3, 1, 5, 5)
S = torch.tensor([1, 2, 4])


def _deferred(m):
    return DEFERRED in m.__dict__


# -- results built when first used ----------------------------------------------------------------

@pytest.mark.parametrize("use", [
    "forward", "attribute", "parameters", "state_dict", "repr", "dir", "eval", "deepcopy",
    "pickle", "setattr", "delattr", "register_buffer", "particle_module", "touch", "compile"])
def test_a_result_is_built_correctly_whatever_uses_it_first(use):
    torch.manual_seed(0)
    a = Zoo().eval()
    b = a.randn()
    out = 0.5 * a + 0.5 * b  # one tree built at most: the intermediates never are
    assert _deferred(out)
    expected = {n: 0.5 * t + 0.5 * u for (n, t), (_, u) in zip(a.named_parameters(),
                                                                b.named_parameters())}
    if use == "forward":
        assert out(X, S).shape == (3, 2)
    elif use == "attribute":
        assert isinstance(out.conv[0], nn.Conv2d) and out.rate == 0.5
    elif use == "parameters":
        assert len(list(out.parameters())) == len(list(a.parameters()))
    elif use == "state_dict":
        assert out.state_dict().keys() == a.state_dict().keys()
    elif use == "repr":
        assert "LSTM" in repr(out)
    elif use == "dir":
        assert "conv" in dir(out)
    elif use == "eval":
        out.train()
        assert out.training and out.conv[1].training
    elif use == "deepcopy":
        out = copy.deepcopy(out)
    elif use == "pickle":
        buffer = io.BytesIO()
        torch.save(out, buffer)
        out = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    elif use == "setattr":
        out.extra = nn.Parameter(torch.ones(1))
        assert "extra" in dict(out.named_parameters()) and "extra" in b.touch()._parameters
    elif use == "delattr":
        del out.emb
        assert not hasattr(b.touch(), "emb")
        return
    elif use == "register_buffer":
        out.register_buffer("count", torch.zeros(1))
        assert torch.equal(b.touch().count, torch.zeros(1))
    elif use == "particle_module":
        out = nyto.ParticleModule(out)
        assert out(X, S).shape == (3, 2)
        out = out.root_module
    elif use == "touch":
        assert out.touch() is out and _deferred(out)  # nothing to do: still not built
    elif use == "compile":
        compiled = torch.compile(out, backend="eager", fullgraph=False)
        assert compiled(X, S).shape == (3, 2)
    got = dict(out.named_parameters())
    for name, value in expected.items():
        assert torch.allclose(got[name], value), name
    assert out(X, S).shape == (3, 2)
    assert not _deferred(out) or use == "touch"


def test_a_result_keeps_the_attributes_of_the_moment_it_was_made():
    a = Zoo()
    b = a.randn()
    out = a + b
    a.rate = 0.9  # as nytorch's copy_module: the result copied the attributes then
    a.head[1] = nn.Linear(3, 2)  # an edit behind the back of the source, after the operation
    assert out.rate == 0.5 and out.head[1] is not a.head[1]
    assert out.head[1].weight.shape == (2, 3) and out._version_kernel.version == 0
    a.touch()  # the edit becomes an event at a's next facade call
    assert out.touch()._version_kernel.version == 1
    assert torch.equal(out.head[1].weight, a.head[1].weight) and out.head[1] is not a.head[1]


def test_a_result_does_not_hold_the_sources_tensors():
    a = Zoo()
    b = a.randn()
    out = a + b
    gone = weakref.ref(b.emb.weight)
    del b
    gc.collect()
    assert gone() is None and _deferred(out)
    assert out.emb.weight.shape == (5, 4)


def test_chains_of_results_never_used_compute_what_the_trees_would():
    torch.manual_seed(1)
    a = Zoo()
    b = a.rand()
    chain = ((a + b) * 2 - a).clone() / 4 + (-b)
    built = (nf.NytoModule.from_particle(a.to_particle()) + b).emb.weight  # a built tree
    assert torch.allclose(built, a.emb.weight + b.emb.weight)
    assert torch.allclose(chain.emb.weight, ((a.emb.weight + b.emb.weight) * 2 - a.emb.weight) / 4
                          - b.emb.weight)
    assert torch.equal(chain.conv[1].running_var, a.conv[1].running_var)
    assert chain.conv[1].running_var is a.conv[1].running_var  # buffers by reference


# -- dtypes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.complex64])
def test_dtypes_survive_operations_events_and_checkpoints(dtype, tmp_path):
    class D(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, dtype=dtype))
            self.steps = nn.Parameter(torch.arange(2), requires_grad=False)  # integer: carried
            self.register_buffer("mask", torch.tensor([True, False]))

    a = D()
    b = a.clone()
    with torch.no_grad():
        b.w.mul_(3)
    for out in (a + b, 2 * a, a.clone(), -b, a ** 2, a / b):
        assert out.w.dtype == dtype and out.steps.dtype == torch.int64 and out.mask.dtype == torch.bool
        assert out.steps is not a.steps and torch.equal(out.steps, a.steps)
    assert torch.allclose((a + b).w, torch.full((3,), 4, dtype=dtype))
    a.extra = nn.Parameter(torch.ones(2, dtype=dtype))
    assert b.touch().extra.dtype == dtype
    nf.save(tmp_path / "d.safetensors", b.to_particle())
    back = nf.NytoModule.from_particle(nf.load(tmp_path / "d.safetensors", classes=[D]))
    assert back.w.dtype == dtype and torch.equal(back.w, b.w) and torch.equal(back.mask, b.mask)


def test_a_whole_particle_converted_in_place_is_the_cores_conversion_event():
    a = Zoo()
    b = a.randn()
    first = a._version_kernel  # keeps the history alive
    mine = b.emb.weight.clone()
    a + b
    a.double()  # nn.Module.to: the same objects, another dtype
    out = a + b
    assert out.emb.weight.dtype == torch.float64 and out.conv[1].num_batches_tracked.dtype == torch.int64
    assert "to float64" in str(nf.history(first.species))
    assert b.emb.weight.dtype == torch.float64  # b converted its own values
    assert torch.allclose(b.emb.weight, mine.double()) and not torch.equal(b.emb.weight, a.emb.weight)
    assert out(X.double(), S).dtype == torch.float64


def test_a_part_converted_in_place_is_a_replacement():
    a = Zoo()
    b = a.randn()
    a + b
    a.head.double()  # a plain child converted: the species takes this particle's new tensors
    out = a + b.touch()
    assert out.head[1].weight.dtype == torch.float64
    assert torch.equal(b.touch().head[1].weight, a.head[1].weight)


# -- real models, populations, checkpoints --------------------------------------------------------

def test_real_models_forward_as_their_particles_do(tmp_path):
    torch.manual_seed(2)
    a = Zoo().eval()
    b = a.randn()
    for m in (a, b, a + b, 0.3 * a + 0.7 * b, b.clone()):
        p = m.to_particle()
        assert torch.allclose(m(X, S), nf.apply(p, X, S), atol=1e-6)
    pop = nf.population(a.to_particle(), 4)
    member = nf.NytoModule.from_particle(pop[2])
    assert type(member) is Zoo and member(X, S).shape == (3, 2)
    assert torch.allclose((member + a).emb.weight, pop[2]["emb.weight"] + a.emb.weight)
    nf.save(tmp_path / "zoo.safetensors", (a + b).to_particle())
    back = nf.NytoModule.from_particle(nf.load(tmp_path / "zoo.safetensors"))
    assert torch.allclose(back(X, S), (a + b)(X, S), atol=1e-6)


def test_modules_without_tensors_and_with_buffers_only():
    class Empty(nf.NytoModule):
        def forward(self, x):
            return x

    class Buffers(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.arange(4.0))

    e = Empty()
    assert (e + e.clone())(torch.ones(1)) == 1 and len(list((2 * e).parameters())) == 0
    bu = Buffers()
    out = bu + bu.randn()
    assert out.table is bu.table
    bu.extra = nn.Parameter(torch.ones(1))
    assert torch.equal((bu + 1).extra, torch.full((1,), 2.0))


# -- long loops ----------------------------------------------------------------------------------

def test_long_loops_free_everything_without_the_cycle_collector():
    a = Zoo()
    b = a.randn()
    gc.collect()
    gc.disable()
    try:
        before = len(TAGS)
        x = a
        refs = []
        for i in range(300):
            x = 0.5 * x + 0.5 * b
            if i % 50 == 0:
                x.emb  # built now and then
                refs.append(weakref.ref(x))
        del x
        assert all(r() is None for r in refs)
        assert len(TAGS) <= before and gc.collect() == 0
    finally:
        gc.enable()


def test_results_are_not_pickled_half_built():
    a = Zoo()
    out = a * 2
    state = out.__getstate__()
    assert DEFERRED not in state and "_modules" in state
    assert pickle.loads(pickle.dumps(nn.Linear(2, 2))) is not None  # pickling itself untouched


def test_deleting_or_inserting_a_child_of_a_sequential_keeps_every_particles_values():
    class Stack(nf.NytoModule):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2), nn.Linear(2, 2))

    a = Stack()
    b = a.randn()
    own = [b.seq[2].weight, b.seq[3].weight]
    ids = a.get_param_id(a.seq[2].weight)
    del a.seq[1]  # behind the facade's back: torch renumbers the later children
    a.touch()
    b.touch()
    assert [type(m).__name__ for m in b.seq] == ["Linear", "Linear", "Linear"]
    assert b.seq[1].weight is own[0] and b.seq[2].weight is own[1]  # moved, not copied
    assert a.get_param_id(a.seq[1].weight) == ids
    a.seq.insert(1, nn.ReLU())
    a.seq.insert(0, nn.Linear(2, 2))
    a.touch()
    b.touch()
    assert [type(m).__name__ for m in b.seq] == ["Linear", "Linear", "ReLU", "Linear", "Linear"]
    assert b.seq[3].weight is own[0] and b.seq[4].weight is own[1]
    assert torch.equal(b.seq[0].weight, a.seq[0].weight) and b.seq[0].weight is not a.seq[0].weight
    assert torch.allclose((a + b).seq[4].weight, a.seq[4].weight + own[1])
