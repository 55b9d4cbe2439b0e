"""Magnitude-sparsified task arithmetic / TIES in one read of the inputs on the GPU: the CPU's
scheme (csrc/cpu/select/one_read.cpp).

The two-pass scheme (two_pass.select_magnitude, then `_task_arithmetic_kernel`) reads base and
every model twice, so with 3 models it moves 9 tensors' worth of bytes for 5 tensors of
inputs and output: at most 5/9 of the memory bandwidth, ~47 % at the linear kernel's 84 %
efficiency. But the sampled window [lo, hi] of window.py decides almost every element before
any threshold is known: a key above hi is kept, one below lo dropped, whatever the exact
threshold in [lo, hi]. So:

1. The windows from a larger sample (SAMPLE_MAX keys per model; window.windows).
2. `_one_read_kernel`, one pass: per block the apply with "keep key > hi", the window's
   counts and candidate slots (window.window_counts), and the records of every element where
   some model's key lies in [lo, hi] (records.store_records).
3. One sync: the window totals (where each exact threshold lies then comes from
   window.case_of, as in the two-pass scheme), the records' total and the fullest block;
   rules.rules makes the thresholds, quotas and tie counts.
4. The fix-up (fix_up.py): the apply's own arithmetic on the records with the exact rules,
   stored over the pass's results; the output is the two-pass scheme's, bit for bit.

Traffic with 3 bf16 models (units of one tensor): 4 reads + 1 write + ~0.35 records written
and read + the fix-up's scattered stores (~0.7 of the output's sectors): ~6.4 against 9.
A window that misses, records that outgrow their memory (records.RECORD_SLACK times the
windows' expected share) or too small a tensor: the caller runs the two passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ...selection import SelectionOptions
from ..apply import merge_result, weighted_sum
from ..utils import INTERPRET_BLOCK, as_arg, block_span, interpret, launch_options, load_f32, magnitude_key, store_f32
from . import fix_up, records, rules
from . import window as sw

SAMPLE_MAX = 1 << 15  # 4x the two-pass scheme's sample: 2x narrower windows, as on the CPU
ONE_READ_MIN = 1 << 20  # fewer elements: the two passes (their second read hits the L2)
INTERPRET_ONE_READ_MIN = 1 << 12


@triton.jit
def _one_read_kernel(
    base_ptr,
    xs,
    ws,
    lo_ptr,
    hi_ptr,
    thr_ptr,
    count_ptr,
    slot_ptr,
    used_ptr,
    first_ptr,
    rcount_ptr,
    roff_ptr,
    rbase_ptr,
    rxs,
    rcap,
    out_ptr,
    n,
    nblocks,
    divisor,
    lam,
    CAP: tl.constexpr,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    uncertain = tl.zeros([BLOCK], dtype=tl.int32)
    for i in tl.static_range(len(xs)):
        key = magnitude_key(load_f32(xs[i], offs, mask) - b)
        lo = tl.load(lo_ptr + i)
        hi = tl.load(hi_ptr + i)
        sw.window_counts(
            key,
            mask,
            lo,
            hi,
            count_ptr + i * 4 * nblocks + pid,
            nblocks,
            slot_ptr + (i * nblocks + pid).to(tl.int64) * CAP,
            CAP,
        )
        uncertain = uncertain | (mask & (key >= lo) & (key <= hi)).to(tl.int32)
    # the apply with this pass's rules (key >= hi + 1): no tie cuts
    total = weighted_sum(b, xs, ws, offs, mask, thr_ptr, thr_ptr, thr_ptr, pid, nblocks, 1, False)
    out = merge_result(
        b,
        total,
        xs,
        ws,
        offs,
        mask,
        thr_ptr,
        thr_ptr,
        thr_ptr,
        pid,
        nblocks,
        divisor,
        lam,
        1,
        False,
        CONSENSUS,
        NORMALIZE,
        SCALE,
    )
    store_f32(out_ptr, offs, out, mask)
    records.store_records(
        uncertain, b, xs, offs, mask, pid, used_ptr, first_ptr, rcount_ptr, roff_ptr, rbase_ptr, rxs, rcap, BLOCK
    )


def _sizes(options: SelectionOptions) -> tuple[int, int]:
    """The smallest tensor the scheme takes, and its block (the interpreter's are small)."""
    if interpret():
        return options.one_read_min or INTERPRET_ONE_READ_MIN, INTERPRET_BLOCK
    return options.one_read_min or ONE_READ_MIN, options.one_read_block


def task_arithmetic(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    keep: Sequence[int],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out: torch.Tensor,
    options: SelectionOptions,
) -> bool:
    """The merge into `out` in one read of the inputs; False (out then undefined) when the
    caller must run the two passes."""
    n, K, dev = base.numel(), len(xs), base.device
    active = [i for i, k in enumerate(keep) if 0 < k < n]
    m = sw.sample_size(n, SAMPLE_MAX)
    smallest, block = _sizes(options)
    if n < smallest or not active or m < sw.MIN_SAMPLE:
        return False
    nblocks = triton.cdiv(n, block)
    lo, hi, thr = sw.windows(base, xs, keep, active, m)
    cap = sw.slots_per_block(n, keep, active, block, m)
    share = sum(sw.expected_share(n, keep[i], m) for i in active)
    counts = torch.empty((K, 4, nblocks), dtype=torch.int32, device=dev)
    slots = torch.empty((K, nblocks, cap), dtype=torch.int32, device=dev)
    rec = records.allocate(base, xs, share, nblocks, block)
    flags = dict(CONSENSUS=bool(consensus), NORMALIZE=bool(normalize), SCALE=float(lambda_) != 1.0)
    _one_read_kernel[(nblocks,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(w) for w in weights),
        lo,
        hi,
        thr,
        counts,
        slots,
        rec.used,
        rec.first,
        rec.count,
        rec.offsets,
        as_arg(rec.base),
        tuple(as_arg(r) for r in rec.xs),
        rec.cap,
        as_arg(out),
        n,
        nblocks,
        float(divisor),
        float(lambda_),
        CAP=cap,
        BLOCK=block,
        **flags,
        **launch_options(),
    )
    totals = torch.stack([rec.used[0].to(torch.int64), rec.count.amax().to(torch.int64)])
    synced = torch.cat([sw.window_stats(counts, lo, hi).reshape(-1), totals]).tolist()  # sync
    total, fullest = synced[-2:]
    if total > rec.cap:
        return False
    stats = [synced[sw.STATS * i : sw.STATS * (i + 1)] for i in range(K)]
    cases = sw.cases_of(keep, n, stats, cap)
    if None in cases:
        return False
    if fullest == 0:
        return True
    state = sw.WindowScan(lo, hi, counts, slots, cases, sw.candidate_bits(cases, stats))
    thr, quota, eqb = rules.rules(state, block, n, options)
    fix_up.fix_up(rec, fullest, weights, thr, quota, eqb, out, nblocks, divisor, lambda_, flags, block)
    return True
