"""Reading a merge call's arguments: particles of one species, per-model coefficients.

Every public merge function first turns its arguments into a ``Call``: the base (or ``None``),
the models as one population at the species' newest version, and per-model coefficient vectors.
A coefficient is kept as a list of Python floats when it is one (checked here, and usable as
Python ints for ``torch.kthvalue``), or as a tensor when it is traced (inside ``vmap``,
``grad`` or ``torch.compile``), where its values cannot be read without breaking the trace.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

import nytorch_func as nf
from nytorch_func import ArgumentTypeError, Particle
from nytorch_func._arith import align_all

__all__ = ["Call", "Coeff", "read_call", "coefficient", "scalar",
           "concrete", "compute_dtype", "real_dtype"]


Coeff = "list[float] | torch.Tensor"


@dataclasses.dataclass(frozen=True)
class Call:
    """The particles of one merge: ``base`` (a single particle or None) and ``models``
    (a population of ``m`` members), both at one version of one species."""

    what: str
    base: Particle | None
    models: Particle
    m: int


def read_call(what: str, base: Any, models: Any, *, with_base: bool, min_models: int) -> Call:
    """Check and align ``base`` and ``models`` (a population or a list of single particles).

    Raises ArgumentTypeError for non-particles, SpeciesMismatchError for particles of two
    species, SchemaError for a base with a batch shape, a population of the wrong batch rank or
    fewer than ``min_models`` models.
    """
    if with_base:
        if not isinstance(base, Particle):
            raise ArgumentTypeError(f"{what}: expected base to be a Particle (from "
                                    f"nf.from_module), got {type(base).__name__}")
        if base.batch_shape:
            raise nf.SchemaError(f"{what}: base must be a single particle, got a population of "
                                 f"batch shape {tuple(base.batch_shape)}; pick one member "
                                 "(pop[i]) or merge with nf.mean")
    if isinstance(models, Particle):
        members = [models]
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        members = list(models)
        for i, q in enumerate(members):
            if not isinstance(q, Particle):
                raise ArgumentTypeError(f"{what}: expected models to be a population or a list "
                                        f"of Particles, but models[{i}] is "
                                        f"{type(q).__name__}")
    else:
        raise ArgumentTypeError(f"{what}: expected models to be a population (nf.stack, "
                                f"nf.population) or a list of Particles, got "
                                f"{type(models).__name__}")
    species = (base if with_base else (members or [None])[0])
    species = species.species if species is not None else None
    for i, q in enumerate(members):
        if q.species is not species:
            raise nf.SpeciesMismatchError(
                f"{what}: models[{i}] is of species {q.species.name!r}, "
                f"{'base' if with_base else 'models[0]'} of {species.name!r}; merging needs "
                "particles of one species (derive them from one particle, or put a separately "
                "built module into the species with nf.from_module(module, like=p))")
    if isinstance(models, Particle):
        if len(models.batch_shape) != 1:
            raise nf.SchemaError(f"{what}: models must be a population with one batch dimension "
                                 f"(one member per model), got batch shape "
                                 f"{tuple(models.batch_shape)}; use nf.stack([p1, p2, ...])")
        pop = models
    else:
        for i, q in enumerate(members):
            if q.batch_shape:
                raise nf.SchemaError(f"{what}: models[{i}] is a population of batch shape "
                                     f"{tuple(q.batch_shape)}; a list of models holds single "
                                     "particles (or pass one population)")
        pop = nf.stack(members) if members else None
    m = 0 if pop is None else pop.batch_shape[0]
    if m < min_models:
        need = {1: "one model", 2: "two models"}.get(min_models, f"{min_models} models")
        raise nf.SchemaError(f"{what}: needs at least {need}, got {m}")
    if with_base:
        if base.schema is not pop.schema or not base.schema.is_newest:
            base, pop = align_all(what, base, pop)  # operations touch their operands first
    elif not pop.schema.is_newest:
        pop = nf.touch(pop)
    return Call(what, base if with_base else None, pop, m)


def concrete(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read now (no vmap/grad wrapper, not being compiled)."""
    if torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def coefficient(what: str, name: str, x: Any, m: int, *, default: float | None = None,
                low: float | None = None, high: float | None = None, low_open: bool = False,
                as_values: bool = False) -> Coeff:
    """``x`` as ``m`` per-model coefficients: a list of floats, or a tensor of shape ``(m,)``.

    ``x`` is None (``default`` for every model), one number or 0-dim tensor (every model), or
    ``m`` of them (a sequence or a 1-D tensor). Values are checked against ``[low, high]``
    (``(low, high]`` with ``low_open``) where they can be read. With ``as_values`` a concrete
    tensor comes back as a list (densities: the kernels want Python ints); otherwise a tensor
    stays a tensor (weights: gradients flow through it).
    """
    if x is None:
        if default is None:
            raise ArgumentTypeError(f"{what}: {name} is required (one number, or one per model)")
        return [float(default)] * m
    if _is_number(x):
        values = [float(x)] * m
    elif isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise ArgumentTypeError(f"{what}: {name} must be real numbers, got a {x.dtype} "
                                    "tensor")
        if x.dim() == 0:
            x = x.expand(m)
        elif tuple(x.shape) != (m,):
            raise nf.SchemaError(f"{what}: {name} must be one number or one per model, shape "
                                 f"({m},), got shape {tuple(x.shape)}; to merge many candidates "
                                 "at once, torch.func.vmap over a (candidates, models) tensor")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if not concrete(x):
            return x
        _check_range(what, name, x.detach().tolist(), low, high, low_open)
        return x.detach().tolist() if as_values else x
    elif isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        items = list(x)
        if len(items) != m:
            raise nf.SchemaError(f"{what}: {name} must be one number or one per model ({m}), "
                                 f"got {len(items)}")
        if any(isinstance(v, torch.Tensor) for v in items):
            try:
                t = torch.stack([torch.as_tensor(v) for v in items])
            except (RuntimeError, TypeError) as err:
                raise ArgumentTypeError(f"{what}: {name} must be numbers or 0-dim tensors, got "
                                        f"{x!r}") from err
            return coefficient(what, name, t, m, low=low, high=high, low_open=low_open,
                               as_values=as_values)
        if not all(_is_number(v) for v in items):
            raise ArgumentTypeError(f"{what}: {name} must be numbers, got {x!r}")
        values = [float(v) for v in items]
    else:
        raise ArgumentTypeError(f"{what}: {name} must be a number, a sequence of numbers or a "
                                f"tensor, got {type(x).__name__}")
    _check_range(what, name, values, low, high, low_open)
    return values


def _check_range(what: str, name: str, values: list[float], low: float | None,
                 high: float | None, low_open: bool) -> None:
    for v in values:
        bad = not math.isfinite(v)
        if low is not None:
            bad = bad or (v <= low if low_open else v < low)
        if high is not None:
            bad = bad or v > high
        if bad:
            if low is None:
                rule = "finite"
            else:
                rule = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise nf.SchemaError(f"{what}: every {name} must be {rule}, got {v!r}")


def scalar(what: str, name: str, x: Any) -> "float | torch.Tensor":
    """One number for the whole merge (``scale``, ``t``): a float or a 0-dim tensor."""
    if _is_number(x):
        if not math.isfinite(float(x)):
            raise nf.SchemaError(f"{what}: {name} must be finite, got {x!r}")
        return float(x)
    if isinstance(x, torch.Tensor):
        if x.dim() != 0:
            raise nf.SchemaError(f"{what}: {name} must be one number (a 0-dim tensor), got shape "
                                 f"{tuple(x.shape)}; to try many values, torch.func.vmap over "
                                 "them")
        if x.dtype == torch.bool or x.is_complex():
            raise ArgumentTypeError(f"{what}: {name} must be a real number, got a {x.dtype} "
                                    "tensor")
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    raise ArgumentTypeError(f"{what}: {name} must be a number or a 0-dim tensor, got "
                            f"{type(x).__name__}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a leaf is merged in: float32 for half types, else the leaf's own."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype coefficients take against a leaf merged in ``dtype``."""
    return dtype.to_real() if dtype.is_complex else dtype
