"""Every example of the seed chapter (version manager), with ``import nytorch_func as nyto`` and
with ``import nytorch_func.compat as nyto``.

Only the import line differs from the chapter; each ``>>>`` outcome of the chapter is asserted.
The chapter's classes are made once per import (``_chapter``) and every test takes the import
as a parameter. Where nytorch 1.1.0 is installed the same tests also run on it, as the oracle:
it gives every outcome but Solution 2's, which it gets wrong (DESIGN.md).
"""

import gc
import importlib
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.fixture(params=["nytorch_func", "nytorch_func.compat", "nytorch"])
def nyto(request):
    if request.param == "nytorch":
        nytorch = pytest.importorskip("nytorch")
        if request.node.originalname == "test_solution2_super_register_buffer_updates_only_that_particle":
            request.applymarker(pytest.mark.xfail(
                strict=True, reason="nytorch 1.1.0 makes Solution 2 a species event"))
        if request.node.originalname == "test_chapter_objects_leave_nothing_for_the_cycle_collector":
            pytest.skip("nytorch's kernels are reference cycles by design")
        return _chapter(nytorch)
    return _chapter(importlib.import_module(request.param))


def _chapter(nyto):
    """The chapter's classes, subclassing ``nyto.NytoModule`` as the chapter does."""

    class LSTMTagger(nyto.NytoModule):
        def __init__(self, word_embeddings, embedding_dim, hidden_dim, tagset_size):
            super().__init__()
            self.word_embeddings = word_embeddings
            self.lstm = nn.LSTM(embedding_dim, hidden_dim)
            self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

            self.set_param_config(operational=False,
                                  clone=False,
                                  name='word_embeddings')

        def forward(self, sentence):
            embeds = self.word_embeddings(sentence)
            lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
            tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
            tag_scores = F.softmax(tag_space, dim=1)
            return tag_scores

    class Linear(nyto.NytoModule):
        def __init__(self, w: float, b: float) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.Tensor([w]))
            self.bias = nn.Parameter(torch.Tensor([b]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.weight * x + self.bias

    class MeanProblem(nyto.NytoModule):
        def __init__(self, rate=0.5):
            super().__init__()
            self.layer = nn.Linear(4, 1)
            self.register_buffer("mean", torch.zeros(1))
            self.rate = rate

        def forward(self, x):
            y = self.layer(x)
            self.update_mean(y)
            return y

        def update_mean(self, y):
            with torch.no_grad():
                self.mean = (1-self.rate)*self.mean + self.rate*y.mean()

    class MeanRecord(nn.Module):
        def __init__(self, rate=0.5):
            super().__init__()
            self.register_buffer("mean", torch.zeros(1))
            self.rate = rate

        def update_mean(self, output):
            with torch.no_grad():
                self.mean = (1-self.rate)*self.mean + self.rate*output.mean()

    class MeanSolution1(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)
            self.mean_record = MeanRecord()

        def forward(self, x):
            y = self.layer(x)
            self.mean_record.update_mean(y)
            return y

    class MeanSolution2(nyto.NytoModule):
        def __init__(self, rate=0.5):
            super().__init__()
            self.layer = nn.Linear(4, 1)
            self.register_buffer("mean", torch.zeros(1))
            self.rate = rate

        def forward(self, x):
            y = self.layer(x)
            self.update_mean(y)
            return y

        def update_mean(self, y):
            with torch.no_grad():
                new_mean = (1-self.rate)*self.mean + self.rate*y.mean()
                super().register_buffer("mean", new_mean)

    return types.SimpleNamespace(**{k: v for k, v in locals().items() if k != "nyto"},
                                 name=nyto.__name__)


# -- the LSTMTagger example: swapping the embeddings of a whole species ---------------------------

def test_lstm_tagger_species_and_swapped_embeddings(nyto):
    word_embeddings = nn.Embedding(32, 6).requires_grad_(False)
    net1 = nyto.LSTMTagger(word_embeddings, 6, 6, 3)
    net2 = net1.randn()
    net3 = net1.randn()

    # same parameter ids and configs; the embeddings are the very tensor in every result
    ids = [net1.get_param_id(p) for p in net1.parameters()]
    assert ids == [net2.get_param_id(p) for p in net2.parameters()]
    assert net2.word_embeddings.weight is net1.word_embeddings.weight is word_embeddings.weight
    assert not torch.equal(net2.lstm.weight_ih_l0, net1.lstm.weight_ih_l0)
    sentence = torch.tensor([1, 5, 31])
    assert net2(sentence).shape == (3, 3)

    new_word_embeddings = nn.Embedding(64, 6).requires_grad_(False)
    before = net1._version_kernel
    net1.word_embeddings = new_word_embeddings
    assert net1.word_embeddings is new_word_embeddings
    assert net1._version_kernel is not before and net1._version_kernel.is_newest

    # no manual update of net2 / net3: touching (or any particle operation) replays the swap
    assert net2.word_embeddings.num_embeddings == 32
    net2.touch()
    assert net2.word_embeddings.num_embeddings == 64
    assert net2.word_embeddings is not new_word_embeddings
    assert torch.equal(net2.word_embeddings.weight, new_word_embeddings.weight)
    long_sentence = torch.tensor([1, 40, 63])
    assert net2(long_sentence).shape == (3, 3)
    mixed = 0.5 * net1 + 0.5 * net3  # touches net3 first
    assert net3.word_embeddings.num_embeddings == 64
    assert mixed(long_sentence).shape == (3, 3)


# -- the Linear example: versions, delete + touch, initiator / recipient --------------------------

def test_delete_then_touch(nyto):
    net1 = nyto.Linear(1, 2)
    net2 = net1.randn()

    version_before_del = net1._version_kernel
    del net1.weight
    version_after_del = net1._version_kernel
    assert (version_before_del is not version_after_del) is True

    assert hasattr(net2, 'weight') is True
    assert (version_before_del is net2._version_kernel) is True

    net2.touch()
    assert hasattr(net2, 'weight') is False
    assert (version_after_del is net2._version_kernel) is True


def test_initiator_and_recipient_of_a_deletion(nyto):
    net1 = nyto.Linear(10, 5)
    net2 = net1.randn()
    del net1.weight
    net2.touch()
    assert not hasattr(net1, "weight") and not hasattr(net2, "weight")
    assert [n for n, _ in net1.named_parameters()] == [n for n, _ in net2.named_parameters()] == ["bias"]
    assert not torch.equal(net1.bias, net2.bias)  # values stay each particle's own


def test_add_parameter_initiator_and_recipient(nyto):
    net1 = nyto.Linear(1, 2)
    net2 = net1.randn()

    add_parameter = nn.Parameter(torch.randn(1))
    net1.add_parameter = add_parameter
    net2.touch()
    assert (net1.add_parameter is add_parameter) is True
    assert (net2.add_parameter is add_parameter) is False
    assert torch.equal(net2.add_parameter, add_parameter) is True


def test_add_module_initiator_and_recipient(nyto):
    net1 = nyto.Linear(1, 2)
    net2 = net1.randn()

    add_linear = nn.Linear(3, 4)
    net1.add_linear = add_linear
    net2.touch()
    assert (net1.add_linear is add_linear) is True
    assert (net2.add_linear is add_linear) is False
    assert torch.equal(net2.add_linear.weight, add_linear.weight) is True
    assert torch.equal(net2.add_linear.bias, add_linear.bias) is True


def test_add_buffer_initiator_and_recipient(nyto):
    net1 = nyto.Linear(1, 2)
    net2 = net1.randn()

    add_tensor = torch.randn(3, 3)
    net1.register_buffer("add_tensor", add_tensor)
    net2.touch()
    assert (net1.add_tensor is add_tensor) is True
    assert (net2.add_tensor is add_tensor) is True


# -- Avoiding Update Behavior: the problem and both solutions ------------------------------------

def test_problem_assigning_a_buffer_updates_the_whole_species(nyto):
    model = nyto.MeanProblem()
    model_clone = model.clone()
    assert torch.equal(model.mean, torch.tensor([0.]))
    assert torch.equal(model_clone.mean, torch.tensor([0.]))
    x = torch.randn(10, 4)
    y = model(x)
    expected = 0.5 * model.layer(x).mean()
    assert torch.allclose(y, model.layer(x))
    assert torch.allclose(model.mean, expected.reshape(1))
    assert not torch.equal(model.mean, torch.zeros(1))
    # the clone gets the same value: the assignment was a species-wide event
    assert torch.equal(model_clone.touch().mean, model.mean)


def test_solution1_buffer_in_a_plain_module_is_per_particle(nyto):
    model = nyto.MeanSolution1()
    model_clone = model.clone()
    version = model._version_kernel
    assert torch.equal(model.mean_record.mean, torch.tensor([0.]))
    assert torch.equal(model_clone.mean_record.mean, torch.tensor([0.]))
    x = torch.randn(10, 4)
    model(x)
    assert torch.allclose(model.mean_record.mean, 0.5 * model.layer(x).mean().reshape(1))
    assert not torch.equal(model.mean_record.mean, torch.zeros(1))
    assert torch.equal(model_clone.touch().mean_record.mean, torch.tensor([0.]))
    assert model._version_kernel is version and model_clone._version_kernel is version
    # each particle keeps its own record through particle operations too
    model_clone(torch.randn(10, 4) + 5)
    assert not torch.equal(model_clone.mean_record.mean, model.mean_record.mean)


def test_solution2_super_register_buffer_updates_only_that_particle(nyto):
    model = nyto.MeanSolution2()
    model_clone = model.clone()
    version = model._version_kernel
    x = torch.randn(10, 4)
    model(x)
    assert torch.allclose(model.mean, 0.5 * model.layer(x).mean().reshape(1))
    assert not torch.equal(model.mean, torch.zeros(1))
    # nytorch 1.1.0 shows the new mean here; the chapter promises (and we give) the old one
    assert torch.equal(model_clone.touch().mean, torch.tensor([0.]))
    assert model._version_kernel is version and version.is_newest
    # the per-particle value is what the particle holds (and saves)
    assert torch.equal(model.to_particle().buffers["mean"], model.mean)
    assert torch.equal(model_clone.to_particle().buffers["mean"], torch.zeros(1))


def test_chapter_objects_leave_nothing_for_the_cycle_collector(nyto):
    gc.collect()
    gc.disable()
    try:
        test_lstm_tagger_species_and_swapped_embeddings(nyto)
        test_delete_then_touch(nyto)
        test_add_module_initiator_and_recipient(nyto)
        test_problem_assigning_a_buffer_updates_the_whole_species(nyto)
        test_solution1_buffer_in_a_plain_module_is_per_particle(nyto)
        test_solution2_super_register_buffer_updates_only_that_particle(nyto)
        assert gc.collect() == 0
    finally:
        gc.enable()
