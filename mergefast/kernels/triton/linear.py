"""linear on the GPU: one pass, K reads, one write (float32 in registers, one rounding)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32


@triton.jit
def _linear_kernel(xs, ws, out_ptr, n, total, DIVIDE: tl.constexpr, BLOCK: tl.constexpr):
    """out = sum_i(w_i * x_i) [/ total]; the reference's order: acc = acc + w_i * x_i."""
    pid, offs, mask = block_span(n, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(len(xs)):
        acc = acc + ws[i] * load_f32(xs[i], offs, mask)
    if DIVIDE:  # IEEE-rounded division (`/` is approximate on NVIDIA GPUs): matches the CPU
        acc = tl.math.div_rn(acc, total)
    store_f32(out_ptr, offs, acc, mask)


def linear_forward(
    xs: Sequence[torch.Tensor], weights: Sequence[float], divide: bool, total: float, out_dtype: torch.dtype
) -> torch.Tensor:
    out = torch.empty(xs[0].shape, dtype=out_dtype, device=xs[0].device)
    n = out.numel()
    block = block_size()
    grid = (triton.cdiv(n, block),)
    _linear_kernel[grid](
        tuple(as_arg(x) for x in xs),
        tuple(float(w) for w in weights),
        as_arg(out),
        n,
        float(total),
        DIVIDE=bool(divide),
        BLOCK=block,
        **launch_options(),
    )
    return out
