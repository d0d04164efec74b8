"""Building a merge's result: merged parameters, carried ones, buffers by policy.

One rule for every method: each operational floating-point (or complex) parameter is merged by
the method's per-tensor kernel; every other parameter (non-operational, integer) is carried from
the base, or from model 0 where the method has no base; buffers follow their ``policy``
(``nf.configure_buffer``):

- ``"keep"``: the base's value (model 0's without a base);
- ``"mean"``: floating buffers combined the way the method's docstring says (the models'
  average for the task-vector methods); integer ones keep;
- ``"reset"``: the reset value recorded in the schema.

Integer buffers that keep (``num_batches_tracked``) must hold one value in every model: a
merged model has no single step count otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import nytorch_func as nf
from nytorch_func import Particle, TensorSpec
from nytorch_func._reduce import reset_value

from ._inputs import Call, compute_dtype, concrete

__all__ = ["assemble", "refuse_complex"]

Kernel = Callable[[TensorSpec, "torch.Tensor | None", torch.Tensor], torch.Tensor]
GroupKernel = Callable[[list, list, list], list]
BufferMean = Callable[[TensorSpec, "torch.Tensor | None", torch.Tensor], torch.Tensor]


def _float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def refuse_complex(call: Call, why: str) -> None:
    """SchemaError if an operational parameter is complex (``why``: what needs real values)."""
    s = call.models.schema
    for i in s.op_index:
        spec = s.leaf_specs[i]
        if spec.dtype.is_complex:
            raise nf.SchemaError(
                f"{call.what}: parameter {spec.key!r} is complex ({spec.dtype}) and {why}; "
                f"merge it with nytorch_func.merge.linear or task_arithmetic, or keep it "
                f"unmerged with nf.configure(p, {spec.key!r}, operational=False)")


def _check_integer_buffers(call: Call) -> None:
    s = call.models.schema
    for spec, t in zip(s.leaf_specs, call.models.leaves):
        if spec.kind != "buffer" or spec.policy == "reset" or _float(t) or t.shape[0] < 2:
            continue
        if not concrete(t):
            continue  # traced: the values cannot be compared without breaking the trace
        if not bool((t == t[:1]).all()):
            values = t.reshape(t.shape[0], -1)[:, 0].tolist()
            raise nf.SchemaError(
                f"{call.what}: integer buffer {spec.key!r} differs across the models "
                f"({values}...); a merged model cannot keep one value for it. Make them agree, "
                f"or give it policy 'reset': nf.configure_buffer(p, {spec.key!r}, "
                "policy='reset')")


def assemble(call: Call, kernel: Kernel | None, buffer_mean: BufferMean, *,
             grouped: GroupKernel | None = None) -> Particle:
    """The merged particle: ``kernel(spec, base_leaf, models_leaf)`` for each merged parameter
    (or, with ``grouped``, one ``grouped(specs, base_leaves, models_leaves)`` per compute dtype
    and device, returning the merged leaves in order), ``buffer_mean(spec, base_leaf,
    models_leaf)`` for floating ``"mean"`` buffers, and the carry rules (module docstring) for
    the rest."""
    _check_integer_buffers(call)
    pop = call.models
    s = pop.schema
    base_leaves = call.base.leaves if call.base is not None else None
    out: list = []
    merged: dict[int, torch.Tensor] = {}
    groups: dict[tuple, list[int]] = {}
    for i in s.op_index:
        if pop.leaves[i].numel():
            key = (compute_dtype(s.leaf_specs[i].dtype), pop.leaves[i].device)
            groups.setdefault(key, []).append(i)
    for idx in groups.values():
        specs = [s.leaf_specs[i] for i in idx]
        bases = [base_leaves[i] if base_leaves is not None else None for i in idx]
        models = [pop.leaves[i] for i in idx]
        if grouped is not None:
            results = grouped(specs, bases, models)
        else:
            results = [kernel(*args) for args in zip(specs, bases, models)]  # type: ignore[misc]
        merged.update(zip(idx, results))
    for i, (spec, t) in enumerate(zip(s.leaf_specs, pop.leaves)):
        b = base_leaves[i] if base_leaves is not None else None
        keep = b if b is not None else t[0]
        if i in merged:
            out.append(merged[i])
        elif spec.kind == "buffer" and spec.policy == "reset":
            out.append(reset_value(spec, (), call.what))
        elif spec.kind == "buffer" and spec.policy == "mean" and _float(t) and t.numel():
            out.append(buffer_mean(spec, b, t).to(spec.dtype))
        else:
            out.append(keep)  # non-operational or empty parameters, "keep" buffers
    ref = call.base if call.base is not None else pop
    return Particle(s, tuple(out), ref.training)
