"""Hyperparameters: Python numbers (checked like torch.optim's), or tensors with one value per member.

A tensor hyperparameter has shape ``()`` (one value, but a tensor: an LR schedule changes it
without recompiling a ``torch.compile``d step) or a prefix of the population's batch shape (one
value per member, e.g. ``lr=torch.tensor([1e-3, 3e-3, 1e-2])``). Inside ``torch.func.vmap`` over
members, a per-member tensor is mapped to a 0-dim one per member, which works the same way.
Tensors are converted to float64 for the coefficient arithmetic (bias corrections, ``lr * wd``)
and cast to each parameter's dtype when applied.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import torch

from .._errors import ArgumentTypeError, SchemaError, frozen

__all__ = ["check", "resolve", "flag", "nonzero", "optimizer"]


def check(owner: str, name: str, value: Any, *, low: float = 0.0, high: float | None = None,
          high_open: bool = False) -> Any:
    """``value`` validated at construction: a real number in range, or a real tensor.

    Numbers are checked against ``[low, high]`` (``[low, high)`` with ``high_open``) and returned
    as floats; tensor values are not read (no device sync): their shape is checked at each step
    against the population.
    """
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ArgumentTypeError(f"{owner}: {name} must be a real tensor, got {value.dtype}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{owner}: {name} must be a number or a tensor with one value per "
                                f"population member, got {type(value).__name__} ({value!r})")
    v = float(value)
    bad = not (v >= low) or (high is not None and (v >= high if high_open else v > high))
    if bad:
        span = f"[{low:g}, {high:g}{')' if high_open else ']'}" if high is not None else f">= {low:g}"
        raise SchemaError(f"{owner}: invalid {name} {value!r}; it must be {span} (as in "
                          "torch.optim)")
    return v


def resolve(owner: str, name: str, value: Any, batch: tuple[int, ...],
            device: torch.device) -> Any:
    """``value`` for one step: a float, or a float64 tensor of shape ``()`` or a batch prefix."""
    if not isinstance(value, torch.Tensor):
        return value
    shape = tuple(value.shape)
    if len(shape) > len(batch) or shape != batch[: len(shape)]:
        if not batch:
            raise SchemaError(f"{owner}: {name} has shape {shape}, but the parameters are a "
                              "single particle: give one value (a number or a 0-dim tensor); "
                              "one value per population member needs a population")
        raise SchemaError(f"{owner}: {name} has shape {shape}; a tensor hyperparameter must hold "
                          f"one value (shape ()) or one per population member (shape {batch} or a "
                          "prefix of it)")
    if value.device != device:
        if value.dim() == 0 and value.device.type == "cpu":
            value = value.to(device)
        else:
            raise SchemaError(f"{owner}: {name} is on {value.device}, the parameters on {device}; "
                              "move it there first (tensor.to(device))")
    return value.to(torch.float64) if device.type != "mps" else value.to(torch.float32)


def flag(owner: str, name: str, value: Any) -> bool:
    """A boolean option, checked."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def nonzero(value: Any) -> bool:
    """Whether a term with this coefficient is computed (a tensor always is: no device sync)."""
    return isinstance(value, torch.Tensor) or value != 0


def optimizer(cls: type) -> type:
    """Make ``cls`` a frozen dataclass whose assignments and deletions raise the typed
    :class:`~nytorch_func.FrozenError` (``dataclasses.dataclass(frozen=True)`` alone installs
    its own ``__setattr__``/``__delattr__`` raising the bare ``FrozenInstanceError``, in every
    class it decorates, subclasses included: so each optimizer class is decorated by this).
    """
    cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
    cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
    cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
    return cls


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise frozen(type(self).__name__, name, "optimizers are values: make a new one, e.g. "
                 "dataclasses.replace(opt, lr=1e-4)")


def _frozen_delattr(self: object, name: str) -> None:
    _frozen_setattr(self, name, None)
