"""The resize event: tensors change shape along some dims, keep their ids, and every particle
maps *its own* values through a mapping recorded once, when the event is made.

For each resized dim the event records, per new coordinate, the old coordinate it comes from
(``index``; ``-1`` for none), a factor (``scale``) and whether it *is* that old coordinate
(``origin``: the same unit, possibly moved, as opposed to a replica or a new unit). A tensor's
coordinates that no old one feeds (index ``-1``) take the recorded ``fill`` (one value for every
particle). Touch then gives each particle, and each member of a population, its own tensors
mapped in one batched ``index_select``/multiply per resized dim, never the initiator's values.

Training state that mirrors a particle (optimizer moments) is touched with ``fill="zeros"``:
origin coordinates keep their values bit for bit (no scale), every other coordinate starts at
zero. Growth functions (:func:`nytorch_func.widen`) build these events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ._errors import SchemaError
from ._events import Event, Leaves, Migration, record
from ._schema import Schema, TensorSpec, copy_paths, split_path

__all__ = ["Resize", "DimMap", "TensorResize", "resize_tensor"]

# Plain tuples, so the codec stores them as JSON and tensors without special cases:
# DimMap = (dim, index: LongTensor, scale: Tensor | None, origin: BoolTensor)
# TensorResize = (key, new_shape, (DimMap, ...), fill: Tensor | None)
DimMap = tuple
TensorResize = tuple


def resize_tensor(t: torch.Tensor, dims: tuple, fill: torch.Tensor | None, n_batch: int,
                  mode: "str | Callable" = "snapshot", spec: TensorSpec | None = None
                  ) -> torch.Tensor:
    """``t`` (with ``n_batch`` leading batch dims) mapped through ``dims``.

    ``mode="snapshot"``: new coordinates copy their source times ``scale``, unfed ones take
    ``fill``. ``mode="zeros"``: origin coordinates are copied unscaled, all others are zero.
    A callable ``mode(value, spec)`` is given the snapshot result and supplies the non-origin
    coordinates.
    """
    tracing = torch.compiler.is_compiling()  # no data-dependent shapes or branches then
    if mode == "zeros" and len(dims) == 1 and not tracing:
        return _origins_and_zeros(t, dims[0], n_batch)
    out = t
    origin_mask = None
    fed_mask = None
    for dim, index, scale, origin in dims:
        d = dim + n_batch
        index = index.to(out.device)
        out = out.index_select(d, index.clamp(min=0))
        view = [1] * out.dim()
        view[d] = -1
        if scale is not None and mode == "snapshot" and (t.is_floating_point() or t.is_complex()):
            out = out * scale.to(device=out.device, dtype=out.dtype).view(view)
        o = origin.to(out.device).view(view)
        f = (index >= 0).view(view)
        origin_mask = o if origin_mask is None else origin_mask & o
        fed_mask = f if fed_mask is None else fed_mask & f
    if mode == "snapshot":
        if fill is not None and fed_mask is not None and (tracing or not bool(fed_mask.all())):
            out = torch.where(fed_mask, out, fill.to(device=out.device, dtype=out.dtype))
        return out
    if origin_mask is None:
        return out
    if mode == "zeros":
        return torch.where(origin_mask, out, torch.zeros((), dtype=out.dtype, device=out.device))
    other = mode(resize_tensor(t, dims, fill, n_batch), spec)
    return torch.where(origin_mask, out, other)


def _origins_and_zeros(t: torch.Tensor, dim_map: DimMap, n_batch: int) -> torch.Tensor:
    """``resize_tensor(mode="zeros")`` for one resized dim, without gathering the coordinates
    it then zeroes: zeros with the origin coordinates copied in (a ``cat`` when they are the
    old coordinates in order, first, as widening makes them)."""
    dim, index, _, origin = dim_map
    d = dim + n_batch
    keep = origin.nonzero().squeeze(1)
    src = index.index_select(0, keep).clamp(min=0)
    k = len(keep)
    if k == t.shape[d] and bool((src == torch.arange(k)).all()) and (
            k == len(index) or bool((keep == torch.arange(k)).all())):
        shape = list(t.shape)
        shape[d] = len(index) - k
        return torch.cat([t, t.new_zeros(shape)], d)
    shape = list(t.shape)
    shape[d] = len(index)
    out = t.new_zeros(shape)
    return out.index_copy_(d, keep.to(t.device), t.index_select(d, src.to(t.device)))


@record
class Resize(Event):
    """Parameters and buffers change shape and keep their ids; recipients map their own values.

    ``tensors``: one ``(key, new_shape, dims, fill)`` per resized tensor (see the module
    docstring for ``dims``); ``attrs``: ``(module_path, attribute, value)`` set on the copied
    skeleton modules (``out_features``, ``num_features``, ``normalized_shape``, ...), so a
    module rebuilt with ``nf.to_module`` is consistent; ``label``: how the change reads in
    ``nf.history`` (the growth function that made it).
    """

    label: str
    tensors: tuple[TensorResize, ...]
    attrs: tuple[tuple[str, str, Any], ...] = ()
    kind: ClassVar[str] = "resize"

    def apply(self, schema: Schema) -> Schema:
        modules = {split_path(path)[0] for key, *_ in self.tensors
                   for path in schema.spec(key, what="resize").paths}
        skeleton, copied = copy_paths(schema._skeleton,
                                      sorted(modules | {m for m, _, _ in self.attrs}))
        replace, shared = {}, None
        for key, shape, dims, fill in self.tensors:
            spec = schema.spec(key, what="resize")
            shape = tuple(shape)
            expect = list(spec.shape)
            for dim, index, _, _ in dims:
                if not 0 <= dim < len(expect):
                    raise SchemaError(f"resize: {key!r} has no dim {dim} (shape {spec.shape})")
                expect[dim] = len(index)
            if tuple(expect) != shape:
                raise SchemaError(f"resize: {key!r} would be {tuple(expect)}, the event says "
                                  f"{shape}")
            for dim, index, _, origin in dims:
                if len(index) and int(index.max()) >= spec.shape[dim] or len(origin) != len(index):
                    raise SchemaError(f"resize: {key!r} dim {dim} maps from a coordinate its "
                                      f"{spec.shape[dim]} do not have")
            new = _with_shape(spec, shape, dims, fill)
            replace[spec.key] = new
            meta = None
            for path in spec.paths:  # tied tensors: every name gets the one new meta tensor
                module_path, name = split_path(path)
                module = copied[module_path]
                slot = module._parameters if name in module._parameters else module._buffers
                if meta is None:
                    old = slot[name]
                    meta = torch.empty(shape, dtype=old.dtype, device="meta")
                    if isinstance(old, torch.nn.Parameter):
                        meta = torch.nn.Parameter(meta, requires_grad=old.requires_grad)
                slot[name] = meta
            if not spec.leaf:
                shared = dict(schema.shared) if shared is None else shared
                value = resize_tensor(shared[key].detach(), dims, fill, 0)
                if isinstance(shared[key], torch.nn.Parameter):
                    value = torch.nn.Parameter(value, requires_grad=spec.requires_grad)
                shared[key] = value
        for module_path, attr, value in self.attrs:
            copied[module_path].__dict__[attr] = value
        return schema.derive(skeleton=skeleton, replace=replace, shared=shared)

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        n_batch = len(m.batch_shape)
        for key, _, dims, fill in self.tensors:
            if key in leaves:
                old = leaves[key]
                new = resize_tensor(old.detach(), dims, fill, n_batch, m.fill,
                                    m.after.by_path[key])
                if old.requires_grad and (new.is_floating_point() or new.is_complex()):
                    new = new.requires_grad_(True)
                leaves[key] = new
        return leaves

    def describe(self) -> str:
        parts = []
        for key, shape, dims, _ in self.tensors:
            for dim, index, _, origin in dims:
                word = {0: " rows", 1: " cols"}.get(dim, f" dim {dim}") if len(shape) > 1 else ""
                parts.append(f"{key} {int(origin.sum())}\u2192{len(index)}{word}")
        return f"{self.label}: " + ", ".join(parts)


def _with_shape(spec: TensorSpec, shape: tuple[int, ...], dims: tuple,
                fill: torch.Tensor | None) -> TensorSpec:
    """``spec`` at its new shape; a recorded reset value is mapped like the tensor."""
    reset = spec.reset
    if reset is not None:
        reset = resize_tensor(reset, dims, fill, 0)
    return TensorSpec(key=spec.key, kind=spec.kind, paths=spec.paths, shape=shape,
                      dtype=spec.dtype, device=spec.device, requires_grad=spec.requires_grad,
                      pid=spec.pid, config=spec.config, state=spec.state,
                      persistent=spec.persistent, policy=spec.policy, reset=reset)
