"""The merge methods: readable torch references (the spec) and their YAML registry."""

from .arcee_fusion import arcee_fusion
from .karcher import karcher
from .linear import ZeroWeightSumError, linear
from .model_stock import model_stock
from .multislerp import multislerp
from .nearswap import nearswap
from .nuslerp import nuslerp
from .passthrough import passthrough
from .ram import ram, ramplus_tl
from .sce import sce
from .slerp import slerp
from .task_arithmetic import magnitude_mask, task_arithmetic, ties

__all__ = [
    "ZeroWeightSumError",
    "arcee_fusion",
    "karcher",
    "linear",
    "magnitude_mask",
    "model_stock",
    "multislerp",
    "nearswap",
    "nuslerp",
    "passthrough",
    "ram",
    "ramplus_tl",
    "sce",
    "slerp",
    "task_arithmetic",
    "ties",
]
