"""nytorch 1.1.0 as the oracle: each scenario runs with ``import nytorch_func.compat as nyto``
and gives what nytorch gives.

A scenario is written once against a module ``nyto`` and returns plain observations (bools,
names, ids, warning texts, the kind of error). ``EXPECTED`` holds what nytorch 1.1.0 returns; the
facade must return the same, and where nytorch is installed the expectations themselves are
checked against it. Differences that remain on purpose are in docs/coming-from-nytorch.md, not
here.
"""

import importlib
import warnings

import pytest
import torch
from torch import nn

import nytorch_func.compat as compat

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def _caught(fn):
    """``(result, warnings)`` or ``("raises", base error kind)``; warnings as nytorch's text."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            out = fn()
        except (KeyError, TypeError, ValueError) as err:
            kind = next(k for k in (KeyError, TypeError, ValueError) if isinstance(err, k))
            return ("raises", kind.__name__)
    return out, [str(w.message).split(":")[0] for w in seen]


def _next(version):
    """The version after ``version`` (nytorch: ``next_version``; ours: ``next``)."""
    return getattr(version, "next_version", None) or getattr(version, "next", None)


# -- item 6: parameter ids in registration order -------------------------------------------------

@scenario
def ids_follow_registration_order(nyto):
    class S(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Parameter(torch.zeros(1))

    class Sub(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.q = nn.Parameter(torch.zeros(1))
            self.lin = nn.Linear(1, 1)

    class Root(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(1))
            self.sub = Sub()
            self.b = nn.Parameter(torch.zeros(1))
            self.sub2 = Sub()
            self.sub2.late = nn.Parameter(torch.zeros(1))  # joins after sub2's own parameters
            self.c = nn.Parameter(torch.zeros(1))

    class Configured(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            s = Sub()
            s.set_param_config(operational=False, name="lin")
            s.extra = nn.Parameter(torch.zeros(1))
            self.a = nn.Parameter(torch.zeros(1))
            self.sub = s

    out = []
    for cls in (S, Root, Configured):
        net = cls()
        ids = {n: net.get_param_id(p) for n, p in net.named_parameters()}
        by_id = list(net.product().params.values())
        out.append((ids, [by_id[ids[n]] is p for n, p in net.named_parameters()]))
    return out


# -- item 7: identities -------------------------------------------------------------------------

class _Identity:
    @staticmethod
    def make(nyto):
        class B(nyto.NytoModule):
            def __init__(self):
                super().__init__()
                self.l = nn.Linear(2, 2)
                self.register_buffer("buffer1", torch.zeros(2))
                self.frozen = nn.Parameter(torch.ones(2))
                self.kept = nn.Parameter(torch.ones(2))

        r = B()
        r.set_param_config(operational=False, clone=False, name="frozen")
        r.set_param_config(operational=False, clone=True, name="kept")
        return B, r


@scenario
def results_share_buffers_and_clone_false_parameters(nyto):
    B, r = _Identity.make(nyto)
    ops = {"clone": lambda m: m.clone(), "randn": lambda m: m.randn(), "rand": lambda m: m.rand(),
           "neg": lambda m: -m, "pos": lambda m: +m, "add": lambda m: m + m,
           "rmul": lambda m: 2 * m, "pow": lambda m: m ** 2, "detach": lambda m: m.detach(),
           "product": lambda m: m.product().module(),
           "product+1": lambda m: (m.product() + 1).module(),
           "product.clone": lambda m: m.product().clone().module(),
           "clone_from": lambda m: m.clone_from(B())}
    out = {}
    for name, op in ops.items():
        o = op(r)
        out[name] = (o.buffer1 is r.buffer1, o.frozen is r.frozen, o.kept is r.kept,
                     o.l.weight is r.l.weight, o.l is r.l, type(o.kept).__name__,
                     o.kept.requires_grad, torch.equal(o.kept, r.kept))
    return out


@scenario
def configuring_clone_false_keeps_every_particles_values(nyto):
    class C(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

    c1 = C()
    c2 = c1.randn()
    own = c2.w
    c1.set_param_config(operational=False, clone=False)
    c2.touch()
    return (c2.w is own, torch.equal(c2.w, c1.w), (c2 + c1).w is c2.w, (c1 + c2).w is c1.w,
            (3 * c2).w is c2.w)


@scenario
def an_added_modules_buffers_reach_recipients_by_reference(nyto):
    class D(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

    d1 = D()
    d2 = d1.clone()
    bn = nn.BatchNorm1d(2)
    d1.bn = bn
    d2.touch()
    return (d1.bn is bn, d2.bn is bn, d2.bn.running_mean is bn.running_mean,
            d2.bn.weight is bn.weight, torch.equal(d2.bn.weight, bn.weight))


@scenario
def an_assigned_buffer_reaches_recipients_by_reference(nyto):
    class M(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(1, 1)
            self.register_buffer("mean", torch.zeros(1))

    m1 = M()
    m2 = m1.clone()
    v = m1._version_kernel
    new = torch.ones(1)
    m1.mean = new
    return m1.mean is new, m2.touch().mean is new, _next(v) is m1._version_kernel


# -- item 8: warnings and refusals ---------------------------------------------------------------

def _roots(nyto):
    class Sub(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

    class Root(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.sub = Sub()

    return Sub, Root


@scenario
def a_back_reference_to_the_root_warns(nyto):
    _, Root = _roots(nyto)
    root = Root()
    root._version_kernel
    got = _caught(lambda: setattr(root.sub, "back", root))
    return got, root.sub.back is root, [n for n, _ in root.named_parameters()]


@scenario
def a_module_of_another_particle_warns(nyto):
    _, Root = _roots(nyto)
    out = []
    for same_species in (False, True):
        root = Root()
        other = root.clone() if same_species else Root()
        got = _caught(lambda: setattr(root, "foreign", other.sub))
        out.append((got, root.foreign is other.sub, [n for n, _ in root.named_parameters()],
                    root.foreign._particle_kernel is root._particle_kernel))
    return out


def _kinds(nyto):
    class K(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))
            self.m = nn.Linear(1, 1)
            self.register_buffer("b", torch.zeros(1))

    return K


@scenario
def a_name_changes_kind_only_where_torch_allows(nyto):
    K = _kinds(nyto)
    cases = {
        "param->buffer": lambda k: k.register_buffer("p", torch.zeros(1)),
        "param->module": lambda k: setattr(k, "p", nn.Linear(1, 1)),
        "param->module (add_module)": lambda k: k.add_module("p", nn.Linear(1, 1)),
        "None param->buffer": lambda k: (setattr(k, "p", None),
                                         k.register_buffer("p", torch.zeros(1))),
        "module->buffer": lambda k: k.register_buffer("m", torch.zeros(1)),
        "module->param": lambda k: setattr(k, "m", nn.Parameter(torch.zeros(2))),
        "module->param (register)": lambda k: k.register_parameter("m", nn.Parameter(torch.ones(2))),
        "buffer->param": lambda k: setattr(k, "b", nn.Parameter(torch.zeros(3))),
        "buffer->module": lambda k: setattr(k, "b", nn.Linear(1, 1)),
        "param->param": lambda k: setattr(k, "p", nn.Parameter(torch.zeros(3))),
        "module->module": lambda k: setattr(k, "m", nn.Linear(2, 2)),
        "buffer->buffer": lambda k: setattr(k, "b", torch.ones(3)),
    }
    out = {}
    for label, change in cases.items():
        k = K()
        k2 = k.clone()
        got = _caught(lambda: change(k))
        name = label.split("->")[0].split()[-1][0]
        after = getattr(k, name, None)
        other = getattr(k2.touch(), name, None)
        out[label] = (got, type(after).__name__, type(other).__name__,
                      tuple(getattr(other, "shape", ())))
    return out


@scenario
def a_none_module_slot_takes_a_parameter(nyto):
    class N(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(1, 1)

    n = N()
    n2 = n.clone()
    n.a = None
    n.a = nn.Parameter(torch.ones(2))
    n3 = N()
    n4 = n3.clone()
    n3.a = None
    del n3.a
    return (type(n2.touch().a).__name__, tuple(n2.a.shape), "a" in n4.touch()._modules,
            hasattr(n3, "a"))


# -- item 3: aliases ----------------------------------------------------------------------------

@scenario
def a_second_name_for_a_module_or_a_parameter_stays_tied(nyto):
    class A(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)

    a = A()
    a2 = a.clone()
    a.again = a.l
    doubled = 2 * a
    copy = a.clone()
    out = [doubled.again is doubled.l, copy.again is copy.l, a2.touch().again is a2.l,
           torch.equal(doubled.again.weight, 2 * a.l.weight)]
    b = A()
    b2 = b.clone()
    own = b2.l.weight
    b.w2 = b.l.weight
    doubled = 2 * b
    out += [doubled.w2 is doubled.l.weight, b2.touch().w2 is b2.l.weight, b2.w2 is own,
            b.get_param_id(b.w2) == b.get_param_id(b.l.weight)]
    return out


# -- ParamProduct and in-place operators ----------------------------------------------------------

@scenario
def products_see_every_parameter_in_id_order(nyto):
    _, r = _Identity.make(nyto)
    seen = []
    r.product().unary_operator(lambda p, c: (seen.append((tuple(p.shape), c.operational,
                                                          c.clone)), p)[1])
    r2 = r.clone()
    weight, kept = r2.l.weight, r2.kept
    r2.product_(r.product() * 3)
    r3 = r.clone()
    frozen = r3.frozen
    r3 += 1
    return (seen, [tuple(v.shape) for v in r.product().params.values()],
            r2.l.weight is weight and r2.kept is kept, torch.allclose(r2.l.weight, 3 * r.l.weight),
            r3.frozen is frozen, torch.equal(r3.kept, r.kept))


@scenario
def a_replacement_is_one_version(nyto):
    class M(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(1, 1)
            self.w = nn.Parameter(torch.ones(1))

    m = M()
    out = []
    for change in (lambda: setattr(m, "l", nn.Linear(2, 2)),
                   lambda: setattr(m, "w", nn.Parameter(torch.ones(3)))):
        v = m._version_kernel
        change()
        out.append(_next(v) is m._version_kernel)
    return out


@scenario
def a_result_copies_the_attributes_of_the_moment(nyto):
    class R(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)
            self.rate = 0.5

    a = R()
    b = a.randn()
    out = a + b
    a.rate = 0.9
    a.l.tag = "later"
    return out.rate, hasattr(out.l, "tag"), out.l is not a.l, torch.equal(out.l.weight,
                                                                           a.l.weight + b.l.weight)


EXPECTED = {
    "ids_follow_registration_order": [
        ({"b": 2, "a.weight": 0, "a.bias": 1}, [True, True, True]),
        ({"a": 0, "b": 4, "c": 9, "sub.q": 1, "sub.lin.weight": 2, "sub.lin.bias": 3,
          "sub2.q": 5, "sub2.late": 8, "sub2.lin.weight": 6, "sub2.lin.bias": 7}, [True] * 10),
        ({"a": 0, "sub.q": 1, "sub.extra": 2, "sub.lin.weight": 3, "sub.lin.bias": 4},
         [True] * 5)],
    "results_share_buffers_and_clone_false_parameters": {
        **{name: (True, True, False, False, False, "Parameter", True, True)
           for name in ("clone", "randn", "rand", "neg", "pos", "add", "rmul", "pow",
                        "product+1", "product.clone", "clone_from")},
        "detach": (True, True, True, True, False, "Parameter", True, True),
        "product": (True, True, True, True, False, "Parameter", True, True),
    },
    "configuring_clone_false_keeps_every_particles_values": (True, False, True, True, True),
    "an_added_modules_buffers_reach_recipients_by_reference": (True, False, True, False, True),
    "an_assigned_buffer_reaches_recipients_by_reference": (True, True, True),
    "a_back_reference_to_the_root_warns": (
        (None, ["circular references to the root module"]), True, ["sub.p"]),
    "a_module_of_another_particle_warns": [
        ((None, ["modules from different particles refer to the same module"]), True,
         ["sub.p", "foreign.p"], True)] * 2,
    "a_name_changes_kind_only_where_torch_allows": {
        "param->buffer": (("raises", "KeyError"), "Parameter", "Parameter", (1,)),
        "param->module": (("raises", "TypeError"), "Parameter", "Parameter", (1,)),
        "param->module (add_module)": (("raises", "TypeError"), "Parameter", "Parameter", (1,)),
        "None param->buffer": (("raises", "KeyError"), "NoneType", "NoneType", ()),
        "module->buffer": (("raises", "KeyError"), "Linear", "Linear", ()),
        "module->param": ((None, []), "Parameter", "Parameter", (2,)),
        "module->param (register)": ((None, []), "Parameter", "Parameter", (2,)),
        "buffer->param": ((None, []), "Parameter", "Parameter", (3,)),
        "buffer->module": ((None, []), "Linear", "Linear", ()),
        "param->param": ((None, []), "Parameter", "Parameter", (3,)),
        "module->module": ((None, []), "Linear", "Linear", ()),
        "buffer->buffer": ((None, []), "Tensor", "Tensor", (3,)),
    },
    "a_none_module_slot_takes_a_parameter": ("Parameter", (2,), False, False),
    "a_second_name_for_a_module_or_a_parameter_stays_tied": [True] * 8,
    "products_see_every_parameter_in_id_order": (
        [((2, 2), True, True), ((2,), True, True), ((2,), False, False), ((2,), False, True)],
        [(2, 2), (2,), (2,), (2,)], True, True, True, True),
    "a_replacement_is_one_version": [True, True],
    "a_result_copies_the_attributes_of_the_moment": (0.5, False, True, True),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_facade_does_what_nytorch_does(name):
    torch.manual_seed(0)
    assert SCENARIOS[name](compat) == EXPECTED[name]


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_expectations_are_what_nytorch_gives(name):
    try:
        nytorch = importlib.import_module("nytorch")
    except ImportError:
        pytest.skip("nytorch is not installed (pip install 'nytorch_func[bench]')")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nytorch's own deprecation noise
        assert SCENARIOS[name](nytorch) == EXPECTED[name]
