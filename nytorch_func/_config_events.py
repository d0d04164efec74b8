"""Events that change settings, not structure: parameter configs and buffer policies."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ._config import ParamConfig
from ._errors import ArgumentTypeError, SchemaError
from ._events import Event, Leaves, Migration, recipient_copy, record, select_by_path
from ._schema import Schema, TensorSpec

__all__ = ["Configure", "ConfigureBuffer", "ConfigureBuffers"]


@record
class Configure(Event):
    """Change the configs of the parameters under a path (operational, clone, attributes).

    ``to_shared``: parameters that stop being per-particle, with the one tensor the species
    keeps from now on (the initiator's value). ``to_leaf``: shared parameters that become
    per-particle again, with a snapshot of the shared value taken when the event was made (a
    snapshot, since the old versions' shared tensor may still change in place), which every
    particle gets a copy of.
    """

    path: str
    configs: tuple[tuple[str, ParamConfig], ...]  # key -> new config
    to_shared: tuple[tuple[str, torch.Tensor], ...] = ()
    to_leaf: tuple[tuple[str, torch.Tensor], ...] = ()
    kind: ClassVar[str] = "configure"

    def apply(self, schema: Schema) -> Schema:
        new = dict(self.configs)
        to_shared = dict(self.to_shared)
        replace, shared = {}, None
        for key, config in new.items():
            before = schema.spec(key, kind="param", what="configure")
            spec = dataclasses.replace(before, config=config)
            replace[key] = spec
            if before.leaf != spec.leaf:
                shared = dict(schema.shared) if shared is None else shared
                if spec.leaf:
                    del shared[key]
                else:
                    shared[key] = to_shared[key]
        return schema.derive(replace=replace, shared=shared)

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...] | None:
        return None if self.to_leaf else select_by_path(before, after)

    def migrate(self, leaves: Leaves, m: Migration) -> Leaves:
        out = dict(leaves)
        for key, _ in self.to_shared:
            out.pop(key, None)
        for key, value in self.to_leaf:
            out[key] = recipient_copy(value, m.batch_shape, value.requires_grad)
        return out

    def describe(self) -> str:
        changed = ", ".join(f"{k}: {c}" for k, c in self.configs)
        return f"configure {self.path or '<all>'} -> {changed}"


BUFFER_POLICIES = ("keep", "mean", "reset")


@record
class ConfigureBuffer(Event):
    """Change what reductions over particles (``nf.mean``, soups, crossover) do with a buffer.

    ``policy``: ``"mean"`` (the default) averages floating-point values (integer counters take
    the maximum), ``"keep"`` takes the first operand's value, ``"reset"`` gives ``value``, the
    snapshot recorded when the policy was set (kept in the buffer's spec as ``spec.reset``, so
    every later version has it). Leaves are untouched: only the schema changes.
    """

    path: str
    policy: str
    value: torch.Tensor | None = None  # "reset" only: the value reductions give the buffer
    kind: ClassVar[str] = "configure_buffer"

    def apply(self, schema: Schema) -> Schema:
        spec = schema.spec(self.path, kind="buffer", what="configure_buffer")
        return schema.derive(replace={spec.key: _with_policy(spec, self.policy, self.value,
                                                             self.path)})

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...]:
        return select_by_path(before, after)

    def describe(self) -> str:
        return f"configure_buffer {self.path} policy={self.policy}"


@record
class ConfigureBuffers(Event):
    """One policy for every buffer under a module (``path``; ``""`` is the whole model).

    ``resets`` (policy ``"reset"`` only): each buffer's reset value by key, snapshots of the
    initiator's values when the event was made. One event, one new version.
    """

    path: str
    policy: str
    resets: tuple[tuple[str, torch.Tensor], ...] = ()
    kind: ClassVar[str] = "configure_buffers"

    def apply(self, schema: Schema) -> Schema:
        targets = schema.specs_under(self.path, kind="buffer")
        if not targets:
            raise SchemaError(f"configure_buffer: no buffers under module {self.path or '<root>'!r}"
                              f" in version {schema.version}")
        resets = dict(self.resets)
        return schema.derive(replace={
            spec.key: _with_policy(spec, self.policy, resets.get(spec.key), spec.key)
            for spec in targets})

    def selection(self, before: Schema, after: Schema) -> tuple[int, ...]:
        return select_by_path(before, after)

    def describe(self) -> str:
        return f"configure_buffer {self.path or '<all>'} (every buffer) policy={self.policy}"


def _with_policy(spec: TensorSpec, policy: str, value: torch.Tensor | None,
                 path: str) -> TensorSpec:
    """``spec`` with ``policy`` (and, for ``"reset"``, the checked reset ``value``)."""
    if not isinstance(policy, str):
        raise ArgumentTypeError(f"configure_buffer: policy for {path!r} must be one of "
                                f"{BUFFER_POLICIES} (a str), got {type(policy).__name__}")
    if policy not in BUFFER_POLICIES:
        raise SchemaError(f"configure_buffer: policy for {path!r} must be one of "
                          f"{BUFFER_POLICIES}, got {policy!r}")
    reset = None
    if policy == "reset":
        v = value
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != spec.shape or v.dtype != spec.dtype:
            got = (f"[{'x'.join(map(str, v.shape))} {v.dtype}]" if isinstance(v, torch.Tensor)
                   else type(v).__name__)
            raise SchemaError(
                f"configure_buffer: policy 'reset' needs a value for {path!r} of shape "
                f"{spec.shape} and dtype {spec.dtype}, got {got}")
        reset = v
    return dataclasses.replace(spec, policy=policy, reset=reset)
