"""Strategies for valid events: one edit for a version, or a chain valid one after the other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hypothesis.strategies as st
from torch import nn

import nytorch_func as nf

from ._edit import Edit
from ._kinds import EVENT_KINDS, EventKind, resolve_kinds
from ._view import Forward, View, view_of

__all__ = ["events", "event_chains", "draw_edit", "draw_chain", "fork"]


@st.composite
def draw_edit(draw: Any, view: View, kinds: tuple[EventKind, ...]) -> Edit:
    """One valid edit of one of ``kinds`` for ``view`` (kinds that do not apply are skipped).

    With a watched forward pass, a target is probed only once it is drawn, and dropped (with a
    new draw) when the forward pass would not survive it: probing every target of every kind
    for every version would cost a forward pass each.
    """
    candidates = [(kind, targets) for kind in kinds if (targets := list(kind.targets(view)))]
    while candidates:
        i = draw(st.integers(0, len(candidates) - 1))
        kind, targets = candidates[i]
        if view.forward is not None and kind.probe is not None:
            while targets:
                j = draw(st.integers(0, len(targets) - 1))
                if view.accepts(kind, targets[j]):
                    targets = [targets[j]]
                    break
                targets = targets[:j] + targets[j + 1:]
            if not targets:
                del candidates[i]
                continue
        return kind.draw(draw, view, targets)
    names = tuple(k.name for k in kinds)
    raise nf.SchemaError(f"nft.events: none of {names} applies to version "
                         f"{view.schema.version} (it has no parameters/buffers/modules"
                         f"{' that the forward pass can do without' if view.forward else ''})")


def fork(p: nf.Particle) -> nf.Particle:
    """A particle of a new, throw-away species with ``p``'s structure and values."""
    return nf.from_module(nf.to_module(p))


@st.composite
def draw_chain(draw: Any, view: View, n: int, min_size: int, kinds: tuple[EventKind, ...]
               ) -> list[Edit]:
    """``min_size``..``n`` edits valid one after the other, drawn on ``view.particle``'s species
    (a scratch one: drawing appends to it)."""
    chain: list[Edit] = []
    p = view.particle
    for _ in range(draw(st.integers(min_size, n))):
        edit = draw(draw_edit(View(p, view.batched, view.new_modules, view.forward), kinds))
        p = edit.apply(p)
        chain.append(edit)
    return chain


def _forward(example_input: Any) -> Forward | None:
    return None if example_input is None else Forward(example_input)


def events(target: Any, *, kinds: Sequence[Any] = EVENT_KINDS, allow_shared: bool | None = None,
           modules: st.SearchStrategy[nn.Module] | None = None, example_input: Any = None
           ) -> st.SearchStrategy[Edit]:
    """Valid events for ``target`` (a Particle: its species' newest version; or a Schema).

    Every drawn :class:`Edit` succeeds when applied to any particle of the species while the
    species is still at that version: ``add_param`` / ``add_buffer`` / ``add_module`` at a free
    name of an existing module, ``del_param`` / ``del_buffer`` / ``del_module`` / ``set_none`` of
    an existing path (tied aliases included), ``configure`` of a parameter, a module or ``""``,
    ``configure_buffer``, ``to`` (a dtype conversion) and, on request, ``replace_module`` (a
    submodule deleted and re-added as a new module of its class). ``kinds`` restricts the kinds
    (names from :data:`KINDS`, or your own :class:`EventKind` entries); ``allow_shared=False``
    never makes a per-particle parameter shared (the default allows it except for populations,
    which cannot do it).

    ``modules``: a strategy for the modules ``add_module`` and ``replace_module`` add (e.g.
    ``st.builds(MyBlock, ...)``; ``replace_module`` uses a drawn module where its class matches
    the submodule it replaces). ``example_input``: your model's input (a tensor or a tuple of
    positional arguments); when given, only events after which ``nf.apply(p, *example_input)``
    still runs are drawn: ``set_none`` of a bias but not of a weight the forward needs, no
    module added into a ``Sequential``, dtypes the model runs in.

    The strategy is bound to the version that is newest when it is made: applying an edit
    moves the species on, so draw the edits for a particle made inside the test, with
    ``st.data()``:

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings, strategies as st
    >>> @settings(max_examples=20, database=None)
    ... @given(st.data())
    ... def check(data):
    ...     p = nf.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    ...     edit = data.draw(nft.events(p))
    ...     assert edit.apply(p).version == 1
    >>> check()
    """
    resolved = resolve_kinds(kinds, "nft.events")
    view = view_of(target, allow_shared, "nft.events", new_modules=modules,
                   forward=_forward(example_input))
    return draw_edit(view, resolved)


def event_chains(target: Any, n: int = 4, *, min_size: int = 0,
                 kinds: Sequence[Any] = EVENT_KINDS, allow_shared: bool | None = None,
                 modules: st.SearchStrategy[nn.Module] | None = None, example_input: Any = None
                 ) -> st.SearchStrategy[list[Edit]]:
    """Lists of ``min_size``..``n`` edits that are valid one after the other for ``target``.

    Each edit is drawn against the structure the previous ones leave (tracked on a throw-away
    copy of the species, so drawing changes nothing). Apply them in order to any particle of the
    species, e.g. ``functools.reduce(lambda p, e: e.apply(p), chain, p)``. ``kinds``,
    ``modules`` and ``example_input`` as for :func:`events`.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings, strategies as st
    >>> @settings(max_examples=10, database=None)
    ... @given(st.data())
    ... def check(data):
    ...     p = nf.from_module(torch.nn.Linear(2, 2))
    ...     chain = data.draw(nft.event_chains(p, 3))
    ...     for edit in chain:
    ...         p = edit.apply(p)
    ...     assert p.version == len(chain)
    >>> check()
    """
    if isinstance(n, bool) or not isinstance(n, int) or not isinstance(min_size, int) \
            or not 0 <= min_size <= n:
        raise nf.SchemaError(f"nft.event_chains: need 0 <= min_size <= n, got "
                             f"min_size={min_size!r}, n={n!r}")
    resolved = resolve_kinds(kinds, "nft.event_chains")
    view = view_of(target, allow_shared, "nft.event_chains", new_modules=modules,
                   forward=_forward(example_input))

    @st.composite
    def chains(draw: Any) -> list[Edit]:
        scratch = View(fork(view.particle), view.batched, view.new_modules, view.forward)
        return draw(draw_chain(scratch, n, min_size, resolved))

    return chains()
