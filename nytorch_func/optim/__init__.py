"""Functional optimizers over particles: pure ``step(p, grads, state) -> (p, state)``.

:class:`SGD`, :class:`Adam` and :class:`AdamW` compute what ``torch.optim``'s foreach
implementations compute (float64 runs agree to rounding, ``amsgrad``, ``maximize``, Nesterov,
dampening and both kinds of weight decay included), on the *operational* parameters of a
particle or a whole population (one ``torch._foreach_*`` call per operation for all members).
``step`` returns fresh parameters without autograd history, so a loop that feeds them back
keeps one step's memory. State is a NamedTuple of particles of the species (moments) and
per-parameter step counts, a plain pytree: it follows events (``nf.touch_tree(state,
fill="zeros")``, or simply the next ``step``), and ``lr``, ``betas``, ``momentum``,
``weight_decay`` accept one value per population member. See ``docs/populations.md``.

A complete loop, population and growth included:

>>> import torch, nytorch_func as nf
>>> from torch import nn
>>> from nytorch_func import optim
>>> g = torch.Generator().manual_seed(0)
>>> pop = nf.population(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)), 8,
...                     generator=g)
>>> x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
>>> def loss(p, x, y):
...     return nn.functional.mse_loss(nf.apply(p, x), y)
>>> grads = torch.func.vmap(nf.value_and_grad(loss), in_dims=(0, None, None))
>>> opt = optim.Adam(lr=torch.logspace(-3, -1, 8))   # one learning rate per member
>>> state = opt.init(pop)
>>> for step in range(40):
...     if step == 20:                                   # grow every member mid-run
...         grown = nf.add_module(pop[0], "3", nn.Linear(1, 1))  # an event on one member
...         pop = nf.touch(pop)                          # the population follows
...     losses, gs = grads(pop, x, y)
...     pop, state = opt.step(pop, gs, state)            # state follows the event itself
>>> losses.shape, pop.version, pop["0.weight"].grad_fn is None
(torch.Size([8]), 1, True)
"""

from ._adam import Adam, AdamW
from ._sgd import SGD
from ._state import AdamState, SGDState, vmap_dims

__all__ = ["SGD", "Adam", "AdamW", "SGDState", "AdamState", "vmap_dims"]
