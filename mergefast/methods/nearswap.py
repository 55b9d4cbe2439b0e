"""`nearswap`: take the other model's value where it is close to the base (within ~t)."""

from __future__ import annotations

import torch

from .numerics import accumulation_dtype, check_same_shape, result_dtype

# |base - x| is clamped to at least this before dividing.
DISTANCE_MIN = 1e-6


def nearswap(
    base: torch.Tensor,
    other: torch.Tensor,
    t: float,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per element w = clamp(t / max(|base - x|, 1e-6), 0, 1); result w*x + (1-w)*base.

    Float32 arithmetic, rounded once to `out_dtype` (default: promoted inputs).
    """
    check_same_shape([base, other], "nearswap")
    acc = accumulation_dtype([base, other])
    b, x = base.to(acc), other.to(acc)
    w = (t / (b - x).abs().clamp(min=DISTANCE_MIN)).clamp(0, 1)
    return (w * x + (1 - w) * b).to(result_dtype([base, other], out_dtype))
