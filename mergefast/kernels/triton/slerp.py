"""SLERP on the GPU: one fused reduction pass (float32 block partials of <a,a>, <b,b>, <a,b>,
summed in float64 by torch) and one elementwise pass out = c0 * a + c1 * b."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32


@triton.jit
def _slerp_dots_kernel(a_ptr, b_ptr, part_ptr, n, nblocks, BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    a = load_f32(a_ptr, offs, mask)
    b = load_f32(b_ptr, offs, mask)
    tl.store(part_ptr + pid, tl.sum(a * a, axis=0))
    tl.store(part_ptr + nblocks + pid, tl.sum(b * b, axis=0))
    tl.store(part_ptr + 2 * nblocks + pid, tl.sum(a * b, axis=0))


@triton.jit
def _slerp_apply_kernel(a_ptr, b_ptr, out_ptr, n, c0, c1, BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    a = load_f32(a_ptr, offs, mask)
    b = load_f32(b_ptr, offs, mask)
    store_f32(out_ptr, offs, c0 * a + c1 * b, mask)


def slerp_dots(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    n = a.numel()
    block = block_size()
    nblocks = triton.cdiv(n, block)
    part = torch.empty((3, nblocks), dtype=torch.float32, device=a.device)
    _slerp_dots_kernel[(nblocks,)](as_arg(a), as_arg(b), part, n, nblocks, BLOCK=block, **launch_options())
    aa, bb, ab = part.double().sum(dim=1).tolist()
    return aa, bb, ab


def slerp_apply(a: torch.Tensor, b: torch.Tensor, c0: float, c1: float, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(a.shape, dtype=out_dtype, device=a.device)
    n = out.numel()
    block = block_size()
    _slerp_apply_kernel[(triton.cdiv(n, block),)](
        as_arg(a), as_arg(b), as_arg(out), n, float(c0), float(c1), BLOCK=block, **launch_options()
    )
    return out
