"""nf.load's options: device= (load onto another device) and species= (join a live species)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import nytorch_func as nf
from io_helpers import bits_equal, rewrite, roundtrip, same_everything


# devices --------------------------------------------------------------------------------------

def test_load_onto_a_device(tmp_path):
    p = nf.to(nf.from_module(nn.Linear(2, 2)), device="cpu")
    back = roundtrip(tmp_path, p, device="cpu")
    same_everything(p, back)
    back = roundtrip(tmp_path, p, device=torch.device("cpu"))
    assert all(s.device == torch.device("cpu") for s in back.schema.specs)


def test_device_from_a_gpu_run_is_mapped(tmp_path):
    """A file written on a GPU (simulated: its devices rewritten) loads where asked."""
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    q = nf.to(nf.add_param(p.clone(), "s", nn.Parameter(torch.ones(2))), device="cpu")
    path = tmp_path / "gpu.safetensors"
    nf.save(path, {"old": p, "new": q, "g": torch.Generator()})

    def to_cuda(doc):
        text = json.dumps(doc).replace('"cpu"', '"cuda:0"')
        doc.clear()
        doc.update(json.loads(text))

    rewrite(path, to_cuda)
    if not torch.cuda.is_available():
        with pytest.raises(nf.CheckpointError, match=r"cuda:0.*not available.*device='cpu'"):
            nf.load(path)
    with pytest.raises(nf.CheckpointError, match="Generator was saved on cuda"):
        nf.load(path, device="cpu")

    def drop_generator(doc):
        doc["root"]["v"] = doc["root"]["v"][:2]

    rewrite(path, drop_generator)
    back = nf.load(path, device="cpu")
    same_everything(p, back["old"])
    same_everything(q, back["new"])
    assert back["old"].species.version(1).event.device == torch.device("cpu")
    same_everything(nf.touch(p), nf.touch(back["old"]))


@pytest.mark.parametrize("device, error, match", [
    ("meta", nf.CheckpointError, "meta.*holds no data"),
    ("cuda", nf.CheckpointError, "not available"),
    ("tpu:0", nf.CheckpointError, "not a device"),
    (0.5, nf.ArgumentTypeError, "device must be"),
])
def test_bad_devices_are_refused_before_reading(tmp_path, device, error, match):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    path = tmp_path / "p.safetensors"
    nf.save(path, nf.from_module(nn.Linear(2, 2)))
    with pytest.raises(error, match=match):
        nf.load(path, device=device)


# joining a live species -----------------------------------------------------------------------

def _grown(p: nf.Particle) -> nf.Particle:
    p = nf.add_param(p, "gain", nn.Parameter(torch.full((2,), 2.0)))
    return nf.configure(p, "0", operational=False)


def test_join_places_particles_in_the_live_species(tmp_path):
    p = nf.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    live = _grown(p)
    pop = nf.population(live, 4)
    path = tmp_path / "run.safetensors"
    nf.save(path, {"pop": pop, "best": pop[0]})
    later = nf.add_module(live, "head", nn.Linear(2, 2))  # the live species moves on
    back = nf.load(path, species=p.species)
    assert back["pop"].species is p.species and back["pop"].schema is pop.schema
    assert all(bits_equal(a, b) for a, b in zip(back["pop"].leaves, pop.leaves))
    assert torch.equal((back["pop"] - pop)["gain"], torch.zeros(4, 2))
    touched = nf.touch(back["best"])
    assert touched.schema is later.schema and torch.equal(touched["head.weight"],
                                                          nf.touch(pop[0])["head.weight"])
    assert len(p.species) == 4  # joining appended nothing


def test_join_a_species_rebuilt_from_code(tmp_path):
    """A restarted run rebuilds its model (same seed, same events) and joins the checkpoint."""
    def build() -> nf.Particle:
        torch.manual_seed(0)
        return _grown(nf.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU())))

    first = nf.population(build(), 3)
    path = tmp_path / "run.safetensors"
    nf.save(path, first)
    again = build()  # a new species, equal history
    back = nf.load(path, species=again.species)
    mixed = 0.5 * back + 0.5 * nf.population(again, 3)
    assert mixed.species is again.species and mixed.batch_shape == (3,)


@pytest.mark.parametrize("edit, match", [
    (lambda p: nf.add_param(p, "gain", nn.Parameter(torch.full((2,), 3.0))),
     r"v1->v2 snapshot: the values differ"),
    (lambda p: nf.add_param(p, "bias2", nn.Parameter(torch.full((2,), 2.0))),
     r"v1->v2 path: 'gain' in the checkpoint, 'bias2' here"),
    (lambda p: nf.add_buffer(p, "gain", torch.full((2,), 2.0)),
     r"v1->v2: AddParam in the checkpoint, AddBuffer here"),
    (lambda p: p, r"ends at version 1, the checkpoint goes on to version 3"),
])
def test_join_refuses_a_different_history_naming_the_first_difference(tmp_path, edit, match):
    p = nf.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    p = nf.add_buffer(p, "mark", torch.ones(1))  # v1: a shared first step
    saved = _grown(p)
    path = tmp_path / "run.safetensors"
    nf.save(path, [p, saved])
    other = nf.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    base = nf.add_buffer(other, "mark", torch.ones(1))  # holds version 1 alive
    other = edit(base)
    before = len(other.species)
    with pytest.raises(nf.CheckpointError, match="first difference: .*" + match):
        nf.load(path, species=other.species)
    assert len(other.species) == before


def test_join_refuses_other_structures_versions_and_arguments(tmp_path):
    path = tmp_path / "run.safetensors"
    p = nf.from_module(nn.Linear(3, 2))
    nf.save(path, p)
    four = nf.from_module(nn.Linear(4, 2))
    with pytest.raises(nf.CheckpointError, match=r"version 0: spec 'weight' shape: \(2, 3\) in "
                                                 r"the checkpoint, \(2, 4\) here"):
        nf.load(path, species=four.species)
    del four
    with pytest.raises(nf.CheckpointError, match="start at version 0.*was freed.*alive"):
        nf.load(path, species=nf.from_module(nn.Linear(3, 2)).species)
    differs = nn.Linear(3, 2)
    differs.in_features = 99  # a skeleton attribute differs
    wide = nf.from_module(differs)
    with pytest.raises(nf.CheckpointError, match="in_features: 3 in the checkpoint, 99 here"):
        nf.load(path, species=wide.species)
    two = nf.from_module(nn.Linear(2, 2))
    with pytest.raises(nf.CheckpointError, match=r"shape: \(2, 3\) in the checkpoint"):
        nf.load(path, species=two.species)
    moved = nf.add_param(p.clone(), "s", nn.Parameter(torch.ones(1)))
    nf.save(path, moved)
    fresh = nf.from_module(nn.Linear(3, 2))
    with pytest.raises(nf.CheckpointError, match="first difference: the species ends at version 0, the checkpoint starts at version 1"):
        nf.load(path, species=fresh.species)
    nf.save(path, [p, nf.from_module(nn.ReLU())])
    with pytest.raises(nf.CheckpointError, match="holds 2 species"):
        nf.load(path, species=p.species)
    with pytest.raises(nf.ArgumentTypeError, match="species must be a Species"):
        nf.load(path, species=p)
