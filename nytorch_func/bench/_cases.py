"""The benchmark cases (DESIGN.md's performance targets P1-P7 and the latency rows).

Each builder returns ``(cases, skipped)``: the :class:`Case` rows it can run here and
``{row_id: reason}`` for those it cannot (nytorch 1.1.0 not installed, ``nf.save`` or
``nytorch_func.evolution`` not available). nytorch is imported only here and only when a case asks
for it; the library itself never imports it.
"""

from __future__ import annotations

import atexit
import copy
import functools
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import nytorch_func as nf

from ._harness import Case, Side, Target
from ._merge_cases import merge_rows
from ._training_cases import adam_rows, init_rows

__all__ = ["BUILDERS", "GROUPS", "nytorch_available", "mlp", "raw_snes_step", "gc_workload"]

Built = tuple[list[Case], dict[str, str]]


# models ---------------------------------------------------------------------------------------

def mlp(sizes: tuple[int, ...], base: type = nn.Module) -> nn.Module:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` with ReLU between layers, built on ``base``.

    ``base`` is ``nn.Module`` for ours and ``nytorch.NytoModule`` for nytorch's rows, so both
    sides time the same architecture with the same attribute names.

    >>> from nytorch_func.bench._cases import mlp
    >>> sum(t.numel() for t in mlp((64, 48, 16)).parameters())
    3904
    """
    return _mlp_class(tuple(sizes), base)()


@functools.cache
def _mlp_class(sizes: tuple[int, ...], base: type) -> type:
    """One class per architecture, so ``stack_module_state`` accepts the instances."""
    class MLP(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.layers = len(sizes) - 1
            for i in range(self.layers):
                setattr(self, f"l{i}", nn.Linear(sizes[i], sizes[i + 1]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(self.layers):
                x = getattr(self, f"l{i}")(x)
                if i < self.layers - 1:
                    x = torch.relu(x)
            return x

    return MLP


def _touch_net(base: type = nn.Module) -> nn.Module:
    """A small net with every kind of member an event can touch: params, a BatchNorm, a buffer."""
    class Net(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(64, 32)
            self.bn = nn.BatchNorm1d(32)
            self.l2 = nn.Linear(32, 10)
            self.scale = nn.Parameter(torch.ones(10))
            self.register_buffer("offset", torch.zeros(10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l2(torch.relu(self.bn(self.l1(x)))) * self.scale + self.offset

    return Net()


P1_SIZES = (64, 48, 16)  # 3,904 parameters
P2_SIZES = (1000,) * 11  # 10 Linear(1000, 1000): 10,010,000 parameters
POP_SIZES = (64, 32, 10)  # the population MLP of P3, P4, P5, P7


@functools.cache
def nytorch_available() -> bool:
    """True when nytorch 1.1.0 (the optional ``bench`` extra) can be imported."""
    try:
        import nytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _nyto() -> Any:
    import nytorch

    return nytorch


_NO_NYTORCH = "nytorch is not installed (pip install 'nytorch_func[bench]')"


def _foreach_mix(xs: list, ys: list) -> list:
    return torch._foreach_add(torch._foreach_mul(xs, 0.5), torch._foreach_mul(ys, 0.5))


# P1: mixing two small models ------------------------------------------------------------------

def p1() -> Built:
    def ours() -> Callable[[], Any]:
        a = nf.from_module(mlp(P1_SIZES))
        b = a.randn()
        return lambda: 0.5 * a + 0.5 * b

    def raw() -> Callable[[], Any]:
        xs = list(mlp(P1_SIZES).parameters())
        ys = [torch.randn_like(t).requires_grad_(t.requires_grad) for t in xs]
        return lambda: _foreach_mix(xs, ys)

    cases = [Case("P1", "P1", "0.5*a + 0.5*b, 3.9K-param MLP", Side("nf particles", ours),
                  Side("raw torch._foreach", raw), Target("max_ratio", 1.5))]
    skipped = {}
    if nytorch_available():
        def nyto() -> Callable[[], Any]:
            net1 = mlp(P1_SIZES, _nyto().NytoModule)
            net2 = net1.randn()
            return lambda: 0.5 * net1 + 0.5 * net2

        def ours_no_grad() -> Callable[[], Any]:
            # nytorch computes particle operations under torch.no_grad(): compare like with like,
            # with particles whose leaves record no autograd history (p.detach()).
            a = nf.from_module(mlp(P1_SIZES)).detach()
            b = a.randn()
            return lambda: 0.5 * a + 0.5 * b

        # Informational: the operator form is three foreach passes, and three raw passes are
        # themselves only ~8-10x nytorch (DESIGN.md: that is the floor); the target is nf.lerp's.
        cases.append(Case("P1-nytorch", "P1", "0.5*a + 0.5*b vs nytorch 1.1.0 (no autograd)",
                          Side("nf particles, detached", ours_no_grad),
                          Side("nytorch 0.5*net1+0.5*net2", nyto)))
        def ours_lerp() -> Callable[[], Any]:
            a = nf.from_module(mlp(P1_SIZES)).detach()
            b = a.randn()
            return lambda: nf.lerp(a, b, 0.5)

        cases.append(Case("P1-nytorch-lerp", "P1", "nf.lerp(a, b, 0.5) (one foreach) vs nytorch",
                          Side("nf.lerp, detached", ours_lerp),
                          Side("nytorch 0.5*net1+0.5*net2", nyto), Target("min_speedup", 10)))
        cases.append(Case("P1-nytorch-grad", "P1",
                          "0.5*a + 0.5*b vs nytorch 1.1.0, ours recording autograd",
                          Side("nf particles, requires_grad", ours),
                          Side("nytorch 0.5*net1+0.5*net2", nyto)))
    else:
        skipped["P1-nytorch"] = _NO_NYTORCH
    return cases, skipped


# P2: a 10M-parameter model against one flat tensor --------------------------------------------

def p2() -> Built:
    def ours() -> Callable[[], Any]:
        a = nf.from_module(mlp(P2_SIZES))
        b = a.randn()
        return lambda: 0.5 * a + 0.5 * b

    def flat() -> Callable[[], Any]:
        n = sum(t.numel() for t in mlp(P2_SIZES).parameters())
        x = torch.randn(n, requires_grad=True)
        y = torch.randn(n, requires_grad=True)
        return lambda: 0.5 * x + 0.5 * y

    return [Case("P2", "P2", "0.5*a + 0.5*b, 10M params", Side("nf particles", ours),
                 Side("one flat tensor", flat), Target("max_ratio", 1.3))], {}


# P3: one population step ----------------------------------------------------------------------

def p3() -> Built:
    def ours() -> Callable[[], Any]:
        pop = nf.from_modules([mlp(POP_SIZES) for _ in range(64)])
        best = pop[0].detach()
        return lambda: 0.5 * pop + 0.5 * best

    def raw() -> Callable[[], Any]:
        params, _ = torch.func.stack_module_state([mlp(POP_SIZES) for _ in range(64)])
        xs = list(params.values())
        best = [t[0].detach() for t in xs]
        return lambda: _foreach_mix(xs, best)

    cases = [Case("P3", "P3", "0.5*pop + 0.5*best, 64-stack MLP 64-32-10",
                  Side("nf population", ours), Side("raw stacked tensors", raw),
                  Target("max_ratio", 1.2))]
    skipped = {}
    if nytorch_available():
        def nyto() -> Callable[[], Any]:
            net = mlp(POP_SIZES, _nyto().NytoModule)
            nets = [net.randn() for _ in range(64)]
            best = nets[0]
            return lambda: [0.5 * n + 0.5 * best for n in nets]

        cases.append(Case("P3-nytorch", "P3", "population step vs a nytorch loop",
                          Side("nf population", ours), Side("64 nytorch particles", nyto)))
    else:
        skipped["P3-nytorch"] = _NO_NYTORCH
    return cases, skipped


# P4: vmap(nf.apply) against raw torch.func ensembling ----------------------------------------

def p4() -> Built:
    x = torch.randn(32, POP_SIZES[0])

    def ours() -> Callable[[], Any]:
        pop = nf.from_modules([mlp(POP_SIZES) for _ in range(64)])
        run = torch.func.vmap(nf.apply, in_dims=(0, None))
        return lambda: run(pop, x)

    def raw() -> Callable[[], Any]:
        models = [mlp(POP_SIZES) for _ in range(64)]
        params, buffers = torch.func.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")

        def call(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(base, (params, buffers), (x,))

        run = torch.func.vmap(call, in_dims=(0, 0, None))
        return lambda: run(params, buffers, x)

    return [Case("P4", "P4", "vmap forward, 64-stack MLP 64-32-10, batch 32",
                 Side("vmap(nf.apply)", ours),
                 Side("stack_module_state+functional_call+vmap", raw),
                 Target("max_ratio", 1.05))], {}


# P5: touching a population after one event ----------------------------------------------------

POP5 = 256


def p5() -> Built:
    if not nytorch_available():
        return [], {"P5": _NO_NYTORCH}

    def ours() -> Callable[[], Any]:
        p = nf.from_module(mlp(POP_SIZES))
        pop = nf.population(p, POP5)
        head = nf.add_param(p, "extra", nn.Parameter(torch.randn(10)))
        return lambda: (head, nf.touch(pop))[1]

    def nyto() -> Callable[[], Any]:
        net1 = mlp(POP_SIZES, _nyto().NytoModule)
        nets = [net1.randn() for _ in range(POP5)]
        net1.extra = nn.Parameter(torch.randn(10))

        def run() -> None:
            for net in nets:
                net.touch()

        return run

    return [Case("P5", "P5", f"touch a {POP5}-stack after one add_param",
                 Side(f"nf.touch({POP5}-stack)", ours),
                 Side(f"{POP5} nytorch net.touch()", nyto, repeatable=False),
                 Target("min_speedup", 200))], {}


# P6: objects left to the cycle collector ------------------------------------------------------

def gc_workload(make: Callable[[], nn.Module], *, ours: bool) -> int:
    """Objects ``gc.collect()`` finds after a workload of build, mix, event, touch, forward.

    >>> from nytorch_func.bench._cases import gc_workload, mlp
    >>> gc_workload(lambda: mlp((4, 3, 2)), ours=True)
    0
    """
    gc.collect()
    x = torch.randn(5, 4)

    def work() -> None:
        if ours:
            a = nf.from_module(make())
            b = a.randn()
            mix = 0.5 * a + 0.5 * b
            grown = nf.add_param(mix, "extra", nn.Parameter(torch.randn(2)))
            b = nf.touch(b)
            pop = nf.touch(nf.population(a, 8))
            nf.apply(grown, x), nf.apply(pop[3], x)
            nf.del_param(grown, "extra")
        else:
            a = make()
            b = a.randn()
            mix = 0.5 * a + 0.5 * b
            mix.extra = nn.Parameter(torch.randn(2))
            b.touch()
            pop = [a.randn() for _ in range(8)]
            for q in pop:
                q.touch()
            mix(x), pop[3](x)
            del mix.extra

    work()
    return gc.collect()


def p6_row() -> dict[str, Any]:
    """The P6 row (counts, not timings)."""
    ours = gc_workload(lambda: mlp((4, 8, 2)), ours=True)
    row: dict[str, Any] = {"id": "P6", "group": "P6", "name": "objects left to gc after a workload",
                           "ours": "nytorch_func", "baseline": None, "ours_count": ours,
                           "base_count": None, "target": "0 objects", "met": ours == 0}
    if nytorch_available():
        row["baseline"] = "nytorch 1.1.0"
        row["base_count"] = gc_workload(lambda: mlp((4, 8, 2), _nyto().NytoModule), ours=False)
    return row


# touch latency per event kind, and the cost of an event --------------------------------------

# (our event on a particle, nytorch's event on a NytoModule or None where not comparable)
EVENTS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], None] | None]] = {
    "add_param": (lambda p: nf.add_param(p, "extra", nn.Parameter(torch.randn(10))),
                  lambda n: setattr(n, "extra", nn.Parameter(torch.randn(10)))),
    "del_param": (lambda p: nf.del_param(p, "scale"), lambda n: delattr(n, "scale")),
    "set_none": (lambda p: nf.set_none(p, "scale"), lambda n: setattr(n, "scale", None)),
    "add_buffer": (lambda p: nf.add_buffer(p, "extra_buf", torch.zeros(10)),
                   lambda n: n.register_buffer("extra_buf", torch.zeros(10))),
    "del_buffer": (lambda p: nf.del_buffer(p, "offset"), lambda n: delattr(n, "offset")),
    "add_module": (lambda p: nf.add_module(p, "head", nn.Linear(10, 5)),
                   lambda n: setattr(n, "head", nn.Linear(10, 5))),
    "del_module": (lambda p: nf.del_module(p, "l2"), lambda n: delattr(n, "l2")),
    "configure": (lambda p: nf.configure(p, "l2", operational=False), None),
}

NYTO_TOUCHES = 128  # nytorch particles prepared per sample (its touch works in place, once)


def touch_rows() -> Built:
    cases, skipped = [], {}
    for kind, (ours_event, nyto_event) in EVENTS.items():
        def ours(ours_event: Callable = ours_event) -> Callable[[], Any]:
            p = nf.from_module(_touch_net())
            other = p.randn()
            head = ours_event(p)
            return lambda: (head, nf.touch(other))[1]

        base = None
        if nyto_event is not None and nytorch_available():
            def nyto(nyto_event: Callable = nyto_event) -> Callable[[], Any]:
                net1 = _touch_net(_nyto().NytoModule)
                nets = [net1.randn() for _ in range(NYTO_TOUCHES)]
                nyto_event(net1)

                def run() -> None:
                    for net in nets:
                        net.touch()

                return run

            base = Side("nytorch net.touch()", nyto, per_call=NYTO_TOUCHES, repeatable=False)
        elif nyto_event is not None:
            skipped[f"touch-{kind}-nytorch"] = _NO_NYTORCH
        cases.append(Case(f"touch-{kind}", "touch", f"touch one particle across {kind}",
                          Side("nf.touch", ours), base))
    return cases, skipped


def event_rows() -> Built:
    def ours() -> Callable[[], Any]:
        state = [nf.from_module(_touch_net())]

        def run() -> None:
            p = nf.add_param(state[0], "extra", nn.Parameter(torch.randn(10)))
            state[0] = nf.del_param(p, "extra")

        return run

    base = None
    skipped = {}
    if nytorch_available():
        def nyto() -> Callable[[], Any]:
            net = _touch_net(_nyto().NytoModule)

            def run() -> None:
                net.extra = nn.Parameter(torch.randn(10))
                del net.extra

            return run

        base = Side("nytorch setattr + delattr", nyto)
    else:
        skipped["event-nytorch"] = _NO_NYTORCH
    return [Case("event", "event", "make two events (add_param + del_param)",
                 Side("nf.add_param + nf.del_param", ours), base, Target("max_ratio", 0.8))], skipped


# save / load ----------------------------------------------------------------------------------

def io_rows() -> Built:
    if not hasattr(nf, "save"):
        return [], {"io": "nf.save/nf.load are not on this branch"}
    from safetensors.torch import load_file, save_file

    folder = tempfile.mkdtemp(prefix="nf-bench-")
    atexit.register(shutil.rmtree, folder, True)
    models = [mlp(POP_SIZES) for _ in range(64)]
    pop = nf.from_modules(models).detach()
    classes = [type(models[0])]  # a class made at run time: nf.load never imports code itself

    def ours() -> Callable[[], Any]:
        path = os.path.join(folder, "ours.safetensors")

        def run() -> Any:
            nf.save(path, pop)
            return nf.load(path, classes=classes)

        return run

    def raw() -> Callable[[], Any]:
        path = os.path.join(folder, "raw.safetensors")
        tensors = {k: t.contiguous() for k, t in zip(pop.schema.leaf_keys, pop.leaves)}

        def run() -> Any:
            save_file(tensors, path)
            return load_file(path)

        return run

    return [Case("io", "io", "save + load a 64-stack (MLP 64-32-10)",
                 Side("nf.save + nf.load", ours), Side("raw safetensors", raw))], {}


# P7: one SNES generation ----------------------------------------------------------------------

def raw_snes_step(state: dict[str, Any], fitness: Callable[[dict], torch.Tensor], *,
                  n: int, generator: torch.Generator, lr_mu: float = 1.0,
                  lr_sigma: float | None = None) -> dict[str, Any]:
    """One generation of separable NES on raw dicts of tensors (the P7 baseline).

    ``state`` holds ``mu`` and ``sigma`` (dicts ``{name: tensor}``); ``fitness`` maps a dict of
    stacked parameters ``(n, *shape)`` to ``n`` scores (higher is better). Rank-based utilities,
    the standard SNES learning rates.

    >>> import torch
    >>> from nytorch_func.bench._cases import raw_snes_step
    >>> g = torch.Generator().manual_seed(0)
    >>> state = {"mu": {"x": torch.zeros(3)}, "sigma": {"x": torch.ones(3)}}
    >>> for _ in range(200):
    ...     state = raw_snes_step(state, lambda ps: -((ps["x"] - 2) ** 2).sum(1), n=16, generator=g)
    >>> bool((state["mu"]["x"] - 2).abs().max() < 0.2)
    True
    """
    mu, sigma = state["mu"], state["sigma"]
    names = list(mu)
    dim = sum(mu[k].numel() for k in names)
    if lr_sigma is None:
        lr_sigma = (3 + torch.log(torch.tensor(float(dim))).item()) / (5 * dim ** 0.5)
    eps = [torch.randn((n, *mu[k].shape), generator=generator) for k in names]
    members = {k: mu[k] + sigma[k] * e for k, e in zip(names, eps)}
    scores = fitness(members)
    ranks = torch.empty(n)
    ranks[scores.argsort(descending=True)] = torch.arange(n, dtype=torch.float32)
    util = torch.clamp(torch.log(torch.tensor(n / 2 + 1)) - torch.log(ranks + 1), min=0)
    util = util / util.sum() - 1.0 / n
    new_mu, new_sigma = {}, {}
    for k, e in zip(names, eps):
        w = util.reshape(n, *([1] * (e.dim() - 1)))
        new_mu[k] = mu[k] + lr_mu * sigma[k] * (w * e).sum(0)
        new_sigma[k] = sigma[k] * torch.exp(0.5 * lr_sigma * (w * (e * e - 1)).sum(0))
    return {"mu": new_mu, "sigma": new_sigma}


def _raw_snes_case() -> Callable[[], Any]:
    model = mlp(POP_SIZES)
    base = copy.deepcopy(model).to("meta")
    x, y = torch.randn(128, POP_SIZES[0]), torch.randint(0, POP_SIZES[-1], (128,))

    def loss(params: dict) -> torch.Tensor:
        out = torch.func.functional_call(base, params, (x,))
        return -nn.functional.cross_entropy(out, y)

    fitness = torch.func.vmap(loss)
    state = {"mu": {k: v.detach().clone() for k, v in model.named_parameters()},
             "sigma": {k: torch.full_like(v, 0.1) for k, v in model.named_parameters()}}
    g = torch.Generator().manual_seed(0)
    box = [state]

    def run() -> None:
        box[0] = raw_snes_step(box[0], fitness, n=64, generator=g)

    return run


def p7() -> Built:
    try:
        import importlib

        evolution = importlib.import_module("nytorch_func.evolution")
    except ImportError:
        return [], {"P7": "nytorch_func.evolution is not on this branch"}
    cases_fn = getattr(evolution, "bench_cases", None)
    if cases_fn is None:
        return [], {"P7": "nytorch_func.evolution has no bench_cases()"}
    found = {str(k).lower(): v for k, v in dict(cases_fn()).items()}
    step = next((v for k, v in found.items() if "snes" in k), None)
    if isinstance(step, (tuple, list)):  # (ours, raw) pairs: time ours against our raw SNES
        step = step[0]
    if not callable(step):
        return [], {"P7": "nytorch_func.evolution.bench_cases() has no SNES entry"}
    return [Case("P7", "P7", "one SNES generation, 64-stack MLP 64-32-10",
                 Side("nytorch_func.evolution SNES", lambda: step),
                 Side("SNES on raw stacked tensors", _raw_snes_case),
                 Target("max_ratio", 1.3))], {}


BUILDERS: dict[str, Callable[[], Built]] = {
    "P1": p1, "P2": p2, "P3": p3, "P4": p4, "P5": p5, "touch": touch_rows, "event": event_rows,
    "io": io_rows, "P7": p7,
    "merge": merge_rows, "init": init_rows, "adam": adam_rows,
}
GROUPS = ("P1", "P2", "P3", "P4", "P5", "P6", "touch", "event", "io", "P7", "merge", "init",
          "adam")
