"""ParamConfig: the per-parameter settings that particle arithmetic honours."""

from __future__ import annotations

from typing import Any

from ._errors import ArgumentTypeError, SchemaError, frozen

__all__ = ["ParamConfig", "value_key"]

_FIELDS = ("operational", "clone")


class _NaN:
    """The one key every NaN float maps to (NaN is not equal to itself, and since Python 3.10
    each NaN object hashes by identity)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "nan"


_NAN = _NaN()
_COMPLEX = object()  # heads the key of a complex number holding a NaN (no user tuple holds it)


def value_key(value: Any) -> Any:
    """``value`` with every NaN (also inside complex numbers, tuples and frozensets) replaced by
    one marker, so two values that differ only in which NaN objects they hold compare and hash
    equal; any other value is returned as it is.

    >>> nan = float("nan")
    >>> (nan,) == (float("nan"),), value_key((nan,)) == value_key((float("nan"),))
    (False, True)
    >>> value_key(1.5), value_key(complex(nan, 0)) == value_key(complex(nan, 0))
    (1.5, True)
    """
    if isinstance(value, float):
        return _NAN if value != value else value
    if isinstance(value, complex):
        if value != value:
            return (_COMPLEX, value_key(value.real), value_key(value.imag))
        return value
    if isinstance(value, tuple):
        return tuple(value_key(v) for v in value)
    if isinstance(value, frozenset):
        return frozenset(value_key(v) for v in value)
    return value


class ParamConfig:
    """Frozen settings of one parameter, shared by every particle of a species.

    ``operational``: particle arithmetic computes this parameter (``True``), or carries it over
    from the left operand (``False``). ``clone``: only meaningful for non-operational parameters;
    ``False`` makes the parameter one tensor shared by the whole species instead of a per-particle
    value. Any other keyword becomes a user attribute (its value must be hashable, ``None``
    included), readable as an attribute, e.g. a per-parameter ``mutation_scale``.

    Two configs are equal (and hash alike) when their settings are, a NaN equal to a NaN (so a
    config holding ``scale=float("nan")`` equals its copy loaded from a checkpoint).

    >>> c = ParamConfig(operational=False, is_weight=True)
    >>> c
    ParamConfig(operational=False, clone=True, is_weight=True)
    >>> c.is_weight, c.shared
    (True, False)
    >>> c.replace(clone=False).shared
    True
    >>> c.operational = True
    Traceback (most recent call last):
    ...
    nytorch_func._errors.FrozenError: ParamConfig is immutable (cannot set 'operational'): use config.replace(operational=...)
    """

    __slots__ = ("operational", "clone", "_attrs", "_key", "_hash")

    def __init__(self, operational: bool = True, clone: bool = True, **attrs: Any) -> None:
        for name, value in (("operational", operational), ("clone", clone)):
            if not isinstance(value, bool):
                raise ArgumentTypeError(f"ParamConfig: {name} must be a bool, got {value!r}")
        for key, value in attrs.items():
            if key.startswith("_"):
                raise SchemaError(f"ParamConfig: attribute names may not start with '_': {key!r}")
            if key in _RESERVED:
                raise SchemaError(f"ParamConfig: attribute name {key!r} is taken by ParamConfig "
                                  f"itself (config.{key} would not return it); choose another name")
            try:
                hash(value)
            except TypeError:
                raise ArgumentTypeError(
                    f"ParamConfig: attribute {key!r} must be hashable (configs are shared, frozen "
                    f"values), got {type(value).__name__} {value!r:.60}; use a tuple instead of "
                    "a list"
                ) from None
        object.__setattr__(self, "operational", operational)
        object.__setattr__(self, "clone", clone)
        object.__setattr__(self, "_attrs", tuple(sorted(attrs.items())))
        object.__setattr__(self, "_key", (operational, clone, value_key(self._attrs)))
        object.__setattr__(self, "_hash", hash(self._key))

    @property
    def shared(self) -> bool:
        """True when the parameter is one tensor for the whole species (not operational, no clone)."""
        return not self.operational and not self.clone

    @property
    def attrs(self) -> dict[str, Any]:
        """The user attributes as a new dict."""
        return dict(self._attrs)

    def asdict(self) -> dict[str, Any]:
        """All settings, ``operational`` and ``clone`` first."""
        return {"operational": self.operational, "clone": self.clone, **dict(self._attrs)}

    def replace(self, **changes: Any) -> "ParamConfig":
        """A new config with ``changes`` applied.

        ``operational=None`` or ``clone=None`` keeps that setting (as ``nf.configure`` does with
        its unset arguments); a user attribute given ``None`` holds ``None``, like
        ``ParamConfig(tag=None)``.

        >>> c = ParamConfig(tag="x")
        >>> c.replace(operational=None, tag=None)
        ParamConfig(operational=True, clone=True, tag=None)
        """
        merged = self.asdict()
        merged.update({k: v for k, v in changes.items() if v is not None or k not in _FIELDS})
        return ParamConfig(**merged)

    def __getattr__(self, name: str) -> Any:
        for key, value in object.__getattribute__(self, "_attrs"):
            if key == name:
                return value
        raise AttributeError(f"ParamConfig has no attribute {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        """An attribute's value, or ``default`` where it is not set."""
        return self.asdict().get(name, default)

    def __setattr__(self, name: str, value: Any) -> None:
        raise frozen("ParamConfig", name, f"use config.replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParamConfig):
            return NotImplemented
        return self is other or self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.asdict().items())
        return f"ParamConfig({body})"

    def __reduce__(self):  # copy/deepcopy support; never used for pickling to disk
        return (_rebuild, (self.asdict(),))


_RESERVED = frozenset(name for name in vars(ParamConfig) if not name.startswith("_"))


def _rebuild(fields: dict[str, Any]) -> ParamConfig:
    return ParamConfig(**fields)
