"""Particle: an immutable pytree of one model's per-particle tensors, paired with its schema."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import optree
import torch
import torch.utils._pytree as torch_pytree

from ._arith import at_head, binary, check_generator, fill, make, torch_function, unary
from ._config import ParamConfig
from ._errors import ArgumentTypeError, SchemaError, frozen

if TYPE_CHECKING:
    from ._schema import Schema
    from ._species import Species

__all__ = ["Particle", "param_ids", "expect_particle", "members"]

@dataclasses.dataclass(frozen=True, slots=True, eq=False, repr=False)
class Particle:
    """One model (or a stacked population of models) as a value.

    A particle pairs a :class:`Schema` (structure, parameter ids, configs; static) with its
    *leaves*: the per-particle tensors, in ``schema.leaf_keys`` order. It is frozen and registered
    as a pytree node in optree and ``torch.utils._pytree``, so ``torch.func.grad``, ``vmap``,
    ``functional_call``, ``torch.compile`` and ``optree.tree_map`` see its tensors directly. Any
    leading batch shape is allowed: a population is a particle whose leaves have shape
    ``(n, *shape)``.

    Build particles with :func:`nytorch_func.from_module`; derive more with arithmetic,
    ``clone()``, ``randn()`` and the event functions (the constructor takes a schema and leaves
    in ``schema.leaf_keys`` order and checks nothing: it is what pytree unflattening calls).

    >>> import torch, nytorch_func as nf
    >>> torch.manual_seed(0) and None
    >>> p = nf.from_module(torch.nn.Linear(3, 2))
    >>> q = 0.5 * p + 0.5 * p.randn()
    >>> q.species is p.species, q.version, q.batch_shape
    (True, 0, torch.Size([]))
    >>> sorted(q.params)
    ['bias', 'weight']
    >>> p.weight = None
    Traceback (most recent call last):
    ...
    nytorch_func._errors.FrozenError: Particle is immutable (cannot set 'weight'): derive a new one with nf.add_param, nf.set_none, arithmetic, ...
    """

    _schema: "Schema"
    _leaves: tuple
    _training: bool | None = None
    # The batch shape of a particle with no leaves (a population of a module without tensors),
    # which cannot be read off its leaves. None when the particle has leaves (then ignored).
    _batch: tuple[int, ...] | None = None

    @classmethod
    def _make(cls, schema: "Schema", leaves: tuple, training: bool | None = None,
              batch: tuple[int, ...] | None = None) -> "Particle":
        return cls(schema, leaves, training, None if leaves else batch)

    def __copy__(self) -> "Particle":
        return self

    def __deepcopy__(self, memo: dict) -> "Particle":
        return Particle._make(self._schema, tuple(t.clone() for t in self._leaves), self._training,
                              self._batch)

    def __reduce__(self):
        raise TypeError("Particles are not pickled: use nf.save(path, p) and nf.load(path)")

    # read-only views -------------------------------------------------------------------------
    @property
    def schema(self) -> "Schema":
        """The version of the species this particle is at."""
        return self._schema

    @property
    def species(self) -> "Species":
        return self._schema.species

    @property
    def version(self) -> int:
        return self._schema.version

    @property
    def leaves(self) -> tuple[torch.Tensor, ...]:
        """The per-particle tensors, in ``schema.leaf_keys`` order."""
        return self._leaves

    @property
    def training(self) -> bool:
        """The mode ``nf.apply`` runs the forward pass in."""
        return self._schema.training if self._training is None else self._training

    @property
    def params(self) -> Mapping[str, torch.Tensor]:
        """Every parameter by canonical path, shared (``clone=False``) ones included."""
        return MappingProxyType(self._named("param"))

    @property
    def buffers(self) -> Mapping[str, torch.Tensor]:
        """Every buffer by canonical path, shared ones included."""
        return MappingProxyType(self._named("buffer"))

    def _named(self, kind: str) -> dict[str, torch.Tensor]:
        s = self._schema
        out = {}
        for spec in s.specs:
            if spec.kind == kind:
                i = s.leaf_index.get(spec.key)
                out[spec.key] = self._leaves[i] if i is not None else s.shared[spec.key]
        return out

    @property
    def batch_shape(self) -> torch.Size:
        """The leading dimensions the leaves carry beyond their schema shape (``()`` for one model).

        A particle without per-particle tensors (a module with no parameters or buffers, or
        only shared ones) records its batch shape instead, so ``nf.population`` and
        ``nf.stack`` of such particles keep their length.
        """
        for spec, leaf in zip(self._schema.leaf_specs, self._leaves):
            return leaf.shape[: leaf.dim() - len(spec.shape)]
        return torch.Size(self._batch or ())

    def config(self, path: str) -> ParamConfig:
        """The species-wide ParamConfig of the parameter at ``path`` (any alias).

        A path that names no parameter is a SchemaError naming close matches; one that is not
        a string is an ArgumentTypeError.

        >>> import torch, nytorch_func as nf
        >>> nf.from_module(torch.nn.Linear(2, 1)).config("bias")
        ParamConfig(operational=True, clone=True)
        """
        return self._schema.spec(path, kind="param", what="config").config  # type: ignore[return-value]

    def numel(self) -> int:
        """Elements in the per-particle leaves (all members of a population)."""
        return sum(t.numel() for t in self._leaves)

    def __repr__(self) -> str:
        s = self._schema
        n_params = sum(spec.is_param for spec in s.specs)
        batch = f", batch_shape={tuple(self.batch_shape)}" if self.batch_shape else ""
        return (f"Particle(species={s.species.name!r}, version={s.version}{batch}, "
                f"params={n_params}, buffers={len(s.specs) - n_params}, "
                f"numel={self.numel()})")

    # modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Particle":
        """The same particle with ``nf.apply`` running in training mode (or eval if False)."""
        return Particle._make(self._schema, self._leaves, bool(mode), self._batch)

    def eval(self) -> "Particle":
        """The same particle with ``nf.apply`` running in eval mode."""
        return self.train(False)

    # containers ------------------------------------------------------------------------------
    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        shape = self.batch_shape
        if not shape:
            raise ArgumentTypeError("len() of a single particle: only populations (nf.stack, "
                                    "nf.population) have a length")
        return shape[0]

    def __iter__(self) -> Iterator["Particle"]:
        """The members of a population along its first batch dimension."""
        n = members(self, "iter(pop)")
        if not self._leaves:
            member = tuple(self.batch_shape[1:])
            return iter([Particle._make(self._schema, (), self._training, member)
                         for _ in range(n)])
        columns = [t.unbind(0) for t in self._leaves]
        return iter([Particle._make(self._schema, tuple(c[i] for c in columns), self._training)
                     for i in range(n)])

    def __getitem__(self, index: Any) -> Any:
        """``p["path"]``: one tensor; ``pop[i]``, ``pop[i:j]``, ``pop[idx_tensor]``,
        ``pop[bool_mask]``: members along the first batch dimension."""
        if isinstance(index, str):
            spec = self._schema.spec(index, what="particle[path]")
            i = self._schema.leaf_index.get(spec.key)
            return self._leaves[i] if i is not None else self._schema.shared[spec.key]
        members(self, "pop[index]")
        if isinstance(index, tuple):
            raise SchemaError("pop[index]: index the first batch dimension only (an int, slice, "
                              "index tensor or mask), not a tuple")
        try:
            leaves = tuple(t[index] for t in self._leaves)
            # no leaves to index: index an empty stand-in of the batch shape for the new one
            batch = None if leaves else tuple(
                torch.empty((*self.batch_shape, 0))[index].shape[:-1])
        except (IndexError, TypeError, RuntimeError) as err:
            raise SchemaError(f"pop[index]: {err}") from err
        return Particle._make(self._schema, leaves, self._training, batch)

    # arithmetic: operational parameters only, each leaf keeping its schema dtype ---------------
    __add__, __radd__ = binary("add")
    __sub__, __rsub__ = binary("sub")
    __mul__, __rmul__ = binary("mul")
    __truediv__, __rtruediv__ = binary("truediv")
    __pow__, __rpow__ = binary("pow")
    __neg__ = unary("neg")
    __pos__ = unary("pos")
    __abs__ = unary("abs")
    __torch_function__ = classmethod(torch_function)  # ``tensor * p``, and operators compiled
    # NumPy defers to the particle, as it does to torch.Tensor: ``np.float64(w) * p`` and
    # ``np_array * pop`` call ``p.__rmul__`` (numbers, per-member weights) instead of treating
    # a population as a sequence and building an object array of particles.
    __array_ufunc__ = None
    __array_priority__ = 1000

    # copies and values made from nothing -------------------------------------------------------
    def clone(self) -> "Particle":
        """A particle of the same species whose leaves are fresh copies (autograd history kept)."""
        return _mapped(self, lambda t: t.clone())

    def detach(self) -> "Particle":
        """The same values with autograd history cut (``Tensor.detach`` on every leaf)."""
        return _mapped(self, lambda t: t.detach())

    def randn(self, *, generator: torch.Generator | None = None) -> "Particle":
        """Operational parameters drawn from N(0, 1); everything else carried over.

        Inside ``torch.func.vmap(..., randomness="different")`` every member draws its own.

        >>> import torch, nytorch_func as nf
        >>> p = nf.from_module(torch.nn.Linear(2, 2))
        >>> a = p.randn(generator=torch.Generator().manual_seed(0))
        >>> b = p.randn(generator=torch.Generator().manual_seed(0))
        >>> torch.equal(a["weight"], b["weight"])
        True
        """
        check_generator(generator, "randn")
        return fill(self, lambda t: torch.randn(t.shape, generator=generator, dtype=t.dtype,
                                                device=t.device))

    def rand(self, *, generator: torch.Generator | None = None) -> "Particle":
        """Operational parameters drawn from U[0, 1); everything else carried over.

        >>> import torch, nytorch_func as nf
        >>> q = nf.from_module(torch.nn.Linear(2, 2)).rand()
        >>> bool(((q["weight"] >= 0) & (q["weight"] < 1)).all())
        True
        """
        check_generator(generator, "rand")
        return fill(self, lambda t: torch.rand(t.shape, generator=generator, dtype=t.dtype,
                                               device=t.device))

    def zeros(self) -> "Particle":
        """Operational parameters set to zero; everything else carried over.

        >>> import torch, nytorch_func as nf
        >>> nf.from_module(torch.nn.Linear(2, 1)).zeros()["bias"]
        tensor([0.], requires_grad=True)
        """
        return fill(self, torch.zeros_like)


def _mapped(p: Particle, fn: Any) -> Particle:
    p = at_head(p)
    return make(p, p._schema, tuple(fn(t) for t in p._leaves), p._batch)


def expect_particle(x: Any, what: str, hint: str = "") -> None:
    """Raise :class:`ArgumentTypeError` unless ``x`` is a Particle; ``hint`` says what to do."""
    if not isinstance(x, Particle):
        raise ArgumentTypeError(f"{what}: expected a Particle (from nf.from_module), got "
                                f"{type(x).__name__}{'; ' + hint if hint else ''}")


def members(pop: Any, what: str) -> int:
    """The member count of population ``pop`` (its first batch dim); typed errors otherwise."""
    if not isinstance(pop, Particle):
        raise ArgumentTypeError(f"{what}: expected a population (a Particle with a batch "
                                f"dimension), got {type(pop).__name__}")
    shape = pop.batch_shape
    if not shape:
        raise SchemaError(f"{what}: the particle has no batch dimension; make a population with "
                          "nf.stack or nf.population first")
    return shape[0]


# pytree registration --------------------------------------------------------------------------

def _flatten(p: Particle) -> tuple[list, tuple]:
    return list(p._leaves), (p._schema, p._training, p._batch)


def _unflatten(children: Any, aux: tuple) -> Particle:
    return Particle._make(aux[0], tuple(children), aux[1], aux[2])


def _flatten_with_keys(p: Particle) -> tuple[list, tuple]:
    keys = p._schema.leaf_keys
    return ([(torch_pytree.MappingKey(k), t) for k, t in zip(keys, p._leaves)],
            (p._schema, p._training, p._batch))


torch_pytree.register_pytree_node(
    Particle, _flatten, _unflatten, serialized_type_name="nytorch_func.Particle",
    flatten_with_keys_fn=_flatten_with_keys)

optree.register_pytree_node(
    Particle,
    lambda p: (p._leaves, (p._schema, p._training, p._batch), p._schema.leaf_keys),
    lambda aux, children: _unflatten(children, aux),
    path_entry_type=optree.MappingEntry,
    namespace=optree.registry.__GLOBAL_NAMESPACE,  # type: ignore[attr-defined]
)


def param_ids(p: Particle) -> dict[str, int]:
    """``{path: stable parameter id}`` for every parameter (aliases of tied ones included).

    Ids are given in ``named_parameters`` order when the species is made and never change;
    parameters added later get new ids, deleted ones leave gaps.

    >>> import torch, nytorch_func as nf
    >>> nf.param_ids(nf.from_module(torch.nn.Linear(2, 1)))
    {'weight': 0, 'bias': 1}
    """
    expect_particle(p, "param_ids")
    return {path: s.pid for s in p._schema.specs if s.kind == "param" for path in s.paths}


def _frozen_setattr(self: Particle, name: str, value: Any) -> None:
    raise frozen("Particle", name, "derive a new one with nf.add_param, nf.set_none, "
                 "arithmetic, ...")


def _frozen_delattr(self: Particle, name: str) -> None:
    _frozen_setattr(self, name, None)


# Set after the dataclass decorator (which forbids defining them in the body): a clear message
# instead of the generic one, with the class still a frozen dataclass for torch.compile.
Particle.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
Particle.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
