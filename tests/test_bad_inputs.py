"""A bad-input matrix over the public API: every case gives a typed error or a documented result,
and leaves every input (particles, tensors, modules, the species chain) unchanged.

Each case names ``function/what_is_wrong``. ``Err(T)`` expects exception type ``T`` (with an
optional message pattern); ``Ok(check)`` is a documented result that ``check`` verifies. Cases
where the core misbehaves are ``xfail(strict=True)`` with the reason, for the core owner.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import nytorch_func as nf

E = nf.NytorchFuncError
T = nf.ArgumentTypeError  # a wrong argument type: also a TypeError


class Env:
    """Fresh inputs for one case: particles at two versions, a population, another species..."""

    def __init__(self) -> None:
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.p = nf.from_module(self.net)  # version 0; the species head is version 1
        self.head = nf.add_buffer(self.p.clone(), "mem", torch.zeros(2))
        self.pop = nf.stack([self.head, self.head.randn()])
        self.q = nf.from_module(nn.Linear(3, 4))  # another species
        self.empty = nf.from_module(nn.Sequential())
        self.t = torch.randn(4)
        self.t_nc = torch.randn(4, 3).t()  # non-contiguous
        self.t_grad = torch.randn(2, requires_grad=True)
        self.t_nan = torch.tensor([float("nan"), float("inf"), -float("inf")])
        lone = nf.from_module(nn.Linear(1, 1))
        self.lone = nf.set_none(lone, "bias")  # version 0 of its species is freed
        del lone
        self.dir = tempfile.mkdtemp()
        self.file = os.path.join(self.dir, "ckpt.safetensors")


def fingerprint(env: Env) -> dict[str, Any]:
    """Everything a call must not change: identities, values, flags, version counters."""
    out: dict[str, Any] = {}
    for name, v in vars(env).items():
        if isinstance(v, nf.Particle):
            out[name] = (v.schema, v.leaves, [t.detach().clone() for t in v.leaves],
                         [(t.requires_grad, t._version) for t in v.leaves], v.training)
        elif isinstance(v, torch.Tensor):
            out[name] = (v.detach().clone(), v.requires_grad, v._version, v.stride())
        elif isinstance(v, nn.Module):
            out[name] = [(k, t, t.detach().clone(), t._version) for k, t in
                         [*v.named_parameters(), *v.named_buffers()]]
    out["species"] = {id(x.species): len(x.species) for x in vars(env).values()
                      if isinstance(x, nf.Particle)}
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a is b or a == b


def assert_unchanged(before: dict, after: dict, *, chain: bool) -> None:
    for name in before:
        if name == "species" and not chain:
            continue
        assert same(before[name], after[name]), f"input {name!r} changed"


@dataclasses.dataclass
class Err:
    type: type[BaseException]
    match: str | None = None


@dataclasses.dataclass
class Ok:
    check: Callable[[Any, Env], Any]


@dataclasses.dataclass
class Case:
    id: str
    call: Callable[[Env], Any]
    expect: Err | Ok
    xfail: str | None = None


def err(t: type[BaseException], match: str | None = None) -> Err:
    return Err(t, match)


def _all(cond: bool) -> None:
    assert cond


C = Case
CASES: list[Case] = [
    # from_module / to_module / apply -----------------------------------------------------------
    C("from_module/not_a_module", lambda e: nf.from_module("net"), err(E, "expected an nn.Module")),
    C("from_module/module_class", lambda e: nf.from_module(nn.Linear), err(E, "got type")),
    C("from_module/not_deepcopyable", lambda e: nf.from_module(_with_lock()),
      err(nf.SchemaError, "deep-copyable")),
    C("from_module/empty_module", lambda e: nf.from_module(nn.Sequential()),
      Ok(lambda r, e: _all(r.leaves == () and dict(r.params) == {}))),
    C("from_module/non_contiguous_params", lambda e: nf.from_module(_non_contiguous()),
      Ok(lambda r, e: _all(not r["weight"].is_contiguous()
                           and torch.equal((2 * r)["weight"], 2 * r["weight"])))),
    C("to_module/not_a_particle", lambda e: nf.to_module(e.net), err(E, "expected a Particle")),
    C("to_module/population", lambda e: nf.to_module(e.pop), err(nf.SchemaError, "population")),
    C("to_module/old_version", lambda e: nf.to_module(e.p),
      Ok(lambda r, e: _all("mem" not in dict(r.named_buffers())))),
    C("to_module/empty", lambda e: nf.to_module(e.empty), Ok(lambda r, e: _all(len(r) == 0))),
    C("apply/not_a_particle", lambda e: nf.apply(e.net, torch.ones(2, 3)), err(E)),
    C("apply/wrong_input_shape_is_the_forward_error", lambda e: nf.apply(e.p, torch.ones(2, 5)),
      err(RuntimeError, "shapes cannot be multiplied")),
    C("apply/nan_input_gives_nan", lambda e: nf.apply(e.p.eval(), torch.full((2, 3), float("nan"))),
      Ok(lambda r, e: _all(bool(r.isnan().all())))),
    C("apply/empty_module_is_identity", lambda e: nf.apply(e.empty, e.t),
      Ok(lambda r, e: _all(torch.equal(r, e.t)))),
    C("apply_with_state/not_a_particle", lambda e: nf.apply_with_state("p", 1), err(E)),
    C("apply_with_state/wrong_input_dtype", lambda e: nf.apply_with_state(e.p, torch.ones(2, 3).long()),
      err(RuntimeError)),
    C("apply_with_state/requires_grad_input",
      lambda e: nf.apply_with_state(e.p, torch.ones(2, 3, requires_grad=True)),
      Ok(lambda r, e: _all(r[0].requires_grad and r[1].version == 0))),
    # particle methods, indexing, operators -----------------------------------------------------
    C("Particle/unknown_path", lambda e: e.p["nope"], err(nf.SchemaError, "no parameter or buffer")),
    C("Particle/path_of_newer_version", lambda e: e.p["mem"], err(nf.SchemaError, "'mem'")),
    C("Particle/int_index_single", lambda e: e.p[0], err(nf.SchemaError, "no batch dimension")),
    C("Particle/index_out_of_range", lambda e: e.pop[5], err(nf.SchemaError)),
    C("Particle/tuple_index", lambda e: e.pop[0, 1], err(nf.SchemaError, "not a tuple")),
    C("Particle/bad_mask", lambda e: e.pop[torch.tensor([True])], err(nf.SchemaError)),
    C("Particle/zero_size_slice", lambda e: e.pop[0:0],
      Ok(lambda r, e: _all(r.batch_shape == (0,) and len(r) == 0 and nf.unstack(r) == []))),
    C("Particle/len_of_single", lambda e: len(e.p), err(T, "single particle")),
    C("Particle/config_of_buffer", lambda e: e.p.config("1.running_mean"), err(nf.SchemaError)),
    C("Particle/config_int_path", lambda e: e.p.config(0), err(T, "config: path")),
    C("Particle/config_list_path", lambda e: e.p.config(["0.weight"]), err(T, "config: path")),
    C("Schema/spec_none_path", lambda e: e.p.schema.spec(None), err(T, "schema: path")),
    C("Particle/setattr", lambda e: setattr(e.p, "_leaves", ()),
      err(dataclasses.FrozenInstanceError, "immutable")),
    C("Particle/pickle", lambda e: pickle.dumps(e.p), err(TypeError, "nf.save")),
    C("Particle/add_other_species", lambda e: e.p + e.q, err(nf.SpeciesMismatchError)),
    C("Particle/add_string", lambda e: e.p + "1", err(TypeError)),
    C("Particle/add_other_version_touches", lambda e: e.p + e.head,
      Ok(lambda r, e: _all(r.version == 1 and "mem" in r.buffers))),
    C("Particle/coefficients_wrong_length", lambda e: e.pop * torch.ones(3), err(nf.SchemaError)),
    C("Particle/coefficients_on_single", lambda e: e.p * torch.ones(5), err(nf.SchemaError)),
    C("Particle/coefficient_other_device", lambda e: e.p * torch.tensor(2.0, device="meta"),
      err(nf.SchemaError)),
    C("Particle/batch_coefficient_other_device",
      lambda e: e.pop * torch.ones(2, device="meta"), err(nf.SchemaError, "on meta")),
    C("Particle/populations_that_do_not_broadcast", lambda e: nf.stack([e.head] * 3) + e.pop,
      err(nf.SchemaError, r"batch shapes \(3,\) and \(2,\) do not broadcast")),
    C("Particle/single_plus_population_is_a_population", lambda e: e.head + e.pop,
      Ok(lambda r, e: _all(r.batch_shape == (2,)
                           and all(t.shape[:1] == (2,) for t in r.leaves)
                           and torch.equal(r["1.running_mean"][1], e.head["1.running_mean"])))),
    C("Particle/double_coefficient_keeps_dtype", lambda e: e.p * torch.tensor(2.0, dtype=torch.float64),
      Ok(lambda r, e: _all(r["0.weight"].dtype == torch.float32))),
    C("Particle/divide_by_zero_gives_inf", lambda e: e.p / 0,
      Ok(lambda r, e: _all(bool(r["0.weight"].isinf().all())))),
    C("Particle/nan_scalar_spreads", lambda e: e.p * float("nan"),
      Ok(lambda r, e: _all(bool(r["0.weight"].isnan().all())
                           and torch.equal(r["1.running_mean"], e.p["1.running_mean"])))),
    C("Particle/requires_grad_leaves", lambda e: (2 * e.p.clone())["0.weight"],
      Ok(lambda r, e: _all(r.requires_grad and r.grad_fn is not None))),
    C("Particle/empty_arithmetic", lambda e: 2 * e.empty + e.empty,
      Ok(lambda r, e: _all(r.leaves == ()))),
    C("Particle/train_non_bool_coerced", lambda e: e.p.train(0), Ok(lambda r, e: _all(r.training is False))),
    C("ParamConfig/non_bool", lambda e: nf.ParamConfig(operational="yes"), err(T)),
    C("ParamConfig/private_attr", lambda e: nf.ParamConfig(_x=1), err(nf.SchemaError)),
    C("ParamConfig/unhashable_attr", lambda e: nf.ParamConfig(x=[1]), err(T, "tuple")),
    C("ParamConfig/nan_attr_is_a_value", lambda e: nf.ParamConfig(scale=float("nan")),
      Ok(lambda r, e: _all(r.scale != r.scale))),
    C("ParamConfig/setattr", lambda e: setattr(nf.ParamConfig(), "clone", False),
      err(dataclasses.FrozenInstanceError)),
    C("Schema/unknown_path", lambda e: e.p.schema.spec("0.wieght"), err(nf.SchemaError, "did you mean")),
    C("Schema/wrong_kind", lambda e: e.p.schema.spec("0.weight", kind="buffer"), err(nf.SchemaError)),
    C("Schema/unknown_module_is_none", lambda e: e.p.schema.module_at("9"),
      Ok(lambda r, e: _all(r is None))),
    C("TensorSpec/frozen", lambda e: setattr(e.p.schema.specs[0], "shape", (1,)),
      err(dataclasses.FrozenInstanceError)),
    C("Species/unknown_version", lambda e: e.p.species.version(99), err(nf.VersionError, "0..1")),
    C("Species/negative_version", lambda e: e.p.species.version(-1), err(nf.VersionError)),
    C("Species/freed_version", lambda e: e.lone.species.version(0), err(nf.VersionError, "freed")),
    C("Species/version_as_string", lambda e: e.p.species.version("0"), err(nf.VersionError)),
    # ops -----------------------------------------------------------------------------------------
    C("randn_like/not_a_particle", lambda e: nf.randn_like(e.net), err(E)),
    C("randn_like/bad_generator", lambda e: nf.randn_like(e.p, generator=1), err(E)),
    C("randn_like/old_version_is_touched_first",
      lambda e: nf.randn_like(e.p, generator=torch.Generator()),
      Ok(lambda r, e: _all(r.schema is e.p.species.head))),
    C("rand_like/not_a_particle", lambda e: nf.rand_like("p"), err(E)),
    C("zeros_like/not_a_particle", lambda e: nf.zeros_like(None), err(E)),
    C("zeros_like/population", lambda e: nf.zeros_like(e.pop),
      Ok(lambda r, e: _all(r.batch_shape == (2,) and not r["0.weight"].any()))),
    C("full_like/not_a_particle", lambda e: nf.full_like(e.t, 1.0), err(E)),
    C("full_like/string_value", lambda e: nf.full_like(e.p, "a"), err(E)),
    C("full_like/nan", lambda e: nf.full_like(e.p, float("nan")),
      Ok(lambda r, e: _all(bool(r["0.weight"].isnan().all())))),
    C("map_params/not_callable", lambda e: nf.map_params("f", e.p), err(E)),
    C("map_params/not_a_particle", lambda e: nf.map_params(lambda t, c: t, e.net), err(E)),
    C("map_params/returns_non_tensor", lambda e: nf.map_params(lambda t, c: 1.0, e.p),
      err(E, "must return a tensor")),
    C("map_params/returns_wrong_shape", lambda e: nf.map_params(lambda t, c: t.sum(), e.p),
      err(nf.SchemaError, r"for '0\.weight'; it must keep shape \(4, 3\)")),
    C("map_params/returns_wrong_dtype", lambda e: nf.map_params(lambda t, c: t.double(), e.p),
      err(nf.SchemaError, "dtype torch.float32")),
    C("map_params/other_not_a_particle", lambda e: nf.map_params(lambda a, b, c: a, e.p, e.t),
      err(E, "expected a Particle")),
    C("map_params/single_with_population_broadcasts",
      lambda e: nf.map_params(lambda a, b, c: a + b, e.head, e.pop),
      Ok(lambda r, e: _all(r.batch_shape == (2,) and r["mem"].shape == (2, 2)
                           and torch.equal(r["0.weight"], e.head["0.weight"] + e.pop["0.weight"])))),
    C("map_params/other_species", lambda e: nf.map_params(lambda a, b, c: a + b, e.p, e.q),
      err(nf.SpeciesMismatchError)),
    C("map_params/other_version", lambda e: nf.map_params(lambda a, b, c: a + b, e.p, e.head),
      Ok(lambda r, e: _all(r.version == 1))),
    # events ------------------------------------------------------------------------------------
    C("add_param/not_a_particle", lambda e: nf.add_param(e.net, "x", e.t), err(E)),
    C("add_param/duplicate_path", lambda e: nf.add_param(e.p, "0.weight", e.t),
      err(nf.SchemaError, "already exists")),
    C("add_param/empty_path", lambda e: nf.add_param(e.p, "", e.t), err(nf.SchemaError)),
    C("add_param/bad_dotted_path", lambda e: nf.add_param(e.p, "a..b", e.t), err(nf.SchemaError)),
    C("add_param/int_path", lambda e: nf.add_param(e.p, 5, e.t), err(T, "add_param: path")),
    C("add_param/list_path", lambda e: nf.add_param(e.p, ["x"], e.t), err(T, "add_param: path")),
    C("add_param/int_path_and_bad_tensor", lambda e: nf.add_param(e.p, 5, "x"), err(T, "path")),
    C("add_buffer/int_path", lambda e: nf.add_buffer(e.p, 5, e.t), err(T, "add_buffer: path")),
    C("add_buffer/empty_path", lambda e: nf.add_buffer(e.p, "", e.t), err(nf.SchemaError)),
    C("add_module/none_path", lambda e: nf.add_module(e.p, None, nn.ReLU()),
      err(T, "add_module: path")),
    C("add_module/empty_path", lambda e: nf.add_module(e.p, "", nn.ReLU()), err(nf.SchemaError)),
    C("add_param/missing_module", lambda e: nf.add_param(e.p, "nope.x", e.t),
      err(nf.SchemaError, "add the module first")),
    C("add_param/hides_attribute", lambda e: nf.add_param(e.p, "0.training", e.t),
      err(nf.SchemaError, "hide")),
    C("add_param/meta_tensor", lambda e: nf.add_param(e.p, "x", torch.empty(2, device="meta")),
      err(nf.SchemaError, "meta device")),
    C("add_param/integer_operational",
      lambda e: nf.add_param(e.p, "x", torch.arange(3), config=nf.ParamConfig()),
      err(nf.SchemaError, "integer parameters cannot be operational")),
    C("add_param/integer_is_not_operational", lambda e: nf.add_param(e.p, "x", torch.arange(3)),
      Ok(lambda r, e: _all(not r.config("x").operational
                           and (r / 2)["x"].dtype == torch.int64))),
    C("add_param/not_a_tensor", lambda e: nf.add_param(e.p, "x", [1.0]), err(T)),
    C("add_param/bad_config", lambda e: nf.add_param(e.p, "x", e.t, config={"clone": False}),
      err(T, "ParamConfig")),
    C("add_param/nan_value_is_kept", lambda e: nf.add_param(e.p, "x", e.t_nan),
      Ok(lambda r, e: _all(r["x"] is e.t_nan and r.version == 2))),
    C("add_param/non_contiguous", lambda e: nf.add_param(e.p, "x", e.t_nc),
      Ok(lambda r, e: _all(torch.equal(nf.touch(e.head)["x"], e.t_nc)))),
    C("add_param/requires_grad_snapshot", lambda e: nf.add_param(e.p, "x", e.t_grad),
      Ok(lambda r, e: _all(nf.touch(e.head)["x"].requires_grad
                           and nf.touch(e.head)["x"] is not e.t_grad))),
    C("add_param/population_gets_copies", lambda e: nf.add_param(e.pop, "x", e.t),
      Ok(lambda r, e: _all(r["x"].shape == (2, 4)))),
    C("add_param/empty_module_root", lambda e: nf.add_param(e.empty, "x", e.t),
      Ok(lambda r, e: _all(list(r.params) == ["x"]))),
    C("del_param/unknown", lambda e: nf.del_param(e.p, "0.wieght"), err(nf.SchemaError, "did you mean")),
    C("del_param/buffer_path", lambda e: nf.del_param(e.p, "1.running_mean"), err(nf.SchemaError)),
    C("del_param/not_a_particle", lambda e: nf.del_param("p", "x"), err(E)),
    C("del_param/empty_module", lambda e: nf.del_param(e.empty, "x"), err(nf.SchemaError)),
    C("add_buffer/meta_tensor", lambda e: nf.add_buffer(e.p, "b", torch.zeros(2, device="meta")),
      err(nf.SchemaError, "meta device")),
    C("add_buffer/not_a_tensor", lambda e: nf.add_buffer(e.p, "b", 3), err(T)),
    C("add_buffer/bad_state", lambda e: nf.add_buffer(e.p, "b", e.t, state="yes"), err(T)),
    C("add_buffer/duplicate_path", lambda e: nf.add_buffer(e.p, "mem", e.t), err(nf.SchemaError)),
    C("add_buffer/population_shares_the_tensor", lambda e: nf.add_buffer(e.pop, "b", e.t),
      Ok(lambda r, e: _all(r["b"].shape == (2, 4)))),
    C("add_buffer/requires_grad_tensor_by_reference", lambda e: nf.add_buffer(e.p, "b", e.t_grad),
      Ok(lambda r, e: _all(r["b"] is e.t_grad))),
    C("del_buffer/param_path", lambda e: nf.del_buffer(e.p, "0.weight"), err(nf.SchemaError)),
    C("del_buffer/unknown", lambda e: nf.del_buffer(e.p, "nope"), err(nf.SchemaError)),
    C("add_module/meta_module", lambda e: nf.add_module(e.p, "m", nn.Linear(2, 2, device="meta")),
      err(nf.SchemaError, "meta device")),
    C("add_module/not_a_module", lambda e: nf.add_module(e.p, "m", "Linear"), err(T)),
    C("add_module/duplicate_path", lambda e: nf.add_module(e.p, "0", nn.Linear(1, 1)),
      err(nf.SchemaError, "already exists")),
    C("add_module/not_deepcopyable", lambda e: nf.add_module(e.p, "m", _with_lock()),
      err(nf.SchemaError)),
    C("add_module/empty_module", lambda e: nf.add_module(e.p, "m", nn.Sequential()),
      Ok(lambda r, e: _all(r.version == 2 and r.leaves == nf.touch(e.p).leaves))),
    C("del_module/param_path", lambda e: nf.del_module(e.p, "0.weight"), err(nf.SchemaError)),
    C("del_module/root", lambda e: nf.del_module(e.p, ""), err(nf.SchemaError)),
    C("del_module/unknown", lambda e: nf.del_module(e.p, "7"), err(nf.SchemaError)),
    C("set_none/buffer", lambda e: nf.set_none(e.p, "1.running_mean"), err(nf.SchemaError, "del_buffer")),
    C("set_none/unknown", lambda e: nf.set_none(e.p, "nope"), err(nf.SchemaError)),
    C("configure/unknown_path", lambda e: nf.configure(e.p, "nope", operational=False),
      err(nf.SchemaError)),
    C("configure/non_bool", lambda e: nf.configure(e.p, "0", operational="no"), err(T)),
    C("configure/int_path", lambda e: nf.configure(e.p, 0), err(T)),
    C("configure/unhashable_attr", lambda e: nf.configure(e.p, "0", tag=[1]), err(T)),
    C("configure/population_to_shared", lambda e: nf.configure(e.pop, "0.bias", operational=False,
                                                               clone=False),
      err(nf.SchemaError, "population")),
    C("configure/empty_module", lambda e: nf.configure(e.empty, "", operational=False),
      err(nf.SchemaError)),
    C("configure/not_a_particle", lambda e: nf.configure(e.net, "0"), err(E)),
    C("configure_buffer/param_path", lambda e: nf.configure_buffer(e.p, "0.weight", policy="mean"),
      err(nf.SchemaError)),
    C("configure_buffer/bad_policy", lambda e: nf.configure_buffer(e.p, "mem", policy="avg"),
      err(nf.SchemaError, "policy")),
    # touch / history / diff / param_ids -------------------------------------------------------
    C("touch/not_a_particle", lambda e: nf.touch(e.net), err(E)),
    C("touch/to_string", lambda e: nf.touch(e.p, to="head"), err(T)),
    C("touch/to_bool", lambda e: nf.touch(e.p, to=True), err(T)),
    C("touch/to_unknown_version", lambda e: nf.touch(e.p, to=9), err(nf.VersionError)),
    C("touch/backwards", lambda e: nf.touch(e.head, to=0), err(nf.VersionError, "go back")),
    C("touch/foreign_schema", lambda e: nf.touch(e.p, to=e.q.schema), err(nf.VersionError)),
    C("touch/freed_version", lambda e: nf.touch(e.lone, to=0), err(nf.VersionError)),
    C("touch/population", lambda e: nf.touch(nf.stack([e.p, e.p])),
      Ok(lambda r, e: _all(r.version == 1 and r["mem"].shape == (2, 2)))),
    C("history/particle_instead_of_species", lambda e: nf.history(e.p), err(E, "p.species")),
    C("history/freed_versions_noted", lambda e: str(nf.history(e.lone.species)),
      Ok(lambda r, e: _all("freed" in r))),
    C("diff/not_a_schema", lambda e: nf.diff(e.p, e.head.schema), err(E)),
    C("diff/across_species_lists_changes", lambda e: nf.diff(e.p.schema, e.q.schema),
      Ok(lambda r, e: _all(r.startswith("- ")))),
    C("param_ids/not_a_particle", lambda e: nf.param_ids("p"), err(E)),
    # populations -------------------------------------------------------------------------------
    C("stack/empty_list", lambda e: nf.stack([]), err(nf.SchemaError, "at least one")),
    C("stack/other_species", lambda e: nf.stack([e.p, e.q]), err(nf.SpeciesMismatchError)),
    C("stack/not_particles", lambda e: nf.stack([e.p, e.t]), err(E)),
    C("stack/string", lambda e: nf.stack("pq"), err(E)),
    C("stack/mixed_batch_shapes", lambda e: nf.stack([e.head, e.pop]), err(nf.SchemaError)),
    C("stack/mixed_versions_touch", lambda e: nf.stack([e.p, e.head]),
      Ok(lambda r, e: _all(r.version == 1 and len(r) == 2))),
    C("stack/empty_module_keeps_length", lambda e: len(nf.stack([e.empty, e.empty])),
      Ok(lambda r, e: _all(r == 2))),
    C("unstack/single", lambda e: nf.unstack(e.p), err(nf.SchemaError)),
    C("unstack/not_a_particle", lambda e: nf.unstack([e.p]), err(E)),
    C("population/n_zero", lambda e: nf.population(e.p, 0), err(nf.SchemaError)),
    C("population/n_negative", lambda e: nf.population(e.p, -2), err(nf.SchemaError)),
    C("population/n_float", lambda e: nf.population(e.p, 2.0), err(nf.ArgumentTypeError)),
    C("population/n_bool", lambda e: nf.population(e.p, True), err(nf.ArgumentTypeError)),
    C("population/bad_init", lambda e: nf.population(e.p, 2, init="normal"), err(nf.SchemaError)),
    C("population/init_wrong_shape", lambda e: nf.population(e.p, 2, init=lambda b, s: b[0]),
      err(nf.SchemaError)),
    C("population/init_nan_is_kept", lambda e: nf.population(e.p, 2, init=lambda b, s: b * float("nan")),
      Ok(lambda r, e: _all(bool(r["0.weight"].isnan().all())))),
    C("population/of_population", lambda e: nf.population(e.pop, 2), err(nf.SchemaError)),
    C("population/not_a_particle", lambda e: nf.population("net", 2), err(E)),
    C("population/empty_module", lambda e: nf.population(e.empty, 3).batch_shape,
      Ok(lambda r, e: _all(r == (3,)))),
    C("from_modules/empty_list", lambda e: nf.from_modules([]), err(nf.SchemaError)),
    C("from_modules/different_shapes", lambda e: nf.from_modules([nn.Linear(2, 2), nn.Linear(3, 2)]),
      err(nf.SchemaError, "module 1 differs")),
    C("from_modules/different_dtypes",
      lambda e: nf.from_modules([nn.Linear(2, 2), nn.Linear(2, 2).double()]), err(nf.SchemaError)),
    C("from_modules/not_modules", lambda e: nf.from_modules([e.net, e.p]), err(E)),
    # save / load -------------------------------------------------------------------------------
    C("save/not_a_particle", lambda e: nf.save(e.file, e.net), err(nf.CheckpointError)),
    C("save/list_with_set", lambda e: nf.save(e.file, [e.p, {1, 2}]), err(nf.CheckpointError, "set")),
    C("save/training_state", lambda e: _roundtrip(e, {"p": e.pop, "t": [e.t, e.t_grad], 3: None}),
      Ok(lambda r, e: _all(torch.equal(r["t"][0], e.t) and r["t"][1].requires_grad))),
    C("save/leaves_disagree_with_schema",
      lambda e: nf.save(e.file, nf.Particle(e.p.schema, tuple(t.double() for t in e.p.leaves))),
      err(nf.CheckpointError, "leaf '0.weight'.*schema says")),
    C("save/bad_path", lambda e: nf.save(3.5, e.p), err(nf.ArgumentTypeError, "path")),
    C("save/sync_not_bool", lambda e: nf.save(e.file, e.p, sync="yes"), err(nf.ArgumentTypeError)),
    C("save/missing_directory", lambda e: nf.save(os.path.join(e.dir, "no", "f"), e.p),
      err(FileNotFoundError)),
    C("save/empty_module_and_zero_size_population", lambda e: _roundtrip(e, [e.empty, e.pop[0:0]]),
      Ok(lambda r, e: _all(r[0].leaves == () and r[1].batch_shape == (0,)))),
    C("save/non_contiguous_and_nan", lambda e: _roundtrip(e, nf.add_param(e.p, "x", e.t_nc)),
      Ok(lambda r, e: _all(torch.equal(r["x"], e.t_nc)))),
    C("load/missing_file", lambda e: nf.load(e.file), err(FileNotFoundError)),
    C("load/classes_not_a_list", lambda e: nf.load(e.file, classes=nn.Linear),
      err(nf.ArgumentTypeError, "classes")),
    C("load/device_meta", lambda e: _save_load(e, e.p, device="meta"), err(nf.CheckpointError, "meta")),
    C("load/device_not_a_device", lambda e: _save_load(e, e.p, device=1.5),
      err(nf.ArgumentTypeError, "device")),
    C("load/species_not_a_species", lambda e: _save_load(e, e.p, species=e.p),
      err(nf.ArgumentTypeError, "species")),
    C("load/species_other_history", lambda e: _save_load(e, e.head, species=e.q.species),
      err(nf.CheckpointError, "first difference")),
    C("load/species_joined", lambda e: _save_load(e, e.pop, species=e.p.species),
      Ok(lambda r, e: _all(r.schema is e.pop.schema))),
    C("load/directory", lambda e: nf.load(e.dir), err(OSError)),
]


def _with_lock() -> nn.Module:
    import threading

    m = nn.Linear(1, 1)
    m.lock = threading.Lock()
    return m


def _non_contiguous() -> nn.Module:
    m = nn.Linear(3, 4)
    m.weight = nn.Parameter(torch.randn(3, 4).t())
    return m


def _roundtrip(e: Env, obj: Any) -> Any:
    nf.save(e.file, obj)
    return nf.load(e.file)


def _save_load(e: Env, obj: Any, **kw: Any) -> Any:
    nf.save(e.file, obj)
    return nf.load(e.file, **kw)


def _params(cases: list[Case]) -> list:
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input(case: Case) -> None:
    env = Env()
    before = fingerprint(env)
    if isinstance(case.expect, Err):
        with pytest.raises(case.expect.type, match=case.expect.match):
            case.call(env)
        assert_unchanged(before, fingerprint(env), chain=True)
    else:
        result = case.call(env)
        case.expect.check(result, env)
        assert_unchanged(before, fingerprint(env), chain=False)


# names public on this branch when the matrix was written; each needs at least one case
PUBLIC = ("Particle", "Schema", "Species", "ParamConfig", "TensorSpec", "from_module", "to_module",
          "apply", "apply_with_state", "randn_like", "rand_like", "zeros_like", "full_like",
          "map_params", "configure", "configure_buffer", "add_param", "del_param", "add_buffer",
          "del_buffer", "add_module", "del_module", "set_none", "touch", "history", "diff",
          "param_ids", "stack", "unstack", "population", "from_modules", "save", "load")
ERRORS = ("NytorchFuncError", "SpeciesMismatchError", "VersionError", "SchemaError",
          "CheckpointError")


def test_matrix_covers_the_public_api() -> None:
    assert set(PUBLIC) | set(ERRORS) <= set(nf.__all__)
    covered = {c.id.split("/")[0] for c in CASES}
    assert set(PUBLIC) <= covered, sorted(set(PUBLIC) - covered)
    for name in ERRORS:
        assert issubclass(getattr(nf, name), nf.NytorchFuncError)


def test_errors_do_not_depend_on_asserts() -> None:
    """Under ``python -O`` (asserts stripped) the same calls raise the same typed errors."""
    script = textwrap.dedent("""
        import torch, nytorch_func as nf
        assert not __debug__
        p = nf.from_module(torch.nn.Linear(2, 1))
        q = nf.from_module(torch.nn.Linear(2, 1))
        calls = [lambda: p + q, lambda: nf.touch(nf.set_none(p, "bias"), to=0),
                 lambda: nf.add_param(p, "weight", torch.ones(1)), lambda: nf.stack([]),
                 lambda: nf.load(__file__), lambda: nf.population(p, 0),
                 lambda: nf.configure(p, "nope"), lambda: nf.from_module(3)]
        for call in calls:
            try:
                call()
                print("no error")
            except nf.NytorchFuncError as err:
                print(type(err).__name__)
    """)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "check.py")
        with open(path, "w") as f:
            f.write(script)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run([sys.executable, "-O", path], capture_output=True, text=True,
                             env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["SpeciesMismatchError", "VersionError", "SchemaError",
                                  "SchemaError", "CheckpointError", "SchemaError", "SchemaError",
                                  "ArgumentTypeError"]
