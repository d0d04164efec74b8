"""``nytorch.module`` names: :class:`NytoModule` and :class:`ParamProduct`."""

from .._facade import NytoModule, ParamProduct

__all__ = ["NytoModule", "ParamProduct"]
