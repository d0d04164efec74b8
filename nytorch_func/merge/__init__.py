"""Model merging on particles: mergekit 0.1.5's methods, vectorised over candidate merges.

Every function takes particles of one species (a ``base`` where the method has one; ``models``
as a population from ``nf.stack`` / ``nf.population`` or a list of particles) and returns one
particle. Operational parameters are merged tensor by tensor with mergekit 0.1.5's semantics;
non-operational parameters are carried from the base (model 0 without one); buffers follow
their policy (``nf.configure_buffer``: ``"keep"``, ``"mean"``, ``"reset"``), and integer
buffers that are kept must agree across the models. Leaves keep their dtype (half types are
merged in float32).

Weights, densities, ``scale`` and ``t`` may be tensors batched by ``torch.func.vmap``: one call
merges a whole population of candidates, with nothing written to disk; every function also
runs under ``torch.compile``. See ``docs/merging.md``.

>>> import torch, nytorch_func as nf
>>> from nytorch_func import merge
>>> base = nf.from_module(torch.nn.Linear(4, 2)).detach()
>>> tuned = nf.population(base, 3, generator=torch.Generator().manual_seed(0))
>>> merged = merge.ties(base, tuned, density=0.5)
>>> W = torch.rand(8, 3)                           # 8 candidate weightings of 3 models
>>> candidates = torch.func.vmap(lambda w: merge.ties(base, tuned, w, density=0.5))(W)
>>> candidates.batch_shape
torch.Size([8])
"""

from ._linear import linear
from ._slerp import slerp
from ._stock import model_stock
from ._task import breadcrumbs, dare, task_arithmetic, ties

__all__ = ["linear", "task_arithmetic", "ties", "dare", "breadcrumbs", "slerp", "model_stock"]
