"""Edits that every event function must refuse with a typed error, changing nothing."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import torch
from torch import nn

from ._edit import NO_VALUE, Edit
from ._growth_sites import GROWABLE
from ._view import View, view_of

__all__ = ["invalid_events", "draw_invalid"]

_BAD_PATHS = ("", ".x", "x.", "a..b", 3, None)
_NOT_TENSORS = (1.5, [1.0, 2.0], "w", None)
_ADDERS = ("add_param", "add_buffer", "add_module")


def _value_for(kind: str) -> tuple[Any, str]:
    """A fresh valid value for an ``add_*`` kind, and the code that makes it."""
    if kind == "add_param":
        return nn.Parameter(torch.zeros(1)), "nn.Parameter(torch.zeros(1))"
    if kind == "add_buffer":
        return torch.zeros(1), "torch.zeros(1)"
    return nn.Linear(1, 1), "nn.Linear(1, 1)"


def _bad(kind: str, path: Any, value: Any = NO_VALUE, kwargs: tuple = (), code: str | None = None
         ) -> Edit:
    return Edit(kind, path, value, kwargs, invalid=True, code=code)


@st.composite
def draw_invalid(draw: Any, view: View) -> Edit:
    """One edit that must fail on ``view``'s version."""
    params, buffers, subs = view.params, view.buffers, view.submodules
    existing = params + buffers + subs
    cases = ["bad_path", "missing_parent", "not_a_tensor", "not_a_module", "hides_attribute",
             "missing", "bad_option"]
    if existing:
        cases.insert(0, "exists")
    if params:
        cases.append("wrong_kind_param")
    if buffers:
        cases.append("wrong_kind_buffer")
    cases.append("growth")
    case = draw(st.sampled_from(cases))
    if case == "growth":
        return draw(_invalid_growth(view))
    if case in ("exists", "bad_path", "missing_parent", "hides_attribute"):
        kind = draw(st.sampled_from(_ADDERS))
        path = {"exists": lambda: draw(st.sampled_from(existing)),
                "bad_path": lambda: draw(st.sampled_from(_BAD_PATHS)),
                "missing_parent": lambda: "no_such_module.x",
                "hides_attribute": lambda: draw(st.sampled_from(("forward", "training",
                                                                 "state_dict")))}[case]()
        value, code = _value_for(kind)
        return _bad(kind, path, value, code=code)
    if case == "not_a_tensor":
        return _bad(draw(st.sampled_from(_ADDERS[:2])), "fresh_name",
                    draw(st.sampled_from(_NOT_TENSORS)))
    if case == "not_a_module":
        value = draw(st.sampled_from(("tensor", "Linear", None)))
        if value == "tensor":
            return _bad("add_module", "fresh_name", torch.zeros(1), code="torch.zeros(1)")
        return _bad("add_module", "fresh_name", value)
    if case == "missing":
        kind = draw(st.sampled_from(("del_param", "del_buffer", "del_module", "set_none",
                                     "configure", "configure_buffer")))
        kwargs = (("policy", "mean"),) if kind == "configure_buffer" else ()
        return _bad(kind, draw(st.sampled_from(("no_such_path", "no_such_module.weight"))),
                    kwargs=kwargs)
    if case == "wrong_kind_param":  # a parameter path given to buffer-only / module-only events
        kind = draw(st.sampled_from(("del_buffer", "del_module", "configure_buffer")))
        kwargs = (("policy", "mean"),) if kind == "configure_buffer" else ()
        return _bad(kind, draw(st.sampled_from(params)), kwargs=kwargs)
    if case == "wrong_kind_buffer":
        kind = draw(st.sampled_from(("del_param", "set_none", "configure", "del_module")))
        return _bad(kind, draw(st.sampled_from(buffers)))
    choices: list[tuple] = [
        ("add_param", "fresh_name", "param", (("config", {"operational": False}),)),
        ("add_buffer", "fresh_name", "buffer", (("state", "yes"),)),
        ("configure", "", NO_VALUE, (("operational", "yes"),)),
        ("configure", "", NO_VALUE, (("clone", 1),)),
        ("configure", "", NO_VALUE, (("_private", 1),)),
        ("configure", "", NO_VALUE, (("tag", [1, 2]),)),
        ("to", NO_VALUE, NO_VALUE, (("dtype", torch.int64),)),
        ("to", NO_VALUE, NO_VALUE, (("dtype", "float64"),)),
        ("to", NO_VALUE, NO_VALUE, ()),
    ]
    if buffers:
        choices.append(("configure_buffer", buffers[0], NO_VALUE, (("policy", "median"),)))
    if view.batched and params:
        choices.append(("configure", "", NO_VALUE, (("operational", False), ("clone", False))))
    kind, path, value, kwargs = draw(st.sampled_from(choices))
    if kind == "configure" and not params:
        return _bad("configure", "")  # no parameter at all to configure
    if value in ("param", "buffer"):
        made, code = _value_for("add_" + value)
        return _bad(kind, path, made, kwargs, code=code)
    return _bad(kind, path, value, kwargs)


@st.composite
def _invalid_growth(draw: Any, view: View) -> Edit:
    """A growth call that must be refused: a layer that is its own consumer, a missing
    consumer, ``by=0``, an unknown method, an insertion into a missing container or past the
    end of one, deepening after a path that is no Sequential child."""
    layers = [path for path, m in view.modules if path and type(m) in GROWABLE]
    layer = draw(st.sampled_from(layers)) if layers else "no_such_module"
    containers = [(path, len(m._modules)) for path, m in view.modules
                  if isinstance(m, (nn.Sequential, nn.ModuleList))]
    choices = [
        ("widen", (("consumers", (layer,)), ("by", 1))),
        ("widen", (("consumers", ("no_such_module",)), ("by", 1))),
        ("widen", (("consumers", ("no_such_module",)), ("by", 0))),
        ("widen", (("consumers", ("no_such_module",)), ("by", 1), ("method", "random"))),
        ("insert_module", "no_such_module"),
        ("deepen", "no_such_module.0"),
    ]
    if containers:
        choices.append(("insert_past_end", draw(st.sampled_from(containers))))
    kind, arg = draw(st.sampled_from(choices))
    if kind == "widen":
        return Edit("widen", layer, kwargs=arg + (("seed", 0),), invalid=True)
    if kind == "deepen":
        return Edit("deepen", arg, invalid=True)
    container, index = (arg, 0) if kind == "insert_module" else (arg[0], arg[1] + 2)
    return Edit("insert_module", container, nn.Identity(), (("index", index),), invalid=True,
                code="nn.Identity()")


def invalid_events(target: Any) -> st.SearchStrategy[Edit]:
    """Edits that must fail on ``target`` (a Particle or Schema) with a ``NytorchFuncError``.

    Adding at an existing path, at a malformed path (``""``, ``"a..b"``, a non-string) or under
    a missing module; adding a non-tensor or non-module; names that would hide a module
    attribute (``"forward"``); deleting, setting to None or configuring a missing path or a path
    of the wrong kind; bad options (``state="yes"``, ``policy="median"``, an unhashable config
    attribute, a dict as config, ``nf.to`` to an integer dtype or with nothing to do);
    turning a population's parameters shared; and growth that cannot be (a layer that is its
    own consumer, a missing consumer, ``by=0``, an unknown method, an insertion into a missing
    container or past its end, ``deepen`` after a path that is no Sequential child). A failing edit must leave the species, the
    particle and every other particle unchanged.

    >>> import torch, nytorch_func as nf, nytorch_func.testing as nft
    >>> from hypothesis import given, settings
    >>> p = nf.from_module(torch.nn.Linear(2, 2))
    >>> @settings(max_examples=20, database=None)
    ... @given(nft.invalid_events(p))
    ... def check(edit):
    ...     try:
    ...         edit.apply(p)
    ...     except nf.NytorchFuncError:
    ...         pass
    ...     else:
    ...         raise AssertionError(f"{edit} did not fail")
    >>> check()
    """
    return draw_invalid(view_of(target, None, "nft.invalid_events"))
