"""`passthrough`: copy one input tensor, optionally multiplied by `scale`."""

from __future__ import annotations

import torch

from .numerics import accumulation_dtype


def passthrough(
    tensor: torch.Tensor,
    scale: float | None = None,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return `tensor` (times `scale` when given) in `out_dtype` (default: its own dtype)."""
    dtype = out_dtype or tensor.dtype
    if scale is None or scale == 1:
        return tensor.to(dtype)
    return (tensor.to(accumulation_dtype([tensor])) * scale).to(dtype)
