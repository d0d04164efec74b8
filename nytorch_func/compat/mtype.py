"""``nytorch.mtype`` names.

``ParamConfig`` is the mutable config view that ``apply_param_config`` callbacks receive (as in
nytorch, where the config is a mutable dataclass); the changes a callback makes become one core
configure event. ``ParamType`` is ``torch.nn.Parameter``; ids are ints.
"""

from collections import OrderedDict as _OrderedDict
from typing import OrderedDict as _OrderedDictType

from torch import nn

from .._facade import MutableParamConfig as ParamConfig

ModuleID = int
ParamID = int
Module = nn.Module
ParamType = nn.Parameter
ROOT_MODULE_ID: ModuleID = 0
ParamDict = _OrderedDictType[ParamID, ParamType]
ConfigDict = _OrderedDictType[ParamID, ParamConfig]
del _OrderedDict

__all__ = ["ParamConfig", "ParamType", "ParamID", "ModuleID", "Module", "ParamDict", "ConfigDict",
           "ROOT_MODULE_ID"]
