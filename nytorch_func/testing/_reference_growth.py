"""What growth does to the plain model of :class:`~nytorch_func.testing.Reference`.

A widening's new units are chosen at random when the event is made, so the reference reads
*which* old coordinate feeds each new one (index, scale, fill) from the event the species
recorded, checks that choice keeps every old coordinate exactly once, and applies it itself,
one coordinate at a time with plain indexing (not the core's batched kernel), to the values it
holds for its own particle. That the choice keeps each member's function is the law
``output_kept``'s job. Inserted modules (``nf.deepen``) are the event's snapshots, checked to be
the identity layer deepen promises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ._reference import Group

__all__ = ["events_of", "one_event", "resized_value", "apply_resize", "check_identity_layer",
           "inserted_groups", "module_paths"]


def events_of(schemas: Any) -> list | None:
    """The events between ``schemas = (before, after)`` (None: not given)."""
    if schemas is None:
        return None
    from nytorch_func._migrate import events_between

    before, after = schemas
    return events_between(before, after)


def one_event(events: list | None, kind: str, what: str) -> Any:
    """The one event of ``kind`` among ``events``."""
    if events is None:
        raise AssertionError(f"Reference: {what} needs the versions it went between: pass "
                             "schemas=(schema before, schema after) to Reference.event")
    found = [e for e in events if e.kind == kind]
    if len(found) != 1:
        raise AssertionError(f"{what} recorded {[e.kind for e in events]}, expected one "
                             f"{kind} event")
    return found[0]


def resized_value(key: str, value: torch.Tensor, dims: tuple, fill: torch.Tensor | None
                  ) -> torch.Tensor:
    """``value`` with each resized dim rebuilt coordinate by coordinate: new coordinate ``j``
    is old coordinate ``index[j]`` times ``scale[j]``, or ``fill``'s where ``index[j] < 0``."""
    if len(dims) != 1:
        raise AssertionError(f"Reference: no model of a resize of {key!r} along {len(dims)} "
                             "dims (widen resizes one)")
    (dim, index, scale, origin), = dims
    old = value.shape[dim]
    kept = sorted(int(i) for i, o in zip(index.tolist(), origin.tolist()) if o)
    if kept != list(range(old)):
        raise AssertionError(f"the resize of {key!r} keeps old coordinates {kept} of its "
                             f"{old}: every old coordinate must stay, once")
    computable = value.is_floating_point() or value.is_complex()
    slices = []
    for j, i in enumerate(index.tolist()):
        if i < 0:
            if fill is None:
                raise AssertionError(f"the resize of {key!r} leaves coordinate {j} unfed and "
                                     "records no fill")
            slices.append(fill.select(dim, j).to(value.dtype))
            continue
        part = value.select(dim, i)
        if scale is not None and computable:
            part = (part.to(torch.float64) * float(scale[j])).to(value.dtype)
        slices.append(part)
    return torch.stack(slices, dim)


def apply_resize(groups: list["Group"], event: Any) -> None:
    """Every group the resize ``event`` names gets its value mapped (in place)."""
    by_path = {p: g for g in groups for p in g.paths}
    for key, shape, dims, fill in event.tensors:
        g = by_path.get(key)
        if g is None:
            raise AssertionError(f"the resize names {key!r}, which the model does not have")
        g.value = resized_value(key, g.value, dims, fill)
        if tuple(g.value.shape) != tuple(shape):
            raise AssertionError(f"the resize of {key!r} says {tuple(shape)}, its map gives "
                                 f"{tuple(g.value.shape)}")


def check_identity_layer(where: str, specs: tuple, values: tuple) -> None:
    """The layer deepen inserted is the identity: an identity (Linear) or Dirac (Conv) weight
    and a zero bias."""
    tensors = {s.key: v for s, v in zip(specs, values)}
    weight = tensors.get("weight")
    if weight is None:
        raise AssertionError(f"deepen inserted {where!r} without a weight")
    w = weight.detach().to(torch.float64)
    if w.dim() == 2:
        want = torch.eye(w.shape[0], w.shape[1], dtype=torch.float64)
    else:
        want = torch.zeros_like(w)
        centre = tuple(k // 2 for k in w.shape[2:])
        for c in range(min(w.shape[0], w.shape[1])):
            want[(c, c, *centre)] = 1.0
    if w.shape[0] != w.shape[1] or not torch.equal(w, want):
        raise AssertionError(f"deepen inserted {where!r} with a weight that is not the "
                             f"identity: {weight}")
    bias = tensors.get("bias")
    if bias is not None and bool(bias.detach().ne(0).any()):
        raise AssertionError(f"deepen inserted {where!r} with a nonzero bias: {bias}")


def inserted_groups(event: Any, paths: list[str], group: Any, check: bool) -> list:
    """Groups for the tensors of the modules ``event`` (an InsertModules) put in at ``paths``
    (where the reference keys them), each with a clone of its snapshot; ``check``: they must be
    deepen's identity layer (and activation)."""
    out = []
    for k, (where, specs, values) in enumerate(zip(paths, event.specs, event.values)):
        if check and k == 0:
            check_identity_layer(where, specs, values)
        for spec, value in zip(specs, values):
            out.append(group({f"{where}.{p}" for p in spec.paths}, spec.kind,
                             value.detach().clone(), spec.config, spec.policy))
    return out


def module_paths(event: Any) -> list[tuple[str, Any]]:
    """``(path, skeleton module)`` of every module ``event`` inserted (an inserted child is
    keyed by its place, beside named children too)."""
    return [(f"{event.container}.{event.index + k}" if event.container
             else str(event.index + k), m) for k, m in enumerate(event.skeletons)]
