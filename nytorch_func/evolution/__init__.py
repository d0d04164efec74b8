"""Evolution and model merging on populations of particles.

Variation operators (batched over the population, reproducible with a ``torch.Generator``,
never varying non-operational parameters): :func:`uniform_crossover`, :func:`tensor_crossover`,
:func:`gaussian_mutation`, :func:`pso_velocity`. Algorithms built only from the public API:
particle swarm (:func:`pso_init`, :func:`pso_step`), separable NES (:func:`snes_init`,
:func:`snes_step`, or :func:`snes_ask` / :func:`snes_tell`) and :func:`greedy_soup`. The
reductions they use (``nf.mean``, ``nf.take``, ``nf.topk``, ``nf.where``) live in the top-level
package. See ``docs/evolution.md``.

>>> import torch, nytorch_func as nf
>>> from nytorch_func import evolution as ev
>>> pop = nf.population(torch.nn.Linear(4, 2), 6, generator=torch.Generator().manual_seed(0))
>>> kids = ev.gaussian_mutation(ev.uniform_crossover(pop, pop[0]), 0.01)
>>> kids.batch_shape
torch.Size([6])
"""

from ._pso import PSOState, pso_init, pso_step
from ._snes import SNESState, snes_ask, snes_init, snes_step, snes_tell, snes_utilities
from ._soup import Soup, greedy_soup
from ._variation import gaussian_mutation, pso_velocity, tensor_crossover, uniform_crossover

__all__ = [
    "uniform_crossover", "tensor_crossover", "gaussian_mutation", "pso_velocity",
    "PSOState", "pso_init", "pso_step",
    "SNESState", "snes_init", "snes_ask", "snes_tell", "snes_step", "snes_utilities",
    "Soup", "greedy_soup", "bench_cases",
]


def bench_cases(**kwargs):
    """Callables timing one PSO step and one SNES generation, ours vs raw stacked tensors.

    See :func:`nytorch_func.evolution._bench.bench_cases`.
    """
    from ._bench import bench_cases as cases

    return cases(**kwargs)
