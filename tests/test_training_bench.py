"""The training bench rows (init, adam): structure and one call of each side, never timings."""

import torch

import nytorch_func as nf
from nytorch_func.bench import GROUPS
from nytorch_func.bench._cases import BUILDERS
from nytorch_func.bench._training_cases import INIT_MEMBERS, adam_rows, init_rows


def test_rows_are_registered_with_their_targets():
    assert "init" in GROUPS and "adam" in GROUPS
    assert BUILDERS["init"] is init_rows and BUILDERS["adam"] is adam_rows
    cases, skipped = init_rows()
    assert [c.id for c in cases] == ["init", "init-stack"] and not skipped
    assert cases[0].target.describe() == "<= 1.25x" and cases[1].target is None
    (adam,), _ = adam_rows()
    assert adam.target.describe() == "<= 1.2x"


def test_adam_sides_step_the_same_kind_of_tensors():
    (adam,), _ = adam_rows()
    ours, theirs = adam.ours.setup(), adam.base.setup()
    ours(), theirs()  # each side runs repeatedly on its own state
    ours(), theirs()


def test_init_sides_draw_as_many_values():
    cases, _ = init_rows()
    pop = cases[0].ours.setup()()
    flat = cases[0].base.setup()()
    assert isinstance(pop, nf.Particle) and pop.batch_shape == (INIT_MEMBERS,)
    assert pop.numel() == flat.numel()
    assert float(pop["0.weight"].detach().abs().max()) <= 784 ** -0.5
    assert torch.all((flat >= 0) & (flat < 1))
