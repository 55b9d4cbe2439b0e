"""`model_stock`: interpolate between the base and the mean of the fine-tunes by a ratio
computed from the angle between their task vectors (Jang et al., 2024)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .numerics import accumulation_dtype, check_same_shape, result_dtype

# Clamp for the product of norms in the cosine, and the guard on t's denominator (0.1.5).
NORM_PRODUCT_MIN = 1e-6
DENOMINATOR_MIN = 1e-6


def _vectors(x: torch.Tensor, filter_wise: bool) -> torch.Tensor:
    """The tensor as rows of vectors: one flat vector, or rows along the last axis."""
    if not filter_wise or x.dim() == 0 or x.numel() == 0:
        return x.reshape(1, -1)
    return x.reshape(-1, x.shape[-1])


def mean_pairwise_cosine(offsets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over pairs i < j of cos(o_i, o_j) per row (product of norms clamped to >= 1e-6,
    each cosine clamped to [-1, 1]); shape (rows, 1)."""
    norms = [torch.linalg.vector_norm(o, dim=-1, keepdim=True) for o in offsets]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            dot = (offsets[i] * offsets[j]).sum(dim=-1, keepdim=True)
            cosines.append(pair_cosine(dot, norms[i], norms[j]))
    return mean_of(cosines)


def pair_cosine(dot: torch.Tensor, norm_i: torch.Tensor, norm_j: torch.Tensor) -> torch.Tensor:
    """dot / max(norm_i * norm_j, 1e-6), clamped to [-1, 1]."""
    return (dot / (norm_i * norm_j).clamp(min=NORM_PRODUCT_MIN)).clamp(-1, 1)


def mean_of(cosines: Sequence[torch.Tensor]) -> torch.Tensor:
    """The pairs' cosines summed in order from zero, divided by their count."""
    total = torch.zeros_like(cosines[0])
    for c in cosines:
        total += c
    return total / len(cosines)


def stock_ratio(cos: torch.Tensor, n: int) -> torch.Tensor:
    """t = n*cos / (1 + (n-1)*cos); t = 0 where |1 + (n-1)*cos| < 1e-6 (mergekit 0.1.5)."""
    denominator = 1 + (n - 1) * cos
    safe = torch.where(denominator.abs() < DENOMINATOR_MIN, 1.0, denominator)
    return torch.where(denominator.abs() < DENOMINATOR_MIN, 0.0, n * cos / safe)


def model_stock(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    filter_wise: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Model Stock over `base` and at least two fine-tunes `tensors`.

    o_i = x_i - base; cos = mean pairwise cosine of the o_i (per row along the last axis with
    `filter_wise`, a 1-D tensor being one row; else of the flattened tensors);
    t = N*cos/(1+(N-1)*cos) with N = len(tensors); result t*mean(x_i) + (1-t)*base.
    Float32 arithmetic, rounded once to `out_dtype` (default: promoted inputs).
    """
    if len(tensors) < 2:
        raise ValueError(f"model_stock needs a base and at least 2 other models, got {len(tensors)} others")
    all_inputs = [base, *tensors]
    check_same_shape(all_inputs, "model_stock")
    acc = accumulation_dtype(all_inputs)
    b = _vectors(base.to(acc), filter_wise)
    xs = [_vectors(x.to(acc), filter_wise) for x in tensors]
    t = stock_ratio(mean_pairwise_cosine([x - b for x in xs]), len(xs))
    mean = sum(xs) / len(xs)
    out = t * mean + (1 - t) * b
    return out.reshape(base.shape).to(result_dtype(all_inputs, out_dtype))
