"""Breadcrumbs (`breadcrumbs`, `breadcrumbs_ties`) on the fused kernels: the host side of one
call.

The reference (`methods.task_arithmetic.outlier_mask`) sorts each model's |delta| ascending
(stable: ties lowest flat index first) and keeps the positions [lo, hi) of that order
(`outlier_bounds`: the top int(gamma * n) dropped, the next int(density * n) kept). The
kernels (csrc/cpu/breadcrumbs.cpp, kernels/triton/breadcrumbs.py) find the two cut points
with TIES' exact selection, at-or-above each cut being a top-k in that order, and keep the
same set: no sort, no K x N temporaries. The arithmetic after the mask is TIES' (consensus)
or task arithmetic's (plain sum), in the reference's order: bit-identical results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods.task_arithmetic import DEFAULT_GAMMA, outlier_bounds
from .selection import SelectionOptions


def bounds(densities: Sequence[float], gammas: Sequence[float] | None, n: int) -> tuple[list[int], list[int]]:
    """Each model's kept positions [lo, hi) of its ascending |delta| order, as the reference
    computes them (gamma 0.01 where `gammas` is None)."""
    gammas = [DEFAULT_GAMMA] * len(densities) if gammas is None else gammas
    pairs = [outlier_bounds(float(d), float(g), n) for d, g in zip(densities, gammas)]
    return [lo for lo, _ in pairs], [hi for _, hi in pairs]


def run(
    impl,
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float] | None,
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
    selection: SelectionOptions,
) -> torch.Tensor:
    """Breadcrumbs on backend `impl` (kernels.cpu or kernels.triton.ops). Inputs contiguous,
    validated by the kernel API; `selection` picks how the cuts are found, never the result."""
    lo, hi = bounds(densities, gammas, base.numel())
    return impl.breadcrumbs(base, xs, weights, lo, hi, consensus, normalize, divisor, lambda_, out_dtype, selection)
