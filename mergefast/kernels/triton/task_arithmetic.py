"""Task arithmetic / TIES on the GPU: the exact magnitude selection (select.py) gives each
model a threshold key, a tie quota and per-block tie counts; then one fused apply pass
`_task_arithmetic_kernel` reads base and the K models, and per element, in registers:
deltas, keep masks, weighted deltas, the elected sign, the agreeing sum and divisor, the
result; stored once. No K x N temporaries, no sorts, no int64 index tensors.

SPARSIFY is a tl.constexpr: 0 none, 1 magnitude; 2 (magnitude_outliers) and 3 (random) are
reserved for breadcrumbs and DARE/DELLA.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .select import select_magnitude
from .utils import (as_arg, block_size, block_span, launch_options, load_f32, magnitude_key,
                    store_f32)


@triton.jit
def _keep(d, mask, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT: tl.constexpr):
    """Magnitude keep-mask of model i's deltas `d` in this block: key > T, plus key == T
    while the model's tie quota lasts, in flat order."""
    key = magnitude_key(d).to(tl.int64)
    thr = tl.load(thr_ptr + i)
    if TIE_CUT:
        quota = tl.load(quota_ptr + i)
        before = tl.load(eqb_ptr + i * nblocks + pid)
        is_eq = (key == thr) & mask
        eq32 = is_eq.to(tl.int32)
        rank = before + (tl.cumsum(eq32, axis=0) - eq32).to(tl.int64)
        keep = (key > thr) | (is_eq & (rank < quota))
    else:
        keep = key >= thr
    return keep


@triton.jit
def _weighted_delta(x_ptr, b, offs, mask, w, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks,
                    SPARSIFY: tl.constexpr, TIE_CUT: tl.constexpr):
    """w_i * (kept) delta_i for one block, in registers."""
    d = load_f32(x_ptr, offs, mask) - b
    if SPARSIFY == 1:
        d = tl.where(_keep(d, mask, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT),
                     d, 0.0)
    return d * w


@triton.jit
def _task_arithmetic_kernel(base_ptr, xs, ws, thr_ptr, quota_ptr, eqb_ptr, out_ptr, n, nblocks,
                            divisor, lam, SPARSIFY: tl.constexpr, TIE_CUT: tl.constexpr,
                            CONSENSUS: tl.constexpr, NORMALIZE: tl.constexpr,
                            SCALE: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(len(xs)):
        total = total + _weighted_delta(xs[i], b, offs, mask, ws[i], i, thr_ptr, quota_ptr,
                                        eqb_ptr, pid, nblocks, SPARSIFY, TIE_CUT)
    if CONSENSUS:
        # elect the sign of the sum (0 counts as +); zero deltas never agree. The second
        # loop reloads the block (an L1/L2 hit) rather than keeping K blocks in registers.
        pos = total >= 0.0
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        dacc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(len(xs)):
            wd = _weighted_delta(xs[i], b, offs, mask, ws[i], i, thr_ptr, quota_ptr, eqb_ptr,
                                 pid, nblocks, SPARSIFY, TIE_CUT)
            agree = tl.where(pos, wd > 0.0, wd < 0.0)
            acc = acc + tl.where(agree, wd, 0.0)
            dacc = dacc + tl.where(agree, ws[i], 0.0)
        r = acc
        if NORMALIZE:  # IEEE-rounded division (`/` is approximate on NVIDIA GPUs): matches the CPU
            r = tl.math.div_rn(r, tl.where(dacc == 0.0, 1.0, dacc))
    else:
        r = total
        if NORMALIZE:
            r = tl.math.div_rn(r, divisor)
    if SCALE:
        r = r * lam
    store_f32(out_ptr, offs, b + r, mask)


def task_arithmetic_forward(base: torch.Tensor, xs: Sequence[torch.Tensor],
                            weights: Sequence[float], keep: Sequence[int] | None,
                            consensus: bool, normalize: bool, divisor: float, lambda_: float,
                            out_dtype: torch.dtype) -> torch.Tensor:
    n, dev = base.numel(), base.device
    block = block_size()
    nblocks = triton.cdiv(n, block)
    out = torch.empty(base.shape, dtype=out_dtype, device=dev)
    if keep is None:
        sparsify = 0
        thr = quota = torch.zeros(1, dtype=torch.int64, device=dev)
        eqb = None
    else:
        sparsify = 1
        thr, quota, eqb = select_magnitude(base, xs, keep, block)
    tie_cut = eqb is not None
    if eqb is None:
        eqb = torch.zeros(1, dtype=torch.int64, device=dev)
    _task_arithmetic_kernel[(nblocks,)](
        as_arg(base), tuple(as_arg(x) for x in xs), tuple(float(w) for w in weights), thr, quota,
        eqb, as_arg(out), n, nblocks, float(divisor), float(lambda_),
        SPARSIFY=sparsify, TIE_CUT=tie_cut, CONSENSUS=bool(consensus),
        NORMALIZE=bool(normalize), SCALE=float(lambda_) != 1.0, BLOCK=block, **launch_options())
    return out


@triton.jit
def _keep_mask_kernel(base_ptr, x_ptr, thr_ptr, quota_ptr, eqb_ptr, mask_ptr, n, nblocks,
                      TIE_CUT: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    d = load_f32(x_ptr, offs, mask) - b
    kept = _keep(d, mask, 0, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    tl.store(mask_ptr + offs, kept.to(tl.int8), mask=mask)


def magnitude_keep(base: torch.Tensor, x: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep-mask of x - base as the kernels select it (for tests)."""
    n = base.numel()
    block = block_size()
    nblocks = triton.cdiv(n, block)
    thr, quota, eqb = select_magnitude(base, [x], [keep], block)
    tie_cut = eqb is not None
    if eqb is None:
        eqb = torch.zeros(1, dtype=torch.int64, device=base.device)
    out = torch.empty(n, dtype=torch.int8, device=base.device)
    _keep_mask_kernel[(nblocks,)](as_arg(base), as_arg(x), thr, quota, eqb, out, n, nblocks,
                                  TIE_CUT=tie_cut, BLOCK=block, **launch_options())
    return out.view(x.shape).bool()
