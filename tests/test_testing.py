"""Unit tests of nytorch_func.testing's strategies: they produce what they promise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings, strategies as st
from hypothesis.errors import NoSuchExample
from torch import nn

import nytorch_func as nf
import nytorch_func.testing as nft

# find() without shrinking: these tests need an example, not the smallest one
FIRST = settings(database=None, max_examples=300, phases=(Phase.generate,),
                 suppress_health_check=list(HealthCheck))

PUBLIC_BEFORE_THE_SPLIT = {
    "modules", "runnable_modules", "particles", "populations", "events", "event_chains",
    "invalid_events", "Recipe", "Edit", "EVENT_KINDS", "build_module", "random_particle",
    "random_population", "tensors_of", "assert_same_values"}


def test_every_public_name_of_the_module_is_still_there():
    assert PUBLIC_BEFORE_THE_SPLIT <= set(nft.__all__)
    assert all(hasattr(nft, name) for name in nft.__all__)
    assert set(nft.__all__) == PUBLIC_BEFORE_THE_SPLIT | {
        "fresh_like", "Mode", "Tag", "assert_leaves_match_schema", "seeded_param",
        "seeded_buffer", "NO_VALUE", "EventKind", "KINDS", "FORWARD_KINDS",
        "check_migration_laws", "MigrationLaws", "MigrationLawError", "LAWS", "Case",
        "stateful_machine", "Reference", "GROWTH_KINDS", "widen_at"}


def test_the_package_is_split_by_job_into_small_files():
    import pathlib

    root = pathlib.Path(nft.__file__).parent
    sizes = {f.name: len(f.read_text().splitlines()) for f in root.glob("*.py")}
    assert len(sizes) >= 8 and max(sizes.values()) <= 500, sizes


@given(nft.modules())
def test_modules_are_small_real_modules(m):
    assert isinstance(m, torch.nn.Module)
    # at most four layers (max_leaves=4), the largest a 2-layer LSTM(2, 2) of 96 numbers
    assert sum(t.numel() for t in m.parameters()) <= 4 * 96
    nf.from_module(m)  # every drawn module converts


def test_modules_shrink_to_one_small_layer():
    m = find(nft.modules(), lambda m: any(True for _ in m.parameters()),
             settings=settings(database=None, max_examples=100, derandomize=True))
    assert not list(m.children()), f"did not shrink to one layer: {m}"
    assert sum(t.numel() for t in m.parameters()) <= 2, f"did not shrink to a small layer: {m}"


def test_modules_can_be_tied_carry_buffers_and_plain_attributes():
    tied = find(nft.modules(), lambda m: len(list(m.named_parameters(remove_duplicate=False)))
                > len(list(m.parameters())), settings=FIRST)
    assert nf.from_module(tied).schema.params[0].paths
    extra = find(nft.modules(), lambda m: any("extra_buf" in n for n, _ in m.named_buffers()),
                 settings=FIRST)
    assert any("extra_buf" in k for k in nf.from_module(extra).buffers)
    for wanted in (nft.Mode, nft.Tag, type(torch.tanh)):
        m = find(nft.modules(), lambda m: any(isinstance(v, wanted) for mod in m.modules()
                                              for k, v in vars(mod).items()
                                              if k.startswith("nft_")), settings=FIRST)
        p = nf.from_module(m)  # converts, the attribute kept on the skeleton
        assert any(isinstance(v, wanted) for mod in p.schema.skeleton.modules()
                   for k, v in vars(mod).items() if k.startswith("nft_"))
    assert find(nft.modules(attributes=False), lambda m: True, settings=FIRST)


def test_recipe_shows_its_attributes_and_code_rebuilds_it():
    from nytorch_func.testing._recipes import recipe_code

    r = nft.Recipe(("Linear", (2, 1), ()), attrs=(("", "nft_mode", nft.Mode.TIMES),))
    assert repr(r) == "Recipe(Linear(2, 1), attr nft_mode=Mode.TIMES)"
    assert nft.build_module(r).nft_mode is nft.Mode.TIMES
    plain = nft.Recipe(("Sequential", (("Linear", (2, 2), ()), ("Linear", (2, 2), ()))),
                       ties=(("1.weight", "0.weight"),))
    again = eval(recipe_code(plain, seed=3), {"nft": nft})
    want = nft.build_module(plain, seed=3)
    assert again[1].weight is again[0].weight
    assert torch.equal(again[0].weight, want[0].weight)


@given(nft.particles())
def test_particles_are_random_and_reproducible(p):
    assert nft.tensors_of(p)
    nft.assert_same_values(nft.random_particle(p, 3), nft.random_particle(p, 3))
    nft.assert_leaves_match_schema(p)


def test_random_particle_follows_a_converted_species():
    p = nf.to(nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))),
              dtype=torch.bfloat16)
    q = nft.random_particle(p, seed=4)
    nft.assert_leaves_match_schema(q)
    assert q["0.weight"].dtype == torch.bfloat16 and q["1.num_batches_tracked"].dtype == torch.int64


def test_assert_leaves_match_schema_names_the_leaf():
    p = nf.from_module(nn.Linear(2, 1))
    bad = nf.Particle(p.schema, tuple(t.double() for t in p.leaves))
    with pytest.raises(AssertionError, match="leaf 'weight' is .*float64.*says.*float32"):
        nft.assert_leaves_match_schema(bad)


def test_fresh_like_keeps_the_class_and_ties_and_draws_new_values():
    m = nn.Sequential(nn.Embedding(3, 2), nn.Linear(2, 3))
    m[1].weight = m[0].weight
    new = nft.fresh_like(m, seed=1)
    assert type(new) is nn.Sequential and new[1].weight is new[0].weight
    assert not torch.equal(new[0].weight, m[0].weight)
    with pytest.raises(nf.ArgumentTypeError):
        nft.fresh_like(torch.zeros(2))


@given(st.data())
def test_events_are_valid_and_readable(data):
    p = data.draw(nft.particles())
    edit = data.draw(nft.events(p))
    assert repr(edit).startswith(edit.kind + "(")
    q = edit.apply(p)
    assert q.version == p.version + 1


@given(st.data())
def test_event_chains_apply_in_order(data):
    p = data.draw(nft.particles())
    chain = data.draw(nft.event_chains(p, 3, min_size=1))
    for edit in chain:
        p = edit.apply(p)
    assert p.version == len(chain)


@given(st.data())
def test_invalid_events_all_fail(data):
    p = data.draw(nft.particles())
    edit = data.draw(nft.invalid_events(p))
    assert edit.invalid
    with pytest.raises(nf.NytorchFuncError):
        edit.apply(p)


def test_every_event_kind_is_drawn():
    nn = torch.nn  # a Linear read by a later Linear: every kind, growth included, applies
    p = nf.from_module(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(),
                                     nn.Linear(2, 1)))
    for kind in nft.KINDS:
        edit = find(nft.events(p, kinds=tuple(nft.KINDS)), lambda e: e.kind == kind,
                    settings=FIRST)
        assert edit.kind == kind


def test_populations_have_members():
    @settings(max_examples=5, database=None)
    @given(nft.populations(min_size=2, max_size=3))
    def check(pop):
        assert 2 <= len(pop) <= 3

    check()


def test_wrong_arguments_are_typed_errors():
    p = nf.from_module(torch.nn.Linear(1, 1))
    with pytest.raises(nf.ArgumentTypeError):
        nft.events(3)
    with pytest.raises(nf.SchemaError, match="unknown event kind 'explode'"):
        nft.events(p, kinds=("explode",))
    with pytest.raises(nf.ArgumentTypeError):
        nft.events(p, kinds="configure")
    with pytest.raises(nf.SchemaError):
        nft.event_chains(p, n=1, min_size=2)
    with pytest.raises(AssertionError, match="differ at 'weight'"):
        nft.assert_same_values(p, p + 1)
    with pytest.raises(nf.ArgumentTypeError):
        nft.random_particle("not a model")


# nft.Reference and the growth sites on named children -----------------------------------------

def _named():
    """An OrderedDict Sequential with numbered children after the named ones (torch's append)."""
    from collections import OrderedDict

    seq = nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), act=nn.ReLU(), fc2=nn.Linear(4, 4)))
    seq.append(nn.Tanh())  # "3"
    seq.append(nn.Linear(4, 2))  # "4"
    return seq


@pytest.mark.parametrize("edit", [
    nft.Edit("del_module", "act"),  # a named child: the numbered ones after it move down
    nft.Edit("del_module", "3"),
    nft.Edit("insert_module", "", nn.Identity(), (("index", 0),)),  # all numbered ones move up
    nft.Edit("insert_module", "", [nn.Identity(), nn.Identity()], (("index", 2),)),
    nft.Edit("replace_module", "fc2", nn.Linear(4, 4), (("index", 2),)),
    nft.Edit("deepen", "act"),  # after a named child: inserted at its place + 1
    nft.Edit("deepen", "3", kwargs=(("activation", nn.Hardtanh),)),
    nft.Edit("widen", "fc2", kwargs=(("consumers", ("4",)), ("by", 2), ("seed", 0))),
], ids=repr)
def test_the_reference_keys_children_as_the_core_does(edit):
    """Named children keep their names, numbered (and inserted) ones are keyed by their place,
    and the paths under a moved child follow it, in the Reference as in the species."""
    p = nft.random_particle(nf.from_module(_named()), seed=1)
    r = nft.random_particle(p, seed=2)
    ref_p, ref_r = nft.Reference.of(p), nft.Reference.of(r)
    q = edit.apply(p)
    schemas = (p.schema, q.schema)
    ref_p.event(edit, schemas=schemas).check(q)
    ref_r.event(edit, initiator=ref_p, schemas=schemas).check(r)
    assert ref_p.event(edit, schemas=schemas).indexed[""] == \
        list(q.schema.skeleton._modules)


def test_the_reference_notices_a_child_keyed_against_the_rule():
    p = nf.from_module(_named())
    q = nf.del_module(p, "act")
    wrong = nft.Reference.of(p).event(nft.Edit("del_module", "fc1"))  # not what happened
    with pytest.raises(AssertionError, match="paths differ"):
        wrong.check(q)


def test_growth_sites_use_the_keys_the_model_has():
    from nytorch_func.testing._view import View

    view = View(nf.from_module(_named()))
    assert [(s.layer, s.consumers) for s in nft.KINDS["widen"].targets(view)] == \
        [("fc1", ("fc2",)), ("fc2", ("4",))]
    assert [a for a, _ in nft.KINDS["deepen"].targets(view)] == ["fc1", "act", "fc2", "3", "4"]


def test_widen_sites_reach_across_nested_sequentials():
    from nytorch_func.testing._view import View

    p = nf.from_module(nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)),
                                     nn.Sequential(nn.ReLU(), nn.Sequential()),
                                     nn.Sequential(nn.Linear(3, 1))))
    sites = nft.KINDS["widen"].targets(View(p))
    assert [(s.layer, s.consumers, s.between, s.container) for s in sites] == \
        [("0.0", ("2.0",), ("0.1",), "")]
    x = torch.randn(5, 2)
    edit = find(nft.events(p, kinds=("widen",), example_input=x), lambda e: True,
                settings=FIRST)
    q = edit.apply(p)
    assert q["0.0.weight"].shape[0] > 3 and torch.allclose(nf.apply(q, x), nf.apply(p, x))


def test_a_widen_site_inside_an_inner_sequential_is_probed_there():
    """Layer and consumer both in an inner Sequential the forward calls on its own: the site's
    container is the inner one, so the probe accepts it."""
    from nytorch_func.testing._view import View

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3)),
                                      nn.Linear(3, 1))

        def forward(self, x):
            return self.body[1](torch.tanh(self.body[0](x)))

    sites = nft.KINDS["widen"].targets(View(nf.from_module(Net())))
    assert {(s.layer, s.container) for s in sites} == {("body.0.0", "body.0"),
                                                       ("body.0.2", "body")}
    drawn = nft.events(nf.from_module(Net()), kinds=("widen",), example_input=torch.randn(4, 2))
    assert find(drawn, lambda e: True, settings=FIRST).path == "body.0.0"
    with pytest.raises(NoSuchExample):  # body.0.2 feeds body.1 through the user's tanh
        find(drawn, lambda e: e.path == "body.0.2",
             settings=settings(FIRST, max_examples=50))
