"""nytorch 1.1.0's public API on nytorch_func: change ``import nytorch`` to this module.

>>> import torch
>>> import nytorch_func.compat as nyto
>>> class Net(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.w = torch.nn.Parameter(torch.tensor([1., 2.]))
>>> (Net() * 3).w
Parameter containing:
tensor([3., 6.], requires_grad=True)
"""

from . import module, mtype, particle_module
from .module import NytoModule, ParamProduct
from .mtype import ParamConfig, ParamType
from .particle_module import GetNytoModule, ParticleModule, PMProduct

__all__ = ["NytoModule", "ParamProduct", "ParamConfig", "ParamType", "ParticleModule",
           "PMProduct", "GetNytoModule", "module", "mtype", "particle_module"]
