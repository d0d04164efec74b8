"""What a checkpoint may name: classes and functions, found without importing anything.

A file names classes (``nn.Module`` subclasses of a skeleton, enums, ``NamedTuple`` s) and
functions (a module's ``activation``) by module and qualified name. Loading accepts:

- a class or function the caller passed in ``classes`` (matched by module and qualified name);
- a class whose module is already imported (``sys.modules``; nothing is ever imported);
- a function that is a public name of torch's tensor math: torch's builtin operators
  (``torch.tanh``, ``torch.Tensor.relu``), ``torch.functional``, ``torch.nn.functional``,
  ``torch.special``, ``torch.linalg``, ``torch.fft`` and ``torch.nn.init`` (and the
  ``torch._C`` modules those are defined in). Not ``torch.load``, ``torch.hub``, ``torch.compile``
  or private names: a forward pass that calls an attribute must not reach file I/O or code
  loading because a file said so.
"""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._errors import ArgumentTypeError, CheckpointError

__all__ = ["FUNCTION_TYPES", "lookup", "qualified", "function_name", "allowed_classes",
           "is_namedtuple", "trusted_class", "trusted_function"]

# Where a file may name a function without the caller passing it: torch's tensor math.
_TORCH_MATH = frozenset({
    "torch", "torch.functional", "torch.nn.functional", "torch._C._nn", "torch.special",
    "torch._C._special", "torch.linalg", "torch._C._linalg", "torch.fft", "torch._C._fft",
    "torch.nn.init"})
FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType)


def lookup(module: str, qualname: str) -> Any:
    """The object ``module.qualname`` if ``module`` is already imported; never imports."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None or part.startswith("__"):
            return None
        obj = getattr(obj, part, None)
    return obj


def qualified(obj: Any) -> tuple[str, str]:
    return getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", "")


def function_name(fn: Any) -> tuple[str, str] | None:
    """``(module, name)`` under which ``fn`` can be found again, or None (a lambda, a closure).

    torch's builtin operators report a private qualified name (``torch.tanh`` says
    ``_VariableFunctionsClass.tanh``); they are found under their public name.
    """
    module, qualname = qualified(fn)
    name = getattr(fn, "__name__", "")
    candidates = [(module, qualname), (module, name)]
    if getattr(fn, "__objclass__", None) is torch._C.TensorBase:  # torch.Tensor.relu
        candidates.append(("torch", f"Tensor.{name}"))
    for m, q in candidates:
        if m and q and "<" not in q and lookup(m, q) is fn:
            return m, q
    return None


def allowed_classes(classes: Iterable[Any], what: str) -> dict[tuple[str, str], Any]:
    """``classes`` (what a caller trusts beyond torch and imported modules) by qualified name."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise ArgumentTypeError(f"{what}: classes must be a list of classes (nn.Module, Enum or "
                                f"NamedTuple subclasses) or functions, got {classes!r:.60}")
    out = {}
    for c in classes:
        ok = isinstance(c, type) and (issubclass(c, (nn.Module, enum.Enum)) or is_namedtuple(c))
        if not ok and not isinstance(c, FUNCTION_TYPES):
            raise ArgumentTypeError(f"{what}: classes may hold nn.Module, Enum and NamedTuple "
                                    f"classes and module-level functions, got {c!r:.60}")
        out[qualified(c)] = c
    return out


def is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


def trusted_class(allowed: dict, module: str, qualname: str, kind: str, check: Any) -> type:
    """The class ``module.qualname`` if trusted and ``check(cls)`` holds; else CheckpointError."""
    cls = allowed.get((module, qualname))
    if cls is None:
        cls = lookup(module, qualname)  # only classes of modules already imported
        if cls is None:
            raise CheckpointError(
                f"load: the checkpoint needs the {kind} class {module}.{qualname}, which is "
                "not imported; nf.load never imports code named by a file: import it "
                "yourself, or pass it as nf.load(path, classes=[TheClass])")
    if not (isinstance(cls, type) and check(cls)):
        article = "a" if kind == "NamedTuple" else "an"  # an nn.Module, an Enum
        raise CheckpointError(f"load: the checkpoint names {module}.{qualname} as {article} "
                              f"{kind} class, but it is not one; refusing it")
    return cls


def trusted_function(allowed: dict, module: str, qualname: str) -> Any:
    """The function ``module.qualname`` if passed in ``classes`` or torch tensor math."""
    fn = allowed.get((module, qualname))
    name = qualname[7:] if module == "torch" and qualname.startswith("Tensor.") else qualname
    if fn is None and module in _TORCH_MATH and name.isidentifier() and name[0] != "_":
        fn = lookup(module, qualname)  # a public name of the namespace itself
        if module == "torch" and not isinstance(
                fn, (types.BuiltinFunctionType, types.MethodDescriptorType)):
            fn = None  # torch.load, torch.compile, ...: not tensor math
    if not isinstance(fn, FUNCTION_TYPES):
        raise CheckpointError(f"load: the checkpoint names the function {module}.{qualname}, "
                              "which is not one of torch's tensor-math functions; if you "
                              "trust the file, pass it as nf.load(path, classes=[function])")
    return fn
