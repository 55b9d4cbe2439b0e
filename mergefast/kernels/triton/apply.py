"""The per-element arithmetic of task arithmetic / TIES on the GPU, shared by the apply pass
(task_arithmetic.py) and the one-read scheme's pass and fix-up (select/one_read.py,
select/fix_up.py), as
csrc/cpu/apply.h is on the CPU: the same float32 operations in the same order wherever an
element is computed."""

from __future__ import annotations

import triton
import triton.language as tl

from .utils import load_f32, magnitude_key


@triton.jit
def keep_mask(d, mask, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT: tl.constexpr):
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
def _at_or_above(key, mask, r, thr_ptr, skip_ptr, eqb_ptr, pid, nblocks, TIE_CUT: tl.constexpr):
    """Whether each key is at or above cut r of the ascending stable order (ties lowest flat
    index first): key > T, plus T's ties but the first skip[r] of them in flat order."""
    thr = tl.load(thr_ptr + r)
    if TIE_CUT:
        skip = tl.load(skip_ptr + r)
        before = tl.load(eqb_ptr + r * nblocks + pid)
        is_eq = (key == thr) & mask
        eq32 = is_eq.to(tl.int32)
        rank = before + (tl.cumsum(eq32, axis=0) - eq32).to(tl.int64)
        above = (key > thr) | (is_eq & (rank >= skip))
    else:
        above = key >= thr
    return above


@triton.jit
def band_mask(d, mask, i, thr_ptr, skip_ptr, eqb_ptr, pid, nblocks, TIE_CUT: tl.constexpr):
    """Breadcrumbs keep-mask of model i's deltas `d` in this block: at or above its lower cut
    (rule 2i) and not at or above its upper cut (rule 2i + 1)."""
    key = magnitude_key(d).to(tl.int64)
    lo = _at_or_above(key, mask, 2 * i, thr_ptr, skip_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    hi = _at_or_above(key, mask, 2 * i + 1, thr_ptr, skip_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    return lo & ~hi


@triton.jit
def weighted_delta(
    x_ptr, b, offs, mask, w, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, SPARSIFY: tl.constexpr, TIE_CUT: tl.constexpr
):
    """w_i * (kept) delta_i for one block, in registers."""
    d = load_f32(x_ptr, offs, mask) - b
    if SPARSIFY == 1:
        d = tl.where(keep_mask(d, mask, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT), d, 0.0)
    elif SPARSIFY == 2:  # breadcrumbs: quota_ptr holds each cut's skipped ties (breadcrumbs.py)
        d = tl.where(band_mask(d, mask, i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT), d, 0.0)
    return d * w


@triton.jit
def weighted_sum(
    b, xs, ws, offs, mask, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, SPARSIFY: tl.constexpr, TIE_CUT: tl.constexpr
):
    """sum_i w_i * (kept) delta_i, from 0.0 in model order."""
    total = tl.zeros_like(b)
    for i in tl.static_range(len(xs)):
        total = total + weighted_delta(
            xs[i], b, offs, mask, ws[i], i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, SPARSIFY, TIE_CUT
        )
    return total


@triton.jit
def merge_result(
    b,
    total,
    xs,
    ws,
    offs,
    mask,
    thr_ptr,
    quota_ptr,
    eqb_ptr,
    pid,
    nblocks,
    divisor,
    lam,
    SPARSIFY: tl.constexpr,
    TIE_CUT: tl.constexpr,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE: tl.constexpr,
):
    """base + the merged deltas (total: weighted_sum's), in float32."""
    if CONSENSUS:
        # elect the sign of the sum (0 counts as +); zero deltas never agree. The second
        # loop reloads the block (an L1/L2 hit) rather than keeping K blocks in registers.
        pos = total >= 0.0
        acc = tl.zeros_like(b)
        dacc = tl.zeros_like(b)
        for i in tl.static_range(len(xs)):
            wd = weighted_delta(
                xs[i], b, offs, mask, ws[i], i, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, SPARSIFY, TIE_CUT
            )
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
    return b + r
