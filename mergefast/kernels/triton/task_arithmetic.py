"""Task arithmetic / TIES on the GPU: exact magnitude selection by histogram, then one fused
apply pass.

Selection, per model i with 0 < k_i < n, on the 31-bit key of |f32(x_i) - f32(base)|: a
radix select on 8 + 8 + 8 + 7 bits (`RADIX_DIGITS`), one `_digit_hist_kernel` pass per digit
over the keys that share the prefix found so far -> the bucket of the k-th largest key and the
count above it (a few torch ops on the device, one sync a pass); after the last digit the exact
threshold key T and the quota r of T-valued elements to keep. Every pass counts in per-program
`tl.histogram`s, never with per-element global atomics: same-address atomics serialise, and
fine-tune deltas crowd few keys. Measured on an H200, 7B layer, K = 3: global atomics on the
top 15 bits took 11 ms; the earlier last pass (global atomics on the low 15 bits) had 845,861
elements of each model on ONE bin (bf16 deltas are multiples of the weights' ulp; count by
`torch` on the benchmark layer); with that pass the whole TIES call took 3.6 ms, the apply
pass alone 0.23 ms. The 8 + 8 + 8 + 7 scheme has not yet run on a GPU.
Then `_eq_count_kernel`, only when r < count(key == T): per-block counts of key == T and an
exclusive scan (torch.cumsum over nblocks values), so that the apply pass keeps ties lowest
flat index first (an in-block tl.cumsum).
A pass is skipped when a whole bucket is kept.
Apply `_task_arithmetic_kernel`: reads base and the K models, and per element, in registers:
deltas, keep masks, weighted deltas, the elected sign, the agreeing sum and divisor, the
result; stored once. The selection passes read base and the selected models together.
No K x N temporaries, no sorts, no int64 index tensors.

SPARSIFY is a tl.constexpr: 0 none, 1 magnitude; 2 (magnitude_outliers) and 3 (random) are
reserved for breadcrumbs and DARE/DELLA.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from .utils import (as_arg, block_size, hist_programs, launch_options, load_f32, magnitude_key,
                    store_f32)

KEEP_NONE = 1 << 31   # threshold above every 31-bit key
NO_QUOTA = 1 << 62    # quota of a model whose ties are not split
# (shift, width) of the radix digits of the 31-bit key, most significant first
RADIX_DIGITS = ((23, 8), (15, 8), (7, 8), (0, 7))


@triton.jit
def _digit_hist_kernel(base_ptr, xs, prefix_ptr, hist_ptr, n, nblocks, SHIFT: tl.constexpr,
                       BINS: tl.constexpr, PREFIX_SHIFT: tl.constexpr, KB: tl.constexpr,
                       BLOCK: tl.constexpr):
    """BINS-bin histogram of the digit (key >> SHIFT) & (BINS - 1) over the keys whose
    key >> PREFIX_SHIFT equals model i's prefix (all keys when PREFIX_SHIFT == 31).

    Each program walks blocks pid, pid + nprog, ... and sums its per-block `tl.histogram`s in
    registers ([KB, BINS], one row per model), then adds them to `hist` once: flushing every
    block sent one atomic per block to each hot bin (~22K per bin on a 7B layer)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    bins = tl.arange(0, BINS)
    rows = tl.arange(0, KB)
    acc = tl.zeros([KB, BINS], dtype=tl.int32)
    for blk in range(pid, nblocks, nprog):
        offs = tl.cast(blk, tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        b = load_f32(base_ptr, offs, mask)
        for i in tl.static_range(len(xs)):
            key = magnitude_key(load_f32(xs[i], offs, mask) - b)
            sel = mask
            if PREFIX_SHIFT < 31:
                sel = sel & ((key >> PREFIX_SHIFT) == tl.load(prefix_ptr + i))
            digit = tl.where(sel, (key >> SHIFT) & (BINS - 1), 0)
            counts = tl.histogram(digit, BINS)
            # the unselected lanes were counted in bin 0: take them out again
            counts = counts - tl.where(bins == 0, tl.sum((~sel).to(tl.int32), axis=0), 0)
            acc = acc + tl.where(rows[:, None] == i, counts[None, :], 0)
    live = (acc > 0) & (rows[:, None] < len(xs))
    tl.atomic_add(hist_ptr + rows[:, None] * BINS + bins[None, :], acc, mask=live)


@triton.jit
def _eq_count_kernel(base_ptr, xs, thr_ptr, count_ptr, n, nblocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b = load_f32(base_ptr, offs, mask)
    for i in tl.static_range(len(xs)):
        key = magnitude_key(load_f32(xs[i], offs, mask) - b)
        thr = tl.load(thr_ptr + i)
        eq = ((key == thr) & mask).to(tl.int32)
        tl.store(count_ptr + i * nblocks + pid, tl.sum(eq, axis=0))


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
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
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


def _first_reaching(hist: torch.Tensor, need: torch.Tensor):
    """Per row of `hist` (counts per bin, low bin first): the highest bin at which the count
    from the top reaches `need`, the count strictly above that bin, and that bin's count."""
    bins = hist.shape[1]
    h = hist.to(torch.int64)
    from_top = h.flip(1).cumsum(1)
    idx = (from_top < need[:, None]).sum(1).clamp(max=bins - 1)
    above = torch.where(idx > 0, from_top.gather(1, (idx - 1).clamp(min=0)[:, None])[:, 0], 0)
    chosen = bins - 1 - idx
    count = h.gather(1, chosen[:, None])[:, 0]
    return torch.stack([chosen, above, count]).tolist()   # one device sync


def select_magnitude(base: torch.Tensor, xs: Sequence[torch.Tensor], keep: Sequence[int],
                     block: int):
    """Thresholds (int64 [K]), tie quotas (int64 [K]) and, when some model's ties are split,
    per-block counts of threshold-equal elements before each block (int64 [K, nblocks])."""
    n, K, dev = base.numel(), len(xs), base.device
    nblocks = triton.cdiv(n, block)
    thr, quota = [0] * K, [NO_QUOTA] * K
    active, cut = [], []
    for i, k in enumerate(keep):
        if k <= 0:
            thr[i], quota[i] = KEEP_NONE, 0
        elif k < n:
            active.append(i)
    eqb = None
    opts = launch_options()
    b = as_arg(base)
    hist_grid = (hist_programs(base.device, nblocks),)
    # (model, prefix so far, still needed below the prefix), refined one radix digit a pass
    todo = [(i, 0, keep[i]) for i in active]
    for shift, width in RADIX_DIGITS:
        if not todo:
            break
        bins = 1 << width
        hist = torch.zeros((len(todo), bins), dtype=torch.int32, device=dev)
        prefixes = torch.tensor([p for _, p, _ in todo], dtype=torch.int32, device=dev)
        models = tuple(as_arg(xs[i]) for i, _, _ in todo)
        _digit_hist_kernel[hist_grid](b, models, prefixes, hist, n, nblocks, SHIFT=shift,
                                      BINS=bins, PREFIX_SHIFT=shift + width,
                                      KB=triton.next_power_of_2(len(todo)), BLOCK=block, **opts)
        need = torch.tensor([r for _, _, r in todo], dtype=torch.int64, device=dev)
        digit, above, count = _first_reaching(hist, need)
        nxt = []
        for q, (i, prefix, r) in enumerate(todo):
            p = (prefix << width) | digit[q]
            rest = r - above[q]            # still needed among keys with this prefix
            if rest == count[q]:           # the whole bucket is kept
                thr[i] = p << shift
            elif shift > 0:
                nxt.append((i, p, rest))
            else:                          # p is the exact threshold key
                thr[i] = p
                quota[i] = rest
                cut.append(i)
        todo = nxt
    if cut:
        counts = torch.empty((len(cut), nblocks), dtype=torch.int32, device=dev)
        thr_cut = torch.tensor([thr[i] for i in cut], dtype=torch.int32, device=dev)
        _eq_count_kernel[(nblocks,)](b, tuple(as_arg(xs[i]) for i in cut), thr_cut, counts, n,
                               nblocks, BLOCK=block, **opts)
        counts = counts.to(torch.int64)
        eqb = torch.zeros((K, nblocks), dtype=torch.int64, device=dev)
        eqb[cut] = counts.cumsum(1) - counts
    thr_t = torch.tensor(thr, dtype=torch.int64, device=dev)
    quota_t = torch.tensor(quota, dtype=torch.int64, device=dev)
    return thr_t, quota_t, eqb


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
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
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
