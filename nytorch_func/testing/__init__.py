"""Hypothesis strategies and a ready law suite for code built on nytorch_func.

Property-test your own model's migrations in one line::

    import nytorch_func.testing as nft

    def test_my_net_migrates():
        nft.check_migration_laws(MyNet, torch.randn(4, 3))

or as a test class (``class TestMyNet(nft.MigrationLaws): make_model = MyNet; ...``). The
pieces, by job:

* models -- :func:`modules` / :func:`runnable_modules` draw small real architectures
  (:class:`Recipe`, :func:`build_module`); :func:`fresh_like` re-draws a block;
* particles and populations -- :func:`particles`, :func:`populations`, :func:`random_particle`,
  :func:`random_population`, :func:`tensors_of`, :func:`assert_same_values`,
  :func:`assert_leaves_match_schema`;
* events -- :func:`events`, :func:`event_chains` draw valid :class:`Edit` objects (kinds from
  the :data:`KINDS` registry of :class:`EventKind` entries, growth included: :data:`GROWTH_KINDS`,
  :func:`widen_at`; with ``example_input`` only events your forward pass survives),
  :func:`invalid_events` edits that must fail and change nothing;
* laws -- :func:`check_migration_laws`, :class:`MigrationLaws`, :data:`LAWS`;
  :func:`stateful_machine` checks a species against a plain dict-of-tensors :class:`Reference`.

Random tensor values come from seeds, so a failing example replays exactly.

>>> import torch, nytorch_func as nf, nytorch_func.testing as nft
>>> from hypothesis import given, settings
>>> @settings(max_examples=5, database=None)
... @given(nft.particles(), nft.particles())
... def check(p, q):
...     nft.assert_same_values(p + q, q + p) if p.species is q.species else None
>>> check()
"""

from ._edit import NO_VALUE, Edit
from ._events import event_chains, events
from ._invalid import invalid_events
from ._kinds import EVENT_KINDS, FORWARD_KINDS, GROWTH_KINDS, KINDS, EventKind, widen_at
from ._laws import LAWS
from ._machine import stateful_machine
from ._particles import (assert_leaves_match_schema, assert_same_values, fresh_like, particles,
                         populations, random_particle, random_population, seeded_buffer,
                         seeded_param, tensors_of)
from ._recipes import Mode, Recipe, Tag, build_module, modules, runnable_modules
from ._reference import Reference
from ._suite import Case, MigrationLawError, MigrationLaws, check_migration_laws

__all__ = [
    # models
    "modules", "runnable_modules", "Recipe", "build_module", "fresh_like", "Mode", "Tag",
    # particles and populations
    "particles", "populations", "random_particle", "random_population", "tensors_of",
    "assert_same_values", "assert_leaves_match_schema", "seeded_param", "seeded_buffer",
    # events
    "events", "event_chains", "invalid_events", "Edit", "NO_VALUE", "EventKind", "KINDS",
    "EVENT_KINDS", "FORWARD_KINDS", "GROWTH_KINDS", "widen_at",
    # laws
    "check_migration_laws", "MigrationLaws", "MigrationLawError", "LAWS", "Case",
    "stateful_machine", "Reference",
]
