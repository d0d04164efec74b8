"""nytorch's mutable ParamConfig, and how its settings map onto the core's frozen ParamConfig.

nytorch's ``clone`` flag is a rule for particle operations only: a non-operational parameter of
the result is a copy of the left operand's tensor (``clone=True``) or that very tensor
(``clone=False``); every particle still holds its own values. The core's ``clone=False`` means
more: one tensor for the whole species (``ParamConfig.shared``), so making a parameter shared
would overwrite the other particles' values with the initiator's. The facade therefore keeps
such a parameter per particle in the core (``clone=True``) and records nytorch's flag as the
attribute ``nytorch_clone=False``; views (:class:`MutableParamConfig`) show it as ``clone``.
"""

from __future__ import annotations

from typing import Any

from .._config import ParamConfig as CoreConfig
from .._errors import SchemaError

__all__ = ["MutableParamConfig", "view_dict", "to_core", "carried_copy", "FLAG"]

FLAG = "nytorch_clone"


def view_dict(config: CoreConfig) -> dict[str, Any]:
    """nytorch's view of a core config: ``operational``, ``clone`` (nytorch's meaning), attrs."""
    d = config.asdict()
    if FLAG in d:
        d["clone"] = d.pop(FLAG)
    return d


def to_core(view: dict[str, Any], before: CoreConfig) -> CoreConfig:
    """The core config for nytorch settings ``view`` (``before`` itself when nothing changed)."""
    if view == view_dict(before):
        return before
    attrs = {k: v for k, v in view.items() if k not in ("operational", "clone")}
    if FLAG in attrs:
        raise SchemaError(f"ParamConfig: the attribute name {FLAG!r} is taken by the facade "
                          "(it holds nytorch's clone flag); choose another name")
    operational, clone = view.get("operational", True), view.get("clone", True)
    if operational is False and clone is False and not before.shared:
        # per particle in the core, nytorch's rule kept (a core-shared parameter stays shared)
        return CoreConfig(operational=False, clone=True, **{FLAG: False}, **attrs)
    return CoreConfig(operational=operational, clone=clone, **attrs)


def carried_copy(config: CoreConfig) -> bool:
    """Whether an operation's result holds a *copy* of a parameter it does not compute."""
    return config.get(FLAG, config.clone) is not False


class MutableParamConfig:
    """A mutable view of one parameter's config, handed to ``apply_param_config`` callbacks.

    Set ``operational``, ``clone`` or any attribute; when the callback returns, every change
    becomes one core ``Configure`` event (one new version for the whole species).

    >>> c = MutableParamConfig(operational=False)
    >>> c.is_weight = True
    >>> c
    ParamConfig(operational=False, clone=True, is_weight=True)
    >>> c.freeze()
    ParamConfig(operational=False, clone=True, is_weight=True)
    >>> MutableParamConfig(operational=False, clone=False).freeze()
    ParamConfig(operational=False, clone=True, nytorch_clone=False)
    """

    def __init__(self, operational: bool = True, clone: bool = True, **attrs: Any) -> None:
        self.operational = operational
        self.clone = clone
        self.__dict__.update(attrs)

    @classmethod
    def of(cls, config: CoreConfig) -> "MutableParamConfig":
        """The view of a core config."""
        return cls(**view_dict(config))

    def freeze(self, before: CoreConfig | None = None) -> CoreConfig:
        """The frozen core ParamConfig with these settings (SchemaError if a value is invalid)."""
        return to_core(dict(self.__dict__), before or CoreConfig())

    def copy(self) -> "MutableParamConfig":
        return MutableParamConfig(**self.__dict__)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MutableParamConfig):
            return self.__dict__ == other.__dict__
        if isinstance(other, CoreConfig):
            return self.__dict__ == view_dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "ParamConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"
