"""The merge methods: readable torch references (the spec) and their YAML registry.

`mergefast.methods.linear` (and every name below) is the reference function, imported on
first use: the registry and the planner import this package without torch
(mergefast/dtypes.py). The package's attribute lookup is overridden, not extended with a
module `__getattr__`, because a name here is also its submodule's, and importing a submodule
sets the package attribute to the module.
"""

import sys
import types
from importlib import import_module

# name -> the module of this package defining it
_WHERE = {
    "ZeroWeightSumError": "linear",
    "arcee_fusion": "arcee_fusion",
    "karcher": "karcher",
    "linear": "linear",
    "magnitude_mask": "task_arithmetic",
    "model_stock": "model_stock",
    "multislerp": "multislerp",
    "nearswap": "nearswap",
    "nuslerp": "nuslerp",
    "passthrough": "passthrough",
    "ram": "ram",
    "ramplus_tl": "ram",
    "sce": "sce",
    "slerp": "slerp",
    "task_arithmetic": "task_arithmetic",
    "ties": "task_arithmetic",
}
__all__ = sorted(_WHERE)


class _References(types.ModuleType):
    """This package, whose names of `_WHERE` resolve to the reference functions."""

    def __getattribute__(self, name: str):
        module = _WHERE.get(name)
        if module is None:
            return super().__getattribute__(name)
        return getattr(import_module(f"{__name__}.{module}"), name)


sys.modules[__name__].__class__ = _References
