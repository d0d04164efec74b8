"""The conversion event: a species' floating-point tensors move to another dtype or device."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from ._errors import SchemaError
from ._events import Event, Leaves, Migration, record
from ._schema import Schema, TensorSpec, computable

__all__ = ["Convert", "converted_dtype"]


def converted_dtype(spec_dtype: torch.dtype, dtype: torch.dtype | None, path: str,
                    what: str = "to") -> torch.dtype:
    """The dtype a tensor of ``spec_dtype`` gets from ``nf.to(dtype=dtype)``.

    As ``nn.Module.to``: floating-point and complex tensors convert, integer and bool ones keep
    their dtype. Complex to real is refused (it would drop the imaginary part).
    """
    if dtype is None or not computable(spec_dtype):
        return spec_dtype
    if spec_dtype.is_complex and not dtype.is_complex:
        raise SchemaError(f"{what}: {path!r} is {str(spec_dtype).replace('torch.', '')}; "
                          f"converting it to {str(dtype).replace('torch.', '')} would drop its "
                          "imaginary part. Convert to a complex dtype, or delete the parameter "
                          "first")
    return dtype


def _convert(t: torch.Tensor, dtype: torch.dtype, device: torch.device,
             requires_grad: bool) -> torch.Tensor:
    if t.dtype == dtype and t.device == device:
        return t
    out = t.detach().to(device=device, dtype=dtype)
    return out.requires_grad_(True) if requires_grad and computable(dtype) else out


@record
class Convert(Event):
    """Convert the floating-point (and complex) tensors of the species to ``dtype`` and/or
    every tensor to ``device``; integer tensors keep their dtype, as with ``nn.Module.to``.

    Recipients are converted when touched, after every earlier event's snapshot has arrived,
    so a particle several versions old ends with the same dtypes as the initiator.
    """

    dtype: torch.dtype | None = None
    device: torch.device | None = None
    kind: ClassVar[str] = "to"

    def _spec(self, spec: TensorSpec) -> TensorSpec:
        dtype = converted_dtype(spec.dtype, self.dtype, spec.key)
        device = spec.device if self.device is None else self.device
        reset = spec.reset
        if reset is not None:
            reset = _convert(reset, dtype, device, False)
        return TensorSpec(key=spec.key, kind=spec.kind, paths=spec.paths, shape=spec.shape,
                          dtype=dtype, device=device, requires_grad=spec.requires_grad,
                          pid=spec.pid, config=spec.config, state=spec.state,
                          persistent=spec.persistent, policy=spec.policy, reset=reset)

    def apply(self, schema: Schema) -> Schema:
        replace = {spec.key: self._spec(spec) for spec in schema.specs}
        shared = {}
        for key, t in schema.shared.items():
            spec = replace[key]
            new = _convert(t, spec.dtype, spec.device, spec.requires_grad)
            if isinstance(t, nn.Parameter) and not isinstance(new, nn.Parameter):
                new = nn.Parameter(new, requires_grad=spec.requires_grad)
            shared[key] = new
        return schema.derive(skeleton=_retyped(schema._skeleton, self.dtype), replace=replace,
                             shared=shared)

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        out = {}
        for spec in m.after.leaf_specs:
            out[spec.key] = _convert(leaves[spec.key], spec.dtype, spec.device,
                                     spec.requires_grad and spec.kind == "param")
        return out

    def describe(self) -> str:
        parts = []
        if self.dtype is not None:
            parts.append(str(self.dtype).replace("torch.", ""))
        if self.device is not None:
            parts.append(str(self.device))
        return "to " + " ".join(parts)


def _retyped(skeleton: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """A copy of a (meta) skeleton whose floating-point tensors have ``dtype``."""
    if dtype is None:
        return skeleton
    memo: dict[int, Any] = {}
    for _, t in [*skeleton.named_parameters(remove_duplicate=False),
                 *skeleton.named_buffers(remove_duplicate=False)]:
        if id(t) in memo:
            continue
        new_dtype = dtype if computable(t.dtype) else t.dtype
        meta = torch.empty_like(t, device="meta", dtype=new_dtype)
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(
            t, nn.Parameter) else meta
    memo[id(memo)] = [skeleton]
    return copy.deepcopy(skeleton, memo)
