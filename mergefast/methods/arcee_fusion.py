"""`arcee_fusion`: keep the other model's changes only where they matter most, judged by
|change| times the KL divergence between the two rows' softmaxes."""

from __future__ import annotations

import torch

from .numerics import accumulation_dtype, check_same_shape, result_dtype

SOFTMAX_EPS = 1e-8
IQR_FACTOR = 1.5


def kl_rows(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row along the last axis, broadcast back to the rows' shape, where
    p = softmax(x) + 1e-8 and q = softmax(base) + 1e-8."""
    p = torch.softmax(x, dim=-1) + SOFTMAX_EPS
    q = torch.softmax(base, dim=-1) + SOFTMAX_EPS
    return (p * (p / q).log()).sum(dim=-1, keepdim=True).expand_as(x)


def sorted_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """mergekit's quantile: the sorted values at index floor(q * (n - 1))."""
    flat = values.flatten()
    k = int(q * (flat.numel() - 1))
    return torch.kthvalue(flat, k + 1).values


def importance_threshold(importance: torch.Tensor) -> torch.Tensor:
    """median + 1.5 * (Q3 - Q1) of every importance value of the tensor."""
    q1, median, q3 = (sorted_quantile(importance, q) for q in (0.25, 0.5, 0.75))
    return median + IQR_FACTOR * (q3 - q1)


def arcee_fusion(
    base: torch.Tensor,
    other: torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """base + (x - base) where importance >= `importance_threshold`, else base.

    importance = |x - base| * KL (see `kl_rows`; a 1-D tensor is one row). The quantiles use
    every element (mergekit 0.1.5 samples 1e6 elements with replacement above 1e6 elements,
    which makes its result random; ours is exact and deterministic). Float32 arithmetic,
    rounded once to `out_dtype` (default: promoted inputs).
    """
    check_same_shape([base, other], "arcee_fusion")
    acc = accumulation_dtype([base, other])
    b, x = base.to(acc), other.to(acc)
    rows_b, rows_x = b.reshape(-1, b.shape[-1] if b.dim() else 1), x.reshape(-1, x.shape[-1] if x.dim() else 1)
    delta = rows_x - rows_b
    importance = delta.abs() * kl_rows(rows_x, rows_b)
    keep = importance >= importance_threshold(importance)
    return (rows_b + torch.where(keep, delta, 0.0)).reshape(base.shape).to(result_dtype([base, other], out_dtype))
