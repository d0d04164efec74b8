"""Typed errors. Every error says what was wrong and what to do instead.

All of them derive from :class:`NytorchFuncError`, so ``except nf.NytorchFuncError`` catches every
refusal of this library; none of them is raised after an object was changed.
"""

from __future__ import annotations

__all__ = ["NytorchFuncError", "SpeciesMismatchError", "VersionError", "SchemaError"]


class NytorchFuncError(Exception):
    """Base class of every error nytorch_func raises on purpose."""


class SpeciesMismatchError(NytorchFuncError, TypeError):
    """Two particles of different species met in one operation.

    Particles of one species share structure, parameter ids and configs; those of two species
    may not. Derive both operands from one particle (``p.clone()``, ``p.randn()``,
    ``nf.population(p, n)``), or copy values across with ``nf.from_module(module_of_p)``.
    """


class VersionError(NytorchFuncError, ValueError):
    """A particle cannot be brought to the version asked for (older, unknown or foreign)."""


class SchemaError(NytorchFuncError, ValueError):
    """A path, shape, dtype, device or value does not fit the particle's schema."""
