"""Shared model builders and checks for the core and version-manager tests.

Every builder returns a fresh, real ``nn.Module`` (no mocks) and, where a forward pass needs
one, an ``example_input()`` of matching shape. ``unchanged`` is the "nothing moved" check of
torch's ``test_stateless``: it snapshots species, particles and their tensors and verifies,
after the block, that a (failed) call left all of them exactly as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import nytorch_func as nf

__all__ = ["mlp", "convnet", "LSTMTagger", "lstm_tagger", "bn_net", "embedding_net",
           "nested_sequential", "TiedLM", "tied_model", "BUILDERS", "example_input",
           "assert_same_values", "values", "unchanged"]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 5))


class LSTMTagger(nn.Module):
    """The seed chapter's tagger: pretrained embeddings, an LSTM and a classifier."""

    def __init__(self, word_embeddings: nn.Embedding, embedding_dim: int, hidden_dim: int,
                 tagset_size: int) -> None:
        super().__init__()
        self.word_embeddings = word_embeddings
        self.lstm = nn.LSTM(embedding_dim, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        return F.softmax(tag_space, dim=1)


def lstm_tagger() -> nn.Module:
    return LSTMTagger(nn.Embedding(32, 6).requires_grad_(False), 6, 6, 3)


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def embedding_net() -> nn.Module:
    return nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(3 * 4, 2))


def nested_sequential() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 5), nn.Sequential(nn.Linear(5, 5), nn.ReLU())),
        nn.Sequential(nn.Linear(5, 2)))


class TiedLM(nn.Module):
    """Input embedding and output projection share one weight (two paths, one tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(tokens))))


def tied_model() -> nn.Module:
    return TiedLM()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp, "convnet": convnet, "lstm_tagger": lstm_tagger, "bn_net": bn_net,
    "embedding_net": embedding_net, "nested_sequential": nested_sequential, "tied": tied_model,
}


def example_input(name: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch for the model ``BUILDERS[name]`` builds."""
    g = generator or torch.Generator().manual_seed(1)
    if name in ("mlp", "bn_net", "nested_sequential"):
        return torch.randn(5, 4, generator=g)
    if name == "convnet":
        return torch.randn(2, 1, 6, 6, generator=g)
    if name == "lstm_tagger":
        return torch.randint(0, 32, (7,), generator=g)
    if name == "embedding_net":
        return torch.randint(0, 10, (5, 3), generator=g)
    if name == "tied":
        return torch.randint(0, 7, (2, 5), generator=g)
    raise KeyError(name)


# checks -------------------------------------------------------------------------------------

def values(p: nf.Particle) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``p`` by canonical path (shared ones included)."""
    return {**p.params, **p.buffers}


def assert_same_values(a: nf.Particle, b: nf.Particle, *, exact: bool = True) -> None:
    """Same schema object and equal tensors at every path."""
    assert a.schema is b.schema, (a.schema, b.schema)
    va, vb = values(a), values(b)
    assert list(va) == list(vb)
    for key in va:
        x, y = va[key], vb[key]
        assert x.shape == y.shape and x.dtype == y.dtype, key
        same = torch.equal(x, y) if exact else torch.allclose(x, y, equal_nan=True)
        assert same, f"values differ at {key!r}"


@contextlib.contextmanager
def unchanged(*particles: nf.Particle) -> Iterator[None]:
    """Check that the block leaves every species, particle and tensor involved as it was.

    Recorded: each species' length and head (and that the head has no successor), each
    particle's schema and leaf objects, the values of every leaf and shared tensor, and
    each leaf's ``requires_grad``. Used around calls that must fail without side effects.
    """
    species = {id(p.species): p.species for p in particles}
    before_species = {k: (len(s), s.head, len(s.live_versions())) for k, s in species.items()}
    before = []
    for p in particles:
        tensors = values(p)
        before.append((p, p.schema, p.leaves, p.training,
                       {k: (t, t.detach().clone(), t.requires_grad) for k, t in tensors.items()},
                       dict(p.schema.shared), p.schema._next))
    yield
    for k, s in species.items():
        length, head, live = before_species[k]
        assert len(s) == length, f"species {s.name} grew from {length} to {len(s)}"
        assert s.head is head, "the species head moved"
        assert len(s.live_versions()) == live
    for p, schema, leaves, training, tensors, shared, link in before:
        assert p.schema is schema and p.leaves is leaves and p.training == training
        assert schema._next is link, "a version was linked after a failed call"
        assert dict(schema.shared) == shared
        now = values(p)
        assert list(now) == list(tensors)
        for key, (obj, copy, rg) in tensors.items():
            assert now[key] is obj, f"{key!r} was replaced"
            assert torch.equal(obj.detach(), copy), f"{key!r} changed in place"
            assert obj.requires_grad == rg, f"{key!r} requires_grad changed"
