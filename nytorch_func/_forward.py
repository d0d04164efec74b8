"""One forward pass on a species' shared skeleton that leaves no trace behind.

``nf.apply`` runs every particle of a species on one module tree, the schema's skeleton, with
the particle's tensors swapped in by ``torch.func.functional_call``. A forward pass that keeps
state on ``self`` would leak it into the next particle's call; one that writes into a
parameter in place would change the particle. :func:`run` prevents both:

- *module state is restored*: every attribute the forward pass assigns, adds or deletes
  (``self.calls += 1``, ``self.last = x``, a buffer registered on the first call, a submodule
  swapped in, the ``training`` flags) is put back when it returns, eagerly, under
  ``torch.func.vmap`` and under ``torch.compile(fullgraph=True)``. The check is by identity on
  a shallow copy of each module's ``__dict__`` and of its ``_parameters``, ``_buffers``,
  ``_modules`` and ``_non_persistent_buffers_set``; changes made *inside* another mutable
  attribute object (appending to a list kept on ``self``, a hook registered during the
  forward pass) are not seen: keep such state in a buffer and use ``nf.apply_with_state``.
- *parameters are never written*: the modules known to renormalise their weight in place
  (any module with a ``max_norm`` attribute set, as ``nn.Embedding``/``nn.EmbeddingBag`` with
  ``max_norm=``) get a copy of it, so the output is the module's and the particle keeps its
  values. Any other in-place write into a parameter is found after an eager call (by the
  tensors' version counters; writes through ``.data`` are invisible to them) and raised as a
  SchemaError naming the parameter. Inside ``vmap``/``grad`` and ``torch.compile`` that check
  is skipped (the counters of their wrapped tensors do not move).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from ._errors import SchemaError

if TYPE_CHECKING:
    from ._schema import Schema

__all__ = ["run"]

_is_not = operator.is_not


def run(schema: "Schema", training: bool | None, tensors: dict[str, torch.Tensor],
        params: list[tuple[str, torch.Tensor]], args: tuple, kwargs: dict, what: str) -> Any:
    """The forward pass of ``schema``'s skeleton on ``tensors`` (``{path: tensor}``), pure.

    ``training``: the mode every module runs in (``None``: each module's own). ``params``:
    ``(path, tensor)`` of the particle's parameters, checked for in-place writes. ``tensors``
    is updated as ``functional_call`` updates it (a buffer the forward pass reassigns comes
    back in it). The species' call lock is held throughout, so threads running particles of
    one species take turns; under ``torch.compile`` it is skipped (no graph break).
    """
    skeleton = schema._skeleton
    if torch.compiler.is_compiling():
        return _pure_call(skeleton, training, tensors, args, kwargs)
    if torch._C._are_functorch_transforms_active():
        with schema.species._call_lock:
            return _pure_call(skeleton, training, tensors, args, kwargs)
    versions = [t._version for _, t in params]
    with schema.species._call_lock:
        out = _pure_call(skeleton, training, tensors, args, kwargs)
    for (path, t), version in zip(params, versions):
        if t._version != version:
            raise SchemaError(
                f"{what}: the forward pass of {type(skeleton).__name__} wrote into the parameter "
                f"{path!r} in place (or another thread did meanwhile), so the particle's own "
                "tensor has changed. A particle is "
                "immutable and nf.apply never changes one: compute a new tensor in forward "
                "instead of changing the parameter (w = w.clamp(...), not w.clamp_(...)), or "
                "keep the value in a buffer and use nf.apply_with_state")
    return out


def _pure_call(skeleton: nn.Module, training: bool | None, tensors: dict[str, torch.Tensor],
               args: tuple, kwargs: dict) -> Any:
    saved = []
    renorm = []
    for m in skeleton.modules():
        d = m.__dict__
        p, b, c, n = d["_parameters"], d["_buffers"], d["_modules"], d["_non_persistent_buffers_set"]
        saved.append((d, d.copy(), p, p.copy(), b, b.copy(), c, c.copy(), n, n.copy()))
        if p and d.get("max_norm") is not None:
            renorm.append(m)
    try:
        if training is not None:
            for entry in saved:
                entry[0]["training"] = training
        if renorm:
            _copy_renormed(skeleton, renorm, tensors)
        return functional_call(skeleton, tensors, args, kwargs, tie_weights=False, strict=False)
    finally:
        for d, dc, p, pc, b, bc, c, cc, n, nc in saved:
            if len(d) != len(dc) or any(map(_is_not, d.values(), dc.values())):
                d.clear()
                d.update(dc)
            if not _same(p, pc):
                p.clear()
                p.update(pc)
            if not _same(b, bc):
                b.clear()
                b.update(bc)
            if not _same(c, cc):
                c.clear()
                c.update(cc)
            if n != nc:
                n.clear()
                n.update(nc)


def _same(now: dict, before: dict) -> bool:
    """Whether a module's ``_parameters``/``_buffers``/``_modules`` holds what it held.

    ``==`` of two dicts compares values by identity first, so an untouched dict is equal at C
    speed. A changed entry reaches a value's ``__eq__``: modules compare by identity, and the
    skeleton's tensors are ``meta`` ones, whose comparison with another tensor is a meta
    tensor without a truth value (an error here, so: changed), never True.
    """
    try:
        return now == before
    except Exception:  # noqa: BLE001 - see above: a tensor compared with a meta one
        return False


def _copy_renormed(skeleton: nn.Module, renorm: list[nn.Module],
                   tensors: dict[str, torch.Tensor]) -> None:
    """Give the parameters of modules that renormalise them in place a copy, tied paths alike.

    (Identity tests, not ``id()``: under ``torch.compile`` an ``id`` would become a guard.)
    """
    originals: list[torch.Tensor] = []
    for prefix, m in skeleton.named_modules(remove_duplicate=False):
        if any(m is r for r in renorm):
            for name, meta in m._parameters.items():
                t = tensors.get(f"{prefix}.{name}" if prefix else name)
                if meta is not None and t is not None and not any(t is o for o in originals):
                    originals.append(t)
    copies = [t.clone() for t in originals]
    for path, t in list(tensors.items()):
        for original, copy in zip(originals, copies):
            if t is original:
                tensors[path] = copy
