"""The facade group: particle operations between NytoModules against nytorch 1.1.0's.

Both sides run the same model (an MLP of seven modules, a Sequential of Linear and ReLU with
3,852 parameters, as ``benchmarks/bench_facade.py``) subclassing their library's NytoModule, and
the same expression on two particles of one species. nytorch computes particle operations
without autograd, and so does the facade: like is compared with like. The facade builds a
result's module tree when the result is first used; ``facade-add-used`` uses it at once. The
rows are skipped when nytorch is not installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import nytorch_func as nf

from ._harness import Case, Side, Target

__all__ = ["facade_rows", "facade_mlp", "EXPRESSIONS"]

Built = tuple[list[Case], dict[str, str]]

EXPRESSIONS: dict[str, tuple[str, Callable[[Any, Any], Any], float | None]] = {
    # id: (expression, function, target speed-up over nytorch or None)
    "facade-add": ("a + b", lambda a, b: a + b, 5.0),
    "facade-mix": ("0.5*a + 0.5*b", lambda a, b: 0.5 * a + 0.5 * b, 5.0),
    "facade-clone": ("a.clone()", lambda a, b: a.clone(), None),
    # the result used at once: its tree built (nytorch builds it inside the operation)
    "facade-add-used": ("(a + b).net", lambda a, b: (a + b).net, None),
}


def facade_mlp(base: type) -> nn.Module:
    """The benchmark's MLP (seven modules, 3,852 parameters) as a subclass of ``base``.

    >>> import nytorch_func as nf
    >>> net = facade_mlp(nf.NytoModule)
    >>> sum(p.numel() for p in net.parameters()), len(list(net.modules()))
    (3852, 7)
    """
    return _mlp_class(base)()


@functools.cache
def _mlp_class(base: type) -> type:
    class MLP(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 40), nn.ReLU(),
                                     nn.Linear(40, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return MLP


def _pair(base: type, fn: Callable[[Any, Any], Any]) -> Callable[[], Any]:
    a = facade_mlp(base)
    b = a.randn()
    list(b.modules())  # b used as a module: its tree built (a result is built when first used)
    fn(a, b)  # both trees read once (and the species made) before timing
    return lambda: fn(a, b)


def facade_rows() -> Built:
    """``a + b`` and friends between two NytoModules, ours against nytorch 1.1.0's."""
    try:
        import nytorch
    except ImportError:
        reason = "nytorch is not installed (pip install 'nytorch_func[bench]')"
        return [], {row: reason for row in EXPRESSIONS}
    cases = []
    for row, (expr, fn, target) in EXPRESSIONS.items():
        cases.append(Case(
            row, "facade", f"{expr} between NytoModules, 3.9K-param MLP of 7 modules",
            Side("nf.NytoModule", functools.partial(_pair, nf.NytoModule, fn)),
            Side("nytorch 1.1.0 NytoModule", functools.partial(_pair, nytorch.NytoModule, fn)),
            None if target is None else Target("min_speedup", target)))
    return cases, {}
