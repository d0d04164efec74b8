"""ParamConfig: frozen, attributes, replace, hash and equality."""

import copy
import dataclasses

import pytest
import torch

import nytorch_func as nf
from nytorch_func import ParamConfig, SchemaError


def test_defaults_and_shared():
    c = ParamConfig()
    assert (c.operational, c.clone, c.shared, c.attrs) == (True, True, False, {})
    assert ParamConfig(operational=False).shared is False
    assert ParamConfig(operational=False, clone=False).shared is True
    # clone=False alone does not make an operational parameter shared
    assert ParamConfig(clone=False).shared is False


@pytest.mark.parametrize("name", ["operational", "clone", "anything", "_attrs"])
def test_frozen(name):
    c = ParamConfig(scale=2)
    with pytest.raises(nf.FrozenError, match="immutable"):
        setattr(c, name, False)
    with pytest.raises(dataclasses.FrozenInstanceError):  # also the dataclasses error
        delattr(c, "operational")
    assert c == ParamConfig(scale=2)


def test_attrs_readable_and_copied():
    c = ParamConfig(operational=False, is_weight=True, scale=0.5)
    assert c.is_weight is True and c.scale == 0.5
    assert c.attrs == {"is_weight": True, "scale": 0.5}
    c.attrs["scale"] = 9  # a new dict each time: the config does not change
    assert c.scale == 0.5
    assert c.get("scale") == 0.5 and c.get("missing", 3) == 3 and c.get("clone") is True
    assert c.asdict() == {"operational": False, "clone": True, "is_weight": True, "scale": 0.5}
    assert list(c.asdict())[:2] == ["operational", "clone"]
    with pytest.raises(AttributeError, match="missing"):
        c.missing  # noqa: B018


def test_replace_is_new_and_ignores_none():
    c = ParamConfig(scale=1)
    d = c.replace(operational=False, scale=2, extra="x")
    assert d is not c and c == ParamConfig(scale=1)
    assert d == ParamConfig(operational=False, scale=2, extra="x")
    assert c.replace(operational=None, clone=None) == c


def test_hash_and_eq():
    a = ParamConfig(operational=False, b=1, a=2)
    b = ParamConfig(a=2, operational=False, b=1)  # attribute order does not matter
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != ParamConfig(operational=False, a=2)
    assert a != ParamConfig(a=2, b=1)
    assert ParamConfig() != "ParamConfig()"
    assert {ParamConfig(): 1}[ParamConfig()] == 1


def test_copy_and_deepcopy_equal():
    c = ParamConfig(clone=False, tag=("a", 1))
    assert copy.copy(c) == c and copy.deepcopy(c) == c and hash(copy.deepcopy(c)) == hash(c)


def test_repr_round_trips():
    c = ParamConfig(operational=False, clone=False, tag="w")
    assert repr(c) == "ParamConfig(operational=False, clone=False, tag='w')"
    assert eval(repr(c), {"ParamConfig": ParamConfig}) == c  # noqa: S307


@pytest.mark.parametrize("kwargs, error, match", [
    ({"operational": 1}, nf.ArgumentTypeError, "operational must be a bool"),
    ({"clone": "yes"}, nf.ArgumentTypeError, "clone must be a bool"),
    ({"x": [1, 2]}, nf.ArgumentTypeError, "attribute 'x' must be hashable"),
    ({"x": (1, [2])}, nf.ArgumentTypeError, "attribute 'x' must be hashable"),
    ({"_private": 1}, SchemaError, "may not start with '_'"),
])
def test_bad_arguments_are_typed_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ParamConfig(**kwargs)
    with pytest.raises(nf.NytorchFuncError):
        ParamConfig(**kwargs)


def test_replace_validates():
    with pytest.raises(TypeError, match="clone must be a bool"):
        ParamConfig().replace(clone=0)


@pytest.mark.parametrize("name", ["replace", "shared", "attrs", "get", "asdict"])
def test_attribute_names_of_paramconfig_itself_are_refused(name):
    """Regression: ParamConfig(shared=1).shared returned the property, not the attribute."""
    with pytest.raises(SchemaError, match=f"attribute name '{name}' is taken"):
        ParamConfig(**{name: 1})
    p = nf.from_module(torch.nn.Linear(1, 1))
    with pytest.raises(SchemaError, match="'weight'.*is taken"):
        nf.configure(p, "weight", **{name: 1})
    assert len(p.species) == 1


def test_replace_sets_a_user_attribute_to_none():
    c = ParamConfig(tag="x", operational=False)
    d = c.replace(tag=None)
    assert d.tag is None and d == ParamConfig(tag=None, operational=False)
    assert c.replace(operational=None, clone=None, tag=None).operational is False


def test_configure_sets_a_user_attribute_to_none_under_a_prefix():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    p = nf.configure(nf.from_module(m), "", tag="x")
    q = nf.configure(p, "1", tag=None)
    assert q.config("1.weight").tag is None and q.config("1.bias").tag is None
    assert q.config("0.weight").tag == "x"
    assert p.config("1.weight").tag == "x"  # the old version keeps its config


@pytest.mark.parametrize("value", [
    float("nan"), (float("nan"), 1.0), complex(float("nan"), 2.0),
    frozenset({float("nan")}), ("a", (float("nan"),))],
    ids=["nan", "tuple", "complex", "frozenset", "nested"])
def test_nan_attributes_equal_their_copies(value):
    import math
    a = ParamConfig(scale=value)
    b = copy.deepcopy(a)  # rebuilds the attribute: another NaN object where it is not shared
    c = ParamConfig(scale=eval(repr(value), {"nan": math.nan, "frozenset": frozenset}))  # noqa: S307
    assert a == b == c and hash(a) == hash(b) == hash(c) and len({a, b, c}) == 1
    assert a != ParamConfig(scale=1.0) and a != ParamConfig()


def test_nan_keys_do_not_collide_with_other_values():
    nan = float("nan")
    assert ParamConfig(x=complex(nan, 1.0)) != ParamConfig(x=(nan, nan, 1.0))
    assert ParamConfig(x=nan) != ParamConfig(x="nan")
    assert ParamConfig(x=(nan, 1.0)) != ParamConfig(x=(1.0, nan))
    assert ParamConfig(x=1) == ParamConfig(x=1.0)  # Python's equality otherwise


@pytest.mark.parametrize("value", [float("nan"), (float("nan"), 2.0), complex(1.0, float("nan"))],
                         ids=["nan", "tuple", "complex"])
def test_nan_config_attributes_round_trip_and_join_their_species(tmp_path, value):
    p = nf.configure(nf.from_module(torch.nn.Linear(2, 2)), "weight", scale=value)
    q = nf.add_param(p, "extra", torch.ones(2))  # a later version: the file holds the event too
    nf.save(tmp_path / "p.nf", [p, q])
    a, b = nf.load(tmp_path / "p.nf")
    assert a.config("weight") == p.config("weight") and b.config("weight") == q.config("weight")
    a, b = nf.load(tmp_path / "p.nf", species=p.species)
    assert a.schema is p.schema and b.schema is q.schema
