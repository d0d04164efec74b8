"""The state machine over one random species: events (initiated by particles and populations),
operations, touches, stacks and checkpoints interleaved, every handle checked after every step
against a plain dict-of-tensors model, and every leaf against its schema
(:func:`nytorch_func.testing.stateful_machine`, which users run on their own model class)."""

from __future__ import annotations

from hypothesis import settings

import nytorch_func.testing as nft

SpeciesMachine = nft.stateful_machine()
SpeciesMachine.TestCase.settings = settings(SpeciesMachine.TestCase.settings,
                                            stateful_step_count=12, deadline=None)
TestSpecies = SpeciesMachine.TestCase
