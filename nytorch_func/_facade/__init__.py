"""NytoModule: the seed's mutable ``nn.Module`` facade, a thin shell over the pure core.

A NytoModule *is* an ordinary ``nn.Module`` whose tree holds one particle's tensors. Everything
version-related is delegated to the core: the module's version is a core :class:`Schema`, its
events are core events (``nytorch_func._edit``), its touch is core :func:`touch` written back
into the module tree, and its arithmetic is core particle arithmetic, written into a new tree.

One room per job:

* ``_handle``: per-particle handles and the weak tables that find a module's particle;
* ``_bind``: making a species from a module tree (ids in nytorch's registration order);
* ``_plan``: the layout cache that reads an unchanged tree and builds result trees fast;
* ``_write``: writing a particle into a tree (after an event or a touch);
* ``_sync``: reading a tree as a particle, edits behind the facade's back as events;
* ``_assign``: attribute assignments and deletions as events (torch's rules, nytorch's warnings);
* ``_config``: nytorch's mutable ParamConfig and how it maps onto the core's;
* ``_product``: ``ParamProduct``;
* ``_operate``: particle operations on modules;
* ``_module``: the ``NytoModule`` class, which delegates to the rooms above.
"""

from ._bind import handle_of
from ._config import MutableParamConfig
from ._handle import ParticleHandle
from ._module import NytoModule
from ._product import ParamProduct, install_operators

__all__ = ["NytoModule", "ParamProduct", "ParticleHandle", "MutableParamConfig",
           "install_operators", "handle_of"]
