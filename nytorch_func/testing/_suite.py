"""The law suite for a user's own model class: one call, or one ``unittest.TestCase`` subclass."""

from __future__ import annotations

import dataclasses
import inspect
import types
import unittest
from collections.abc import Callable, Sequence
from typing import Any

import hypothesis
import hypothesis.strategies as st
from hypothesis import HealthCheck
from torch import nn

import nytorch_func as nf

from ._edit import Edit
from ._events import draw_chain
from ._invalid import draw_invalid
from ._kinds import FORWARD_KINDS, resolve_kinds
from ._laws import LAWS
from ._run import Run
from ._particles import seeds
from ._view import Forward, View, zeros_at

__all__ = ["check_migration_laws", "MigrationLaws", "MigrationLawError", "Case"]


class MigrationLawError(AssertionError):
    """A migration law failed for the user's model; the message names the law, the shrunk
    event chain and the code that replays it."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One drawn example of the law suite: seeds, an event chain and an invalid event.

    Its :meth:`replay` is the code that rebuilds every particle the laws look at.
    """

    model: str
    seed: int
    recipient_seed: int
    members: int
    pop_seed: int
    chain: tuple[Edit, ...]
    invalid: Edit
    b_version: int
    scalar: float

    def __repr__(self) -> str:
        chain = ", ".join(map(repr, self.chain))
        return (f"Case({len(self.chain)} events: [{chain}], seeds {self.seed}/"
                f"{self.recipient_seed}/{self.pop_seed}, population of {self.members}, "
                f"invalid {self.invalid!r})")

    def replay(self) -> list[str]:
        """Python lines that rebuild the initiator at every version (``p0``, ``p1``, ...), the
        recipient ``r`` and the population ``pop`` (both left at version 0)."""
        lines = [f"p0 = nft.random_particle(nf.from_module({self.model}), seed={self.seed})",
                 f"r = nft.random_particle(p0, seed={self.recipient_seed})",
                 f"pop = nft.random_population(p0, n={self.members}, seed={self.pop_seed})"]
        k = 0
        for edit in self.chain:
            names = [f"p{k + i + 1}" for i in range(len(edit.steps()))]
            lines += edit.code_lines(f"p{k}", names)
            k += len(names)
        return lines


def _model_code(make_model: Callable[[], nn.Module]) -> tuple[str, str | None]:
    """``("MLP()", None)`` for a class or named function; else a placeholder and a note."""
    name = getattr(make_model, "__qualname__", "")
    if name and "<" not in name:
        return f"{name}()", None
    return "make_model()", f"make_model = ...  # {make_model!r}"


@st.composite
def _cases(draw: Any, make_model: Callable[[], nn.Module], model: str, forward: Forward,
           kinds: tuple, new_modules: Any, chain_length: int, population: int) -> Case:
    scratch = View(nf.from_module(make_model()), False, new_modules, forward)
    chain = draw(draw_chain(scratch, chain_length, 0, kinds), label="chain")
    head = scratch.particle.species.head
    invalid = draw(draw_invalid(View(zeros_at(head))), label="invalid event")
    return Case(model, draw(seeds, label="seed"), draw(seeds, label="recipient seed"),
                draw(st.integers(1, population), label="members"),
                draw(seeds, label="population seed"), tuple(chain), invalid,
                draw(st.integers(0, 2 * chain_length), label="b version"),
                draw(st.sampled_from((2.0, 0.5, -1.5)), label="scalar"))


def _report(make_model: Any, failures: list[tuple[str, Case, BaseException]], notes: list[str]
            ) -> str:
    model, note = _model_code(make_model)
    out = [f"{len(failures)} migration law(s) broken for {model}:"]
    for law, case, err in failures:
        doc = " ".join((LAWS[law].__doc__ or "").split("\n\n")[0].split()) if law in LAWS \
            else "Every drawn event applies to the model."
        n = len(case.chain)
        out += ["", f"law {law!r}: {doc}",
                f"  shrunk to {n} event{'s' * (n != 1)}:"]
        out += [f"    {i + 1}. {e!r}" for i, e in enumerate(case.chain)] or ["    (none)"]
        out.append(f"  failure: {type(err).__name__}: {err}")
        out += ["  replay:",
                "    import torch, nytorch_func as nf, nytorch_func.testing as nft",
                "    from torch import nn"]
        out += [f"    {note}"] if note else []
        out.append("    x = ...  # your example input as a tuple of forward arguments")
        out += [f"    {line}" for line in case.replay()]
        out += [f"    {line}" for line in getattr(err, "nft_check", None) or ()]
        out.append(f"  (switch it off with skip=({law!r},))")
    out += [n for n in notes if "reproduce_failure" in n]
    return "\n".join(out)


def _settings(base: hypothesis.settings | None, max_examples: int | None) -> hypothesis.settings:
    base = base if base is not None else hypothesis.settings()
    quiet = {HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much}
    return hypothesis.settings(
        base, max_examples=base.max_examples if max_examples is None else max_examples,
        deadline=None, suppress_health_check=sorted(set(base.suppress_health_check) | quiet,
                                                    key=lambda h: h.value))


def check_migration_laws(make_model: Callable[[], nn.Module], example_input: Any, *,
                         max_examples: int | None = None, events: Sequence[Any] = FORWARD_KINDS,
                         modules: st.SearchStrategy[nn.Module] | None = None,
                         skip: Sequence[str] = (), chain_length: int = 4,
                         population_size: int = 3,
                         settings: hypothesis.settings | None = None) -> None:
    """Check every migration law on your own model class, for generated particles and events.

    ``make_model()`` builds your model (a class or a function); ``example_input`` is an input
    its forward pass accepts (a tensor, or a tuple of positional arguments). Each example draws
    an initiator, a recipient and a population of random values, a chain of up to
    ``chain_length`` events your forward pass still runs after (``events``: kinds from
    :data:`KINDS`, default :data:`FORWARD_KINDS`; ``modules``: a strategy for the blocks that
    ``replace_module``/``add_module`` put in, e.g. ``st.builds(MyBlock, 8)``), and an invalid
    event, and checks every law of :data:`LAWS` except those named in ``skip``:

    ``leaves_match_schema``, ``touch_pure``, ``touch_idempotent``, ``touch_composable``
    (``touch(touch(p, v1), v2) == touch(p, v2)``), ``initiator_recipient``,
    ``old_values_kept`` (ids stable, values as a plain dict-of-tensors model says),
    ``ops_commute``, ``population_touch``, ``model_runs`` (``nf.apply`` on ``example_input``
    after every event, and ``vmap`` over the population), ``output_kept``,
    ``checkpoint_round_trip`` and ``invalid_events_change_nothing``.

    ``max_examples`` defaults to the current hypothesis profile's; ``settings`` replaces the
    profile. A broken law raises :class:`MigrationLawError` naming the law, the shrunk event
    chain and the code that replays it. Forward passes must be deterministic (give models with
    dropout in eval mode).

    >>> import torch, nytorch_func.testing as nft
    >>> from torch import nn
    >>> def mlp():
    ...     return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> nft.check_migration_laws(mlp, torch.randn(5, 3), max_examples=5)
    """
    if isinstance(make_model, nn.Module) or not callable(make_model):
        raise nf.ArgumentTypeError(f"check_migration_laws: make_model must be a callable that "
                                   f"returns a new nn.Module (e.g. the class), got "
                                   f"{type(make_model).__name__}; pass the class or a "
                                   "function, not a model instance")
    laws = _laws(skip, "check_migration_laws")
    kinds = resolve_kinds(events, "check_migration_laws")
    forward = Forward(example_input)
    _first_run(make_model, forward)
    model, _ = _model_code(make_model)
    failures: list[tuple[str, Case, BaseException]] = []
    strategy = _cases(make_model, model, forward, kinds, modules, chain_length, population_size)

    def migration_laws(case: Case) -> None:
        law = "events_apply"
        try:
            run = Run.build(make_model, forward, case)
            for law in laws:
                LAWS[law](run)
        except BaseException as err:
            from hypothesis.control import current_build_context

            if current_build_context().is_final:
                failures.append((law, case, err))
            raise

    test = _settings(settings, max_examples)(hypothesis.given(case=strategy)(migration_laws))
    try:
        test()
    except Exception as err:
        if not failures:
            raise
        notes = [n for e in [err, *getattr(err, "exceptions", ())]
                 for n in getattr(e, "__notes__", [])]
        raise MigrationLawError(_report(make_model, failures, notes)) from None


def _laws(skip: Sequence[str], what: str) -> list[str]:
    if isinstance(skip, str):
        skip = (skip,)
    unknown = [s for s in skip if s not in LAWS and s != "stateful_machine"]
    if unknown:
        raise nf.SchemaError(f"{what}: unknown law(s) {unknown} in skip; the laws are "
                             f"{tuple(LAWS)}")
    return [name for name in LAWS if name not in skip]


def _first_run(make_model: Callable[[], nn.Module], forward: Forward) -> None:
    module = make_model()
    if not isinstance(module, nn.Module):
        raise nf.ArgumentTypeError(f"check_migration_laws: make_model() must return an "
                                   f"nn.Module, got {type(module).__name__}")
    try:
        forward.run(nf.from_module(module))
    except Exception as err:
        raise nf.SchemaError(f"check_migration_laws: nf.apply(nf.from_module(make_model()), "
                             f"*example_input) fails before any event ({type(err).__name__}: "
                             f"{err}); give an input the forward pass accepts (a tuple is "
                             "unpacked into positional arguments)") from err


class MigrationLaws(unittest.TestCase):
    """The law suite and the stateful machine as a test class for your own model.

    Subclass it with ``make_model`` (your class, a ``staticmethod`` or a method) and
    ``example_input`` (a tensor, a tuple of forward arguments, or a method returning one);
    optionally ``events``, ``modules``, ``skip`` (law names, or ``"stateful_machine"``),
    ``max_examples``, ``machine_steps`` and ``machine_checkpoints``. pytest and unittest both
    run it::

        class TestMyNet(nft.MigrationLaws):
            make_model = MyNet
            example_input = torch.randn(4, 3)
            skip = ("checkpoint_round_trip",)

    ``test_migration_laws`` runs :func:`check_migration_laws`; ``test_stateful_machine`` runs
    :func:`stateful_machine` for the model.
    """

    make_model: Any = None
    example_input: Any = None
    events: Sequence[Any] = FORWARD_KINDS
    modules: Any = None
    skip: Sequence[str] = ()
    max_examples: int | None = None
    machine_steps: int = 10
    machine_checkpoints: bool = True

    def _factory(self) -> Callable[[], nn.Module]:
        raw = inspect.getattr_static(type(self), "make_model", None)
        if raw is None:
            self.skipTest("MigrationLaws: set make_model in the subclass")
        if isinstance(raw, types.FunctionType) and not inspect.signature(raw).parameters:
            return raw
        return self.make_model

    def _input(self) -> Any:
        value = self.example_input
        return value() if callable(value) and not isinstance(value, nn.Module) and \
            inspect.ismethod(value) else value

    def test_migration_laws(self) -> None:
        check_migration_laws(self._factory(), self._input(), max_examples=self.max_examples,
                             events=self.events, modules=self.modules,
                             skip=[s for s in self.skip if s != "stateful_machine"])

    def test_stateful_machine(self) -> None:
        factory = self._factory()
        if "stateful_machine" in self.skip:
            self.skipTest("skipped by skip=('stateful_machine',)")
        from hypothesis.stateful import run_state_machine_as_test

        from ._machine import stateful_machine

        machine = stateful_machine(factory, self._input(), kinds=self.events,
                                   modules=self.modules, checkpoints=self.machine_checkpoints)
        base = _settings(None, self.max_examples)
        run_state_machine_as_test(machine, settings=hypothesis.settings(
            base, stateful_step_count=self.machine_steps))
