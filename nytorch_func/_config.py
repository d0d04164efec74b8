"""ParamConfig: the per-parameter settings that particle arithmetic honours."""

from __future__ import annotations

from typing import Any

from ._errors import ArgumentTypeError, SchemaError, frozen

__all__ = ["ParamConfig"]

_FIELDS = ("operational", "clone")


class ParamConfig:
    """Frozen settings of one parameter, shared by every particle of a species.

    ``operational``: particle arithmetic computes this parameter (``True``), or carries it over
    from the left operand (``False``). ``clone``: only meaningful for non-operational parameters;
    ``False`` makes the parameter one tensor shared by the whole species instead of a per-particle
    value. Any other keyword becomes a user attribute (its value must be hashable), readable as an
    attribute, e.g. a per-parameter ``mutation_scale``.

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

    __slots__ = ("operational", "clone", "_attrs", "_hash")

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
        object.__setattr__(self, "_hash", hash((operational, clone, self._attrs)))

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
        """A new config with ``changes`` applied; ``None`` values are ignored."""
        merged = self.asdict()
        merged.update({k: v for k, v in changes.items() if v is not None})
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
        return (self.operational, self.clone, self._attrs) == (
            other.operational, other.clone, other._attrs)

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
