"""The Triton backend as `mergefast.kernels` calls it (same functions as `kernels/cpu.py`)."""

from __future__ import annotations

from .arcee_fusion import arcee_apply, arcee_select
from .breadcrumbs import breadcrumbs_forward as breadcrumbs
from .dare import dare_forward as dare
from .dare import dare_norms
from .della import della_apply, della_masks
from .linear import linear_forward as linear
from .ram import ram_apply, ram_counts
from .sce import sce_apply, sce_select
from .slerp import slerp_apply, slerp_dots
from .slerp_family import gram, model_stock_apply, nearswap, nuslerp_apply
from .task_arithmetic import magnitude_keep
from .task_arithmetic import task_arithmetic_forward as task_arithmetic

__all__ = [
    "breadcrumbs",
    "dare",
    "dare_norms",
    "linear",
    "magnitude_keep",
    "slerp_apply",
    "slerp_dots",
    "task_arithmetic",
    "gram",
    "nuslerp_apply",
    "model_stock_apply",
    "nearswap",
    "della_apply",
    "della_masks",
    "arcee_select",
    "arcee_apply",
    "ram_counts",
    "ram_apply",
    "sce_select",
    "sce_apply",
]
