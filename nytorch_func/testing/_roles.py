"""The initiator/recipient rules of each event kind, for the law ``initiator_recipient``."""

from __future__ import annotations

import torch

import nytorch_func as nf

from ._edit import Edit
from ._reference_growth import events_of, module_paths, one_event
from ._run import expect, same

__all__ = ["roles"]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _owns(r_after: nf.Particle, pop_after: nf.Particle, key: str, what: str, code: str) -> None:
    """The recipient's copy of ``key`` is its own: no storage shared with another recipient."""
    if key in r_after.schema.leaf_index and pop_after.leaves:
        expect(_storage(r_after[key]) != _storage(pop_after[key]), code,
                f"the recipient and the population share the storage of {what}")


def roles(edit: Edit, k: int, before: nf.Particle, after: nf.Particle, r_after: nf.Particle,
           pop_after: nf.Particle) -> None:
    """The initiator/recipient rules of ``edit`` (primitive edit ``k + 1`` of the chain);
    every check comes with the assert that replays it (``p{k+1}`` and ``r{k+1}``)."""
    kind, path, value = edit.kind, edit.path, edit.value
    p, r = f"p{k + 1}", f"r{k + 1}"
    at = f"[{path!r}]" if isinstance(path, str) else ""
    expect(after.schema is r_after.schema, f"assert {r}.schema is {p}.schema",
            "the recipient did not reach the initiator's version")
    if kind == "add_param":
        if after.config(path).shared:
            expect(after[path] is r_after[path], f"assert {p}{at} is {r}{at}",
                    "a shared parameter is not one tensor for the species")
        else:
            expect(after[path] is value, f"{p}{at}  # must be the very tensor given to add_param",
                    "the initiator must hold the added parameter itself")
            expect(r_after[path] is not value and r_after[path].data_ptr() != value.data_ptr(),
                    f"assert {r}{at}.data_ptr() != {p}{at}.data_ptr()",
                    "the recipient shares the initiator's tensor")
            _owns(r_after, pop_after, path, repr(path), f"assert {r}{at}.untyped_storage()"
                  f".data_ptr() != nf.touch(pop, {k + 1}){at}.untyped_storage().data_ptr()")
            expect(r_after[path].requires_grad == value.requires_grad,
                    f"assert {r}{at}.requires_grad == {p}{at}.requires_grad",
                    "requires_grad differs between initiator and recipient")
        expect(same(r_after[path], value), f"assert torch.equal({r}{at}, {p}{at})",
                "the recipient's copy differs from the snapshot")
    elif kind == "add_buffer":
        expect(after[path] is value and r_after[path] is value, f"assert {r}{at} is {p}{at}",
                "a buffer is added by reference: initiator and recipient hold the tensor itself")
    elif kind == "add_module":
        _module_roles(path, value, k, after, r_after, pop_after)
    elif kind == "insert_module":  # the modules' own tensors, at container.index (+1, ...)
        for i, module in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            where = f"{path}.{edit.options['index'] + i}" if path else \
                str(edit.options["index"] + i)
            _module_roles(where, module, k, after, r_after, pop_after)
    elif kind in ("widen", "deepen"):
        _growth_roles(kind, k, before, after, r_after, pop_after)
    elif kind in ("del_param", "del_buffer", "del_module", "set_none"):
        parent, _, name = path.rpartition(".")
        container = before.schema._module_at(parent)
        if kind == "del_module" and isinstance(
                container, (torch.nn.Sequential, torch.nn.ModuleList)):  # del seq[i]: renumbered
            ids = {s.pid for s in before.schema.specs_under(path, kind="param")}
            left = [s.key for s in after.schema.params if s.pid in ids]
            expect(not left and len(after.schema._module_at(parent)._modules) ==
                   len(container._modules) - 1,
                   f"assert len(nf.to_module({p}).get_submodule({parent!r})) == "
                   f"len(nf.to_module(p{k}).get_submodule({parent!r})) - 1",
                   f"del_module({path!r}) left {left or 'every child'} in {parent!r}")
        else:
            left = [q for s in after.schema.specs for q in s.paths
                    if q == path or q.startswith(path + ".")]
            expect(not left, f"assert not [q for q in {p}.schema.by_path "
                   f"if q.startswith({path!r})]", f"{left} still exist after {kind}({path!r})")
        if kind == "set_none":
            head, _, name = path.rpartition(".")
            parent = after.schema._module_at(head)
            expect(name in {**parent._parameters, **parent._modules} and
                    getattr(parent, name) is None,
                    f"assert nf.to_module({p}).get_submodule({head!r}).{name} is None",
                    f"{path!r} is not None after set_none")
    elif kind == "configure":
        for spec in after.schema.params:
            key = f"[{spec.key!r}]"
            expect(r_after.config(spec.key) == after.config(spec.key),
                    f"assert {r}.config({spec.key!r}) == {p}.config({spec.key!r})",
                    f"the configs of {spec.key!r} differ")
            if spec.config.shared:
                expect(after[spec.key] is r_after[spec.key], f"assert {p}{key} is {r}{key}",
                        f"shared {spec.key!r} is not one tensor for the species")
    elif kind == "configure_buffer":
        expect(r_after.schema.spec(path).policy == edit.options["policy"],
                f"assert {r}.schema.spec({path!r}).policy == {edit.options['policy']!r}",
                "the buffer policy was not set")
    elif kind == "to":
        dtype = edit.options.get("dtype")
        for spec in after.schema.specs:
            if dtype is not None and (spec.dtype.is_floating_point or spec.dtype.is_complex):
                expect(spec.dtype == dtype, f"assert {p}[{spec.key!r}].dtype == {dtype}",
                        f"{spec.key!r} is {spec.dtype} after to({dtype})")


def _module_roles(path: str, value: torch.nn.Module, k: int, after: nf.Particle,
                  r_after: nf.Particle, pop_after: nf.Particle) -> None:
    """An added or inserted module: the initiator holds its tensors, recipients equal copies."""
    p, r = f"p{k + 1}", f"r{k + 1}"
    for sub, t in [*value.named_parameters(remove_duplicate=False),
                   *value.named_buffers(remove_duplicate=False)]:
        full = f"[{path + '.' + sub!r}]"
        expect(after[f"{path}.{sub}"] is t, f"{p}{full}  # must be the added module's own",
                f"the initiator must hold the module's own {sub!r}")
        expect(r_after[f"{path}.{sub}"] is not t, f"assert {r}{full} is not {p}{full}",
                f"the recipient holds the initiator's {sub!r}")
        expect(same(r_after[f"{path}.{sub}"], t), f"assert torch.equal({r}{full}, {p}{full})",
                f"the recipient's {sub!r} differs from the snapshot")
        _owns(r_after, pop_after, f"{path}.{sub}", repr(sub), f"assert {r}{full}"
              f".untyped_storage().data_ptr() != nf.touch(pop, {k + 1}){full}"
              ".untyped_storage().data_ptr()")


def _growth_roles(kind: str, k: int, before: nf.Particle, after: nf.Particle,
                  r_after: nf.Particle, pop_after: nf.Particle) -> None:
    """widen/deepen: parameter ids kept (renumbered ones move with their tensors); every tensor
    the event resized or made is the recipient's own (never the initiator's storage); the
    tensors deepen made hold the same values in every particle."""
    p, r = f"p{k + 1}", f"r{k + 1}"
    gone = sorted({s.pid for s in before.schema.params} - {s.pid for s in after.schema.params})
    expect(not gone, f"assert set(nf.param_ids(p{k}).values()) <= "
           f"set(nf.param_ids({p}).values())", f"{kind} dropped parameter ids {gone}")
    events = events_of((before.schema, after.schema))
    if kind == "widen":
        changed, made = [key for key, *_ in one_event(events, "resize", kind).tensors], []
    else:
        roots = [where + "." for where, _ in module_paths(one_event(events, "insert_module",
                                                                    kind))]
        made = [key for key in after.schema.leaf_keys if key.startswith(tuple(roots))]
        changed = made
    for key in changed:
        if key not in after.schema.leaf_index:
            continue  # a shared tensor: one for the species
        at = f"[{key!r}]"
        expect(_storage(r_after[key]) != _storage(after[key]),
               f"assert {r}{at}.untyped_storage().data_ptr() != "
               f"{p}{at}.untyped_storage().data_ptr()",
               f"the recipient holds the initiator's storage of {key!r}")
        _owns(r_after, pop_after, key, repr(key), f"assert {r}{at}.untyped_storage().data_ptr()"
              f" != nf.touch(pop, {k + 1}){at}.untyped_storage().data_ptr()")
    for key in made:
        expect(same(r_after[key], after[key]), f"assert torch.equal({r}[{key!r}], {p}[{key!r}])",
               f"{kind} gave the recipient another new {key!r} than the initiator")
