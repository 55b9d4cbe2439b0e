"""The merge methods: readable torch references (the spec) and their YAML registry."""

from .linear import ZeroWeightSumError, linear
from .passthrough import passthrough
from .slerp import slerp
from .task_arithmetic import magnitude_mask, task_arithmetic, ties

__all__ = [
    "ZeroWeightSumError", "linear", "magnitude_mask", "passthrough", "slerp",
    "task_arithmetic", "ties",
]
