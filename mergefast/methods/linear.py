"""`linear`: a weighted average (or weighted sum) of the inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .numerics import accumulation_dtype, check_same_shape, ordered_sum, result_dtype
from .spec import ZERO_WEIGHT_SUM  # noqa: F401 - re-exported: the references and kernels use it here


class ZeroWeightSumError(ValueError):
    """`normalize` was asked for but the weights sum to (nearly) zero."""


def linear(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    normalize: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return sum(w_i * x_i), divided by sum(w_i) when `normalize`.

    Arithmetic in float32 (float64 for float64 inputs), rounded once to `out_dtype`
    (default: the promoted input dtype). Raises ZeroWeightSumError when `normalize` is on
    and the weights sum to zero, where mergekit would silently produce inf/NaN.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"linear: got {len(tensors)} tensors and {len(weights)} weights")
    check_same_shape(tensors, "linear")
    acc_dtype = accumulation_dtype(tensors)
    w = torch.tensor(list(weights), dtype=acc_dtype)
    acc = torch.zeros(tensors[0].shape, dtype=acc_dtype, device=tensors[0].device)
    for x, wi in zip(tensors, w):
        acc += wi.item() * x.to(acc_dtype)
    if normalize:
        total = ordered_sum(w).item()
        if abs(total) < ZERO_WEIGHT_SUM:
            raise ZeroWeightSumError(
                f"linear weights {list(weights)} sum to zero with normalize: true; "
                "change the weights or set normalize: false"
            )
        acc /= total
    return acc.to(result_dtype(tensors, out_dtype))
