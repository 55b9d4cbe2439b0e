"""Magnitude-sparsified task arithmetic / TIES in one read of the inputs on the GPU: the CPU's
scheme (csrc/cpu/speculative.cpp).

The two-pass scheme (select_magnitude, then `_task_arithmetic_kernel`) reads base and every
model twice, so with 3 models it moves 9 tensors' worth of bytes for 5 tensors of inputs and
output: at most 5/9 of the memory bandwidth, ~47 % at the linear kernel's 84 % efficiency,
short of the 60 % goal. But the sampled window [lo, hi] of select_window.py decides almost
every element before any threshold is known: a key above hi is kept, one below lo dropped,
whatever the exact threshold in [lo, hi]. So:

1. The windows from a larger sample (SAMPLE_MAX keys per model; select_window.windows).
2. `_speculative_kernel`, one pass: per block the apply with "keep key > hi", the window's
   counts and candidate slots (select_window.window_counts), and the *records*: every element
   where some model's key lies in [lo, hi], its offset in the block and the base's and every
   model's values there in their own dtype (~7 % of a 7B layer's elements with 3 models,
   10 bytes each in bf16). A block claims its records' place with one atomic on a counter.
3. One sync: the window totals (where each exact threshold lies then comes from
   select_window.window_case, as in the two-pass scheme), the records' total and the
   fullest block; select_rules.rules makes the thresholds, quotas and tie counts.
4. `_fix_up_kernel`: the apply's own arithmetic (apply.weighted_sum / merge_result) on
   the records with the exact rules, stored over the speculative results. Every key equal to a
   threshold is a record, so ties are ranked in flat order along the records as along the
   block; the output is the two-pass scheme's, bit for bit.

Traffic with 3 bf16 models (units of one tensor): 4 reads + 1 write + ~0.35 records written
and read + the fix-up's scattered stores (~0.7 of the output's sectors): ~6.4 against 9.
A window that misses, records that outgrow their memory (RECORD_SLACK times the windows'
expected share) or too small a tensor: the caller runs the two passes. Not yet run on a GPU.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import triton
import triton.language as tl

from . import select_window as sw
from . import select_rules
from .apply import merge_result, weighted_sum
from .utils import (INTERPRET_BLOCK, as_arg, block_span, interpret, launch_options, load_f32,
                    magnitude_key, store_f32)

SAMPLE_MAX = 1 << 15   # 4x the two-pass scheme's sample: 2x narrower windows, as on the CPU
RECORD_SLACK = 2.0     # record memory: this times the windows' expected share (ties need room)
SPEC_MIN = 1 << 20     # fewer elements: the two passes (their second read hits the L2)
INTERPRET_SPEC_MIN = 1 << 12
# Elements per program of the pass. Not measured yet: the sm_90 cubin of the pass with 3 bf16
# models and 8 warps takes 173 registers a thread at 2048 (one program per SM), 97 at 1024
# (two) and 62 at 512 (four) (cuobjdump, Triton 3.9); benchmarks/bench_kernels.py script
# mode sweeps it. The fix-up and the tie counts use the same blocks.
SPEC_BLOCK = 1024


@triton.jit
def _speculative_kernel(base_ptr, xs, ws, lo_ptr, hi_ptr, thr_ptr, count_ptr, slot_ptr,
                        used_ptr, first_ptr, rcount_ptr, roff_ptr, rbase_ptr, rxs, rcap,
                        out_ptr, n, nblocks, divisor, lam, CAP: tl.constexpr,
                        CONSENSUS: tl.constexpr, NORMALIZE: tl.constexpr, SCALE: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    uncertain = tl.zeros([BLOCK], dtype=tl.int32)
    for i in tl.static_range(len(xs)):
        key = magnitude_key(load_f32(xs[i], offs, mask) - b)
        lo = tl.load(lo_ptr + i)
        hi = tl.load(hi_ptr + i)
        sw.window_counts(key, mask, lo, hi, count_ptr + i * 4 * nblocks + pid, nblocks,
                         slot_ptr + (i * nblocks + pid).to(tl.int64) * CAP, CAP)
        uncertain = uncertain | (mask & (key >= lo) & (key <= hi)).to(tl.int32)
    # the apply with this pass's rules (key >= hi + 1): no tie cuts
    total = weighted_sum(b, xs, ws, offs, mask, thr_ptr, thr_ptr, thr_ptr, pid, nblocks, 1,
                         False)
    out = merge_result(b, total, xs, ws, offs, mask, thr_ptr, thr_ptr, thr_ptr, pid, nblocks,
                       divisor, lam, 1, False, CONSENSUS, NORMALIZE, SCALE)
    store_f32(out_ptr, offs, out, mask)
    # the records: their place in the record columns, then offset, base and every model
    got = tl.sum(uncertain, axis=0)
    first = tl.atomic_add(used_ptr, got)
    tl.store(first_ptr + pid, first)
    tl.store(rcount_ptr + pid, got)
    at = first.to(tl.int64) + (tl.cumsum(uncertain, axis=0) - 1)
    keep = (uncertain > 0) & (at < rcap)   # past rcap: the host sees the total and falls back
    tl.store(roff_ptr + at, (offs - pid.to(tl.int64) * BLOCK).to(tl.int16), mask=keep)
    store_f32(rbase_ptr, at, b, keep)
    for i in tl.static_range(len(xs)):
        store_f32(rxs[i], at, load_f32(xs[i], offs, mask), keep)


@triton.jit
def _fix_up_kernel(roff_ptr, rbase_ptr, rxs, first_ptr, rcount_ptr, ws, thr_ptr, quota_ptr,
                   eqb_ptr, out_ptr, nblocks, divisor, lam, TIE_CUT: tl.constexpr,
                   CONSENSUS: tl.constexpr, NORMALIZE: tl.constexpr, SCALE: tl.constexpr,
                   TILE: tl.constexpr, BLOCK: tl.constexpr):
    """Block pid's records (at most TILE) recomputed with the exact rules."""
    pid = tl.program_id(0)
    got = tl.load(rcount_ptr + pid)
    q = tl.arange(0, TILE)
    valid = q < got
    at = tl.load(first_ptr + pid).to(tl.int64) + q
    b = load_f32(rbase_ptr, at, valid)
    total = weighted_sum(b, rxs, ws, at, valid, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, 1,
                         TIE_CUT)
    out = merge_result(b, total, rxs, ws, at, valid, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks,
                       divisor, lam, 1, TIE_CUT, CONSENSUS, NORMALIZE, SCALE)
    offs = pid.to(tl.int64) * BLOCK + tl.load(roff_ptr + at, mask=valid, other=0).to(tl.int64)
    store_f32(out_ptr, offs, out, valid)


def _sizes() -> tuple[int, int]:
    """The smallest tensor the scheme takes, and its block."""
    return (INTERPRET_SPEC_MIN, INTERPRET_BLOCK) if interpret() else (SPEC_MIN, SPEC_BLOCK)


def task_arithmetic(base: torch.Tensor, xs: Sequence[torch.Tensor], weights: Sequence[float],
                    keep: Sequence[int], consensus: bool, normalize: bool, divisor: float,
                    lambda_: float, out: torch.Tensor) -> bool:
    """The merge into `out` in one read of the inputs; False (out then undefined) when the
    caller must run the two passes."""
    n, K, dev = base.numel(), len(xs), base.device
    active = [i for i, k in enumerate(keep) if 0 < k < n]
    m = sw.sample_size(n, SAMPLE_MAX)
    smallest, block = _sizes()
    if n < smallest or not active or m < sw.MIN_SAMPLE:
        return False
    nblocks = triton.cdiv(n, block)
    lo, hi, thr = sw.windows(base, xs, keep, active, m)
    cap = sw.slots_per_block(n, keep, active, block, m)
    share = sum(sw.expected_share(n, keep[i], m) for i in active)
    rcap = min(n, math.ceil(RECORD_SLACK * share * n) + block)
    counts = torch.empty((K, 4, nblocks), dtype=torch.int32, device=dev)
    slots = torch.empty((K, nblocks, cap), dtype=torch.int32, device=dev)
    used = torch.zeros(1, dtype=torch.int32, device=dev)
    first, rcount = (torch.empty(nblocks, dtype=torch.int32, device=dev) for _ in range(2))
    roff = torch.empty(rcap, dtype=torch.int16, device=dev)
    rbase = torch.empty(rcap, dtype=base.dtype, device=dev)
    rxs = [torch.empty(rcap, dtype=x.dtype, device=dev) for x in xs]
    flags = dict(CONSENSUS=bool(consensus), NORMALIZE=bool(normalize), SCALE=float(lambda_) != 1.0)
    ws = tuple(float(w) for w in weights)
    _speculative_kernel[(nblocks,)](
        as_arg(base), tuple(as_arg(x) for x in xs), ws, lo, hi, thr, counts, slots, used,
        first, rcount, roff, as_arg(rbase), tuple(as_arg(r) for r in rxs), rcap, as_arg(out), n,
        nblocks, float(divisor), float(lambda_), CAP=cap, BLOCK=block, **flags,
        **launch_options())
    records = torch.stack([used[0].to(torch.int64), rcount.amax().to(torch.int64)])
    synced = torch.cat([sw.window_stats(counts, lo, hi).reshape(-1), records]).tolist()   # sync
    total, fullest = synced[-2:]
    if total > rcap:
        return False
    stats = [synced[sw.STATS * i:sw.STATS * (i + 1)] for i in range(K)]
    cases = sw.cases_of(keep, n, stats, cap)
    if None in cases:
        return False
    if fullest == 0:
        return True
    state = sw.WindowScan(lo, hi, counts, slots, cases, sw.candidate_bits(cases, stats))
    thr, quota, eqb = select_rules.rules(state, block, n)
    _fix_up_kernel[(nblocks,)](
        roff, as_arg(rbase), tuple(as_arg(r) for r in rxs), first, rcount, ws, thr, quota,
        eqb if eqb is not None else thr, as_arg(out), nblocks, float(divisor), float(lambda_),
        TIE_CUT=eqb is not None, TILE=max(16, triton.next_power_of_2(fullest)), BLOCK=block,
        **flags, **launch_options())
    return True
