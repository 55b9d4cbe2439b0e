"""The task-arithmetic family: `task_arithmetic` and `ties` (DARE, breadcrumbs and DELLA
variants come later on the same skeleton).

Per output tensor: task vectors delta_i = x_i - base (exact, in float32), optional
sparsification of each delta with its own density, weighting (after sparsification), an
optional sign consensus, normalisation by the divisor, `lambda`, and base + result rounded
once.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .linear import ZERO_WEIGHT_SUM
from .numerics import accumulation_dtype, check_same_shape, keep_count, result_dtype

SPARSIFY_METHODS = ("none", "magnitude")
CONSENSUS_METHODS = (None, "sum")


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep-mask of exactly keep_count(density, numel) elements with the largest |delta|.

    Ties at the threshold are kept lowest flat index first (a stable descending sort), so
    the result is deterministic; mergekit's order among ties is unspecified.
    """
    n = delta.numel()
    k = keep_count(density, n)
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    if k > 0:
        order = torch.sort(delta.abs().flatten(), descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask.view(delta.shape)


def _sign_consensus(weighted: list[torch.Tensor], weights: Sequence[float]):
    """TIES 'sum' election: the sign of the sum of weighted deltas (0 counts as +)."""
    elected = torch.where(sum(weighted) >= 0, 1.0, -1.0).to(weighted[0].dtype)
    mixed = torch.zeros_like(weighted[0])
    divisor = torch.zeros_like(weighted[0])
    for wd, w in zip(weighted, weights):
        agree = torch.sign(wd) == elected  # zero deltas never agree
        mixed += torch.where(agree, wd, 0.0)
        divisor += torch.where(agree, torch.tensor(w, dtype=wd.dtype), 0.0)
    divisor = torch.where(divisor == 0, 1.0, divisor)
    return mixed, divisor


def _plain_sum(weighted: list[torch.Tensor], weights: Sequence[float], dtype: torch.dtype):
    """No consensus: sum of weighted deltas; divisor sum(w), |divisor| < 1e-8 -> 1."""
    divisor = torch.tensor(list(weights), dtype=dtype).sum().item()
    if abs(divisor) < ZERO_WEIGHT_SUM:
        divisor = 1.0
    return sum(weighted), divisor


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    densities: Sequence[float] | None = None,
    sparsify: str = "none",
    consensus: str | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Generalised task arithmetic over task vectors `tensors[i] - base`.

    `sparsify`: "none" or "magnitude" (exact top-k per model by |delta|, see
    `magnitude_mask`); `consensus`: None or "sum" (TIES sign election on weighted deltas).
    With `normalize` the mixed delta is divided by the divisor (sum of agreeing weights with
    consensus, 0 -> 1; else sum of weights, |sum| < 1e-8 -> 1); then multiplied by
    `lambda_`. Float32 arithmetic, rounded once to `out_dtype` (default: promoted inputs).
    """
    if sparsify not in SPARSIFY_METHODS:
        raise ValueError(f"sparsify must be one of {SPARSIFY_METHODS}, got {sparsify!r}")
    if consensus not in CONSENSUS_METHODS:
        raise ValueError(f"consensus must be one of {CONSENSUS_METHODS}, got {consensus!r}")
    if len(tensors) != len(weights):
        raise ValueError(f"task arithmetic: got {len(tensors)} tensors and {len(weights)} weights")
    all_inputs = [base, *tensors]
    check_same_shape(all_inputs, "task arithmetic")
    out = result_dtype(all_inputs, out_dtype)
    if not tensors:
        return base.to(out)
    acc_dtype = accumulation_dtype(all_inputs)
    b = base.to(acc_dtype)
    densities = densities if densities is not None else [1.0] * len(tensors)
    weighted = []
    for x, w, d in zip(tensors, weights, densities):
        delta = x.to(acc_dtype) - b
        if sparsify == "magnitude":
            delta = torch.where(magnitude_mask(delta, d), delta, 0.0)
        weighted.append(delta * w)
    if consensus == "sum":
        mixed, divisor = _sign_consensus(weighted, weights)
    else:
        mixed, divisor = _plain_sum(weighted, weights, acc_dtype)
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return (b + mixed).to(out)


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    normalize: bool = True,
    lambda_: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """TIES: magnitude trim to each model's density, sum sign election, disjoint mean."""
    return task_arithmetic(
        base, tensors, weights, densities=densities, sparsify="magnitude",
        consensus="sum", normalize=normalize, lambda_=lambda_, out_dtype=out_dtype,
    )
