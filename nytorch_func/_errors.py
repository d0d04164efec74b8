"""Typed errors. Every error says what was wrong and what to do instead.

All of them derive from :class:`NytorchFuncError`, so ``except nf.NytorchFuncError`` catches every
refusal of this library; none of them is raised after an object was changed. They also derive
from the builtin exception a Python user would expect: an argument of the wrong type is a
``TypeError`` (:class:`ArgumentTypeError`, :class:`SpeciesMismatchError`), a wrong value a
``ValueError`` (:class:`SchemaError`, :class:`VersionError`, :class:`CheckpointError`), and an
assignment to a frozen object a ``dataclasses.FrozenInstanceError`` (:class:`FrozenError`).

>>> import nytorch_func as nf
>>> issubclass(nf.ArgumentTypeError, TypeError), issubclass(nf.SchemaError, ValueError)
(True, True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["NytorchFuncError", "ArgumentTypeError", "SpeciesMismatchError", "VersionError",
           "SchemaError", "CheckpointError", "FrozenError", "expect"]


class NytorchFuncError(Exception):
    """Base class of every error nytorch_func raises on purpose."""


class ArgumentTypeError(NytorchFuncError, TypeError):
    """An argument of the wrong type (a tensor where a particle belongs, a string for a module)."""


class SpeciesMismatchError(NytorchFuncError, TypeError):
    """Two particles of different species met in one operation.

    Particles of one species share structure, parameter ids and configs; those of two species
    may not. Derive both operands from one particle (``p.clone()``, ``p.randn()``,
    ``nf.population(p, n)``), or put a separately built module into the species with
    ``nf.from_module(module, like=p)``.
    """


class VersionError(NytorchFuncError, ValueError):
    """A particle cannot be brought to the version asked for (older, unknown or foreign)."""


class SchemaError(NytorchFuncError, ValueError):
    """A path, shape, dtype, device or value does not fit the particle's schema."""


class CheckpointError(NytorchFuncError, ValueError):
    """A checkpoint cannot be written or read: unsupported state, or a damaged/untrusted file.

    The message names what is wrong (the module and attribute that cannot be saved, the tensor
    whose checksum failed, the class a file asks for that is not allowed, ...).
    """


class FrozenError(NytorchFuncError, dataclasses.FrozenInstanceError):
    """An assignment to an immutable object (Particle, Schema, TensorSpec, ParamConfig, event).

    Derive a new object instead: events and arithmetic for particles, ``config.replace(...)``
    for configs, ``dataclasses.replace`` for specs.
    """


def expect(value: Any, kind: type | tuple[type, ...], what: str, noun: str) -> None:
    """Raise :class:`ArgumentTypeError` unless ``value`` is a ``kind``.

    ``what`` names the public function, ``noun`` what it takes (``"a Particle (from
    nf.from_module)"``); the message reads ``"{what}: expected {noun}, got {type}"``.

    >>> expect(3, str, "demo", "a path string")
    Traceback (most recent call last):
    ...
    nytorch_func._errors.ArgumentTypeError: demo: expected a path string, got int
    """
    if not isinstance(value, kind):
        raise ArgumentTypeError(f"{what}: expected {noun}, got {type(value).__name__}")


def frozen(cls_name: str, name: str, hint: str) -> FrozenError:
    """The error an assignment to attribute ``name`` of a frozen ``cls_name`` raises."""
    return FrozenError(f"{cls_name} is immutable (cannot set {name!r}): {hint}")


def frozen_dataclass(hint: str, **options: Any) -> Any:
    """A class decorator: ``dataclasses.dataclass(frozen=True, **options)`` whose assignments
    and deletions raise :class:`FrozenError` ending with ``hint`` (what to do instead).

    ``dataclass(frozen=True)`` alone raises the bare ``FrozenInstanceError``, which is no
    :class:`NytorchFuncError`, and installs it again in every class it decorates (subclasses
    included), so each frozen class of the library is decorated by this.

    >>> from nytorch_func._errors import frozen_dataclass
    >>> @frozen_dataclass("make a new one")
    ... class Point:
    ...     x: int
    >>> Point(1).x = 2
    Traceback (most recent call last):
    nytorch_func._errors.FrozenError: Point is immutable (cannot set 'x'): make a new one
    """
    def refuse_set(self: object, name: str, value: object) -> None:
        raise frozen(type(self).__name__, name, hint)

    def refuse_del(self: object, name: str) -> None:
        raise frozen(type(self).__name__, name, hint)

    def decorate(cls: type) -> type:
        cls = dataclasses.dataclass(frozen=True, **options)(cls)
        cls.__setattr__ = refuse_set  # type: ignore[method-assign, assignment]
        cls.__delattr__ = refuse_del  # type: ignore[method-assign, assignment]
        return cls

    return decorate
