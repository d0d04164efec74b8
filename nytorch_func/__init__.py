"""nytorch_func: nytorch's particle operations and version manager as immutable pytrees.

A *particle* is one model's tensors as an immutable value paired with a *schema*; the particles
derived from one model form a *species*; metadata *events* make new schema versions and
:func:`touch` migrates particles to them. See ``docs/guide.md``.

>>> import torch, nytorch_func as nf
>>> a = nf.from_module(torch.nn.Linear(4, 2))
>>> b = a.randn()
>>> mix = 0.5 * a + 0.5 * b
>>> nf.apply(mix, torch.ones(3, 4)).shape
torch.Size([3, 2])
"""

from ._blend import lerp
from ._bridge import apply, apply_with_state, from_module, to_module
from ._config import ParamConfig
from ._edit import (add_buffer, add_module, add_param, configure, configure_buffer, del_buffer,
                    del_module, del_param, set_none, to)
from ._func import grad, value_and_grad
from ._grow import deepen, insert_module, widen
from ._history import diff, history
from ._io import load, save
from ._errors import (ArgumentTypeError, CheckpointError, FrozenError, NytorchFuncError,
                      SchemaError, SpeciesMismatchError, VersionError)
from ._ops import full_like, map_params, rand_like, randn_like, zeros_like
from ._particle import Particle
from ._population import (VmapFallbackWarning, from_modules, population, stack, unstack,
                          vmap_apply)
from ._reduce import mean, take, topk, where
from ._schema import Schema, TensorSpec
from ._species import Species
from ._state_dict import load_state_dict, state_dict
from ._touch import touch, touch_tree
from ._facade import NytoModule
from ._particle import param_ids

__version__ = "0.1.0"

__all__ = [
    "Particle", "Schema", "Species", "ParamConfig", "TensorSpec",
    "NytorchFuncError", "SpeciesMismatchError", "VersionError", "SchemaError",
    "ArgumentTypeError", "FrozenError", "CheckpointError",
    "from_module", "to_module", "apply", "apply_with_state",
    "lerp", "randn_like", "rand_like", "zeros_like", "full_like", "map_params",
    "configure", "configure_buffer", "add_param", "del_param", "add_buffer", "del_buffer", "add_module",
    "del_module", "set_none", "to", "touch", "touch_tree", "history", "diff", "param_ids",
    "grad", "value_and_grad", "widen", "deepen", "insert_module",
    "stack", "unstack", "population", "from_modules", "vmap_apply", "VmapFallbackWarning",
    "mean", "take", "topk", "where",
    "save", "load", "state_dict", "load_state_dict",
    "NytoModule",
]
