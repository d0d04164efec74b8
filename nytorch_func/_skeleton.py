"""Meta skeletons: the module trees schemas hold, and the copy-on-write copies events make.

A skeleton is a deep copy of a module with every parameter and buffer replaced by a tensor on
the ``meta`` device (shape, dtype and class, no data). An event copies only the modules on the
path to its change (:func:`copy_path`); versions share every other submodule.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._errors import SchemaError
from ._module_view import ModuleView, live

__all__ = ["to_meta", "make_skeleton", "shallow_module", "copy_path", "copy_paths", "split_path"]


def to_meta(t: torch.Tensor) -> torch.Tensor:
    """A data-free copy of ``t`` on the meta device, keeping its class and requires_grad."""
    meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
    if type(t) is not torch.Tensor and isinstance(t, nn.Parameter):
        return nn.Parameter(meta, requires_grad=t.requires_grad)
    return meta


def make_skeleton(module: nn.Module) -> nn.Module:
    """Deep-copy ``module`` with every parameter and buffer replaced by a meta tensor."""
    module = live(module)
    memo: dict[int, Any] = {}
    for _, t in [*module.named_parameters(remove_duplicate=False),
                 *module.named_buffers(remove_duplicate=False)]:
        if id(t) not in memo:
            memo[id(t)] = to_meta(t)
    memo[id(memo)] = [module]  # keep-alive list deepcopy expects
    return copy.deepcopy(module, memo)


def shallow_module(m: nn.Module) -> nn.Module:
    """A copy of ``m`` that owns its own parameter/buffer/child dicts (children are shared)."""
    cls = type(m)
    if cls is ModuleView:  # (a caller that read schema.skeleton)
        m = live(m)
        cls = type(m)
    if (cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and cls.__setstate__ is nn.Module.__setstate__ and not hasattr(cls, "__copy__")):
        new = object.__new__(cls)  # what copy.copy does for a plain module, without its detours
        object.__setattr__(new, "__dict__", dict(m.__dict__))
    else:
        new = copy.copy(m)
    d = new.__dict__
    d["_parameters"] = dict(m._parameters)
    d["_buffers"] = dict(m._buffers)
    d["_modules"] = dict(m._modules)
    d["_non_persistent_buffers_set"] = set(m._non_persistent_buffers_set)
    if isinstance(d.get("_flat_weights"), list):  # RNNs keep a list that setattr edits in place
        d["_flat_weights"] = list(d["_flat_weights"])
    return new


def copy_path(root: nn.Module, module_path: str) -> tuple[nn.Module, nn.Module]:
    """Copy-on-write the modules from ``root`` down to ``module_path``.

    Returns ``(new_root, new_target)``; every module off that path stays shared with the old
    skeleton, so an event costs the depth of the change, not the size of the model.
    """
    new_root, copied = copy_paths(root, (module_path,))
    return new_root, copied[module_path]


def copy_paths(root: nn.Module, module_paths: Iterable[str]
               ) -> tuple[nn.Module, dict[str, nn.Module]]:
    """:func:`copy_path` for several modules at once: each module on the way is copied once.

    Returns ``(new_root, {path: new module})`` for every path given and every module above.
    """
    new_root = shallow_module(root)  # (a ModuleView given as root is read through)
    copied = {"": new_root}
    for path in module_paths:
        node, walked = new_root, ""
        for name in path.split(".") if path else ():
            walked = f"{walked}.{name}" if walked else name
            done = copied.get(walked)
            if done is None:
                child = node._modules.get(name)
                if child is None:
                    raise SchemaError(f"no submodule {name!r} on the way to {path!r}")
                done = copied[walked] = node._modules[name] = shallow_module(child)
            node = done
    return new_root, copied


def split_path(path: str) -> tuple[str, str]:
    """``"a.b.c"`` -> ``("a.b", "c")``; ``"c"`` -> ``("", "c")``."""
    head, _, name = path.rpartition(".")
    return head, name
