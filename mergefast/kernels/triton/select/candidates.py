"""The threshold of a model whose T is one of its window's candidates: the aux-th largest key
in its candidate slots (window.window_counts: per block its first counts[i, 3, block]),
found on the device without a sync (the CPU's counterpart: csrc/cpu/select/candidates.cpp).

A radix select over the slots: the keys' offsets u = key - lo - 1 (the candidates lie
strictly between lo and hi, so u < hi - lo - 1: 20 bits for the benchmark 7B layer's),
`DIGIT_BITS` bits a pass from the top. `_slot_hist_kernel` counts the digit of the slots
whose higher digits equal the prefix found so far, in per-program `tl.histogram`s (flushed
once per program: bf16 deltas crowd few keys, and same-address atomics serialise);
`_slot_pick_kernel` then finds the bin where the count from the top reaches the rank still
needed, on the device, so that the next pass needs no sync. All CANDIDATE models go through
the same launches: 2 a pass.

Why not torch.topk(slots, aux): aux is large. On the benchmark 7B layer (3 bf16 models,
density 0.5) the two passes' windows (8192 sampled keys) hold 1.1-1.45M candidates per model
and T is the 524K-871K-th of them (counted with torch on the CPU); a CUDA topk of that size is
a multi-kernel radix select of its own per model, then a sort when asked for sorted values.
(The one read's narrower windows put T at hi or lo there: it is one key shared by 845,861
elements.) `SelectionOptions(candidates="topk")` takes that way, for the GPU sweep of
benchmarks/bench_kernels.py to compare.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...selection import SelectionOptions
from ..utils import hist_programs, masked_histogram
from . import window as sw

# 2048 bins, so that two passes cover the 20-bit offsets of the benchmark layer's windows
# (the pass's sm_90 cubin: 32 registers a thread, no spills, Triton 3.9); 1024 slots per step
# of a histogram program.
DIGIT_BITS = 11
SLOT_TILE = 1024
_CANDIDATE = tl.constexpr(sw.CANDIDATE)


@triton.jit
def _slot_hist_kernel(
    cases_ptr,
    lo_ptr,
    prefix_ptr,
    count_ptr,
    slot_ptr,
    hist_ptr,
    nblocks,
    ntiles,
    nprog,
    SHIFT: tl.constexpr,
    PREFIX_SHIFT: tl.constexpr,
    BINS: tl.constexpr,
    CAP: tl.constexpr,
    TILE: tl.constexpr,
):
    """hist[i, :] += the histogram of the digit (u >> SHIFT) & (BINS - 1) over the candidate
    slots of model i = program_id(1) (a block's first counts[i, 3, block]) whose
    u >> PREFIX_SHIFT is its prefix (all of them when PREFIX_SHIFT >= 31); nothing for a
    model that is not a CANDIDATE."""
    pid = tl.program_id(0)
    i = tl.program_id(1)
    on = tl.load(cases_ptr + 2 * i) == _CANDIDATE
    lo = tl.load(lo_ptr + i)
    prefix = tl.load(prefix_ptr + i)
    acc = tl.zeros([BINS], dtype=tl.int32)
    nslots = tl.cast(nblocks, tl.int64) * CAP  # an int, not a tensor, when a launch specialises it to 1
    row = slot_ptr + i.to(tl.int64) * nslots
    for first in range(0, ntiles, nprog):  # plain bounds: Triton 3.6's interpreter
        offs = (pid + first).to(tl.int64) * TILE + tl.arange(0, TILE)
        live = tl.where(on, offs < nslots, False)
        got = tl.load(count_ptr + (4 * i + 3) * nblocks + offs // CAP, mask=live, other=0)
        sel = live & (offs % CAP < got)  # past a block's count: garbage
        key = tl.load(row + offs, mask=sel, other=0)
        u = key - lo - 1
        if PREFIX_SHIFT < 31:
            sel = sel & ((u >> PREFIX_SHIFT) == prefix)
        acc += masked_histogram((u >> SHIFT) & (BINS - 1), sel, BINS)
    bins = tl.arange(0, BINS)
    tl.atomic_add(hist_ptr + i * BINS + bins, acc, mask=acc > 0)


@triton.jit
def _slot_pick_kernel(
    cases_ptr, lo_ptr, prefix_ptr, need_ptr, hist_ptr, tval_ptr, BITS: tl.constexpr, LAST: tl.constexpr
):
    """For a CANDIDATE model i = program_id(0): the bin of hist[i] where the count from the
    top reaches need[i] becomes prefix[i]'s next digit and need[i] loses the count above it;
    after the last pass tval[i] = lo + 1 + prefix, its threshold key."""
    i = tl.program_id(0)
    on = tl.load(cases_ptr + 2 * i) == _CANDIDATE
    BINS: tl.constexpr = 1 << BITS
    down = tl.arange(0, BINS)  # bins from the top
    h = tl.load(hist_ptr + i * BINS + (BINS - 1 - down)).to(tl.int64)
    need = tl.load(need_ptr + i)
    at = tl.minimum(tl.sum((tl.cumsum(h, axis=0) < need).to(tl.int32), axis=0), BINS - 1)
    above = tl.sum(tl.where(down < at, h, 0), axis=0)
    prefix = (tl.load(prefix_ptr + i) << BITS) | (BINS - 1 - at)
    tl.store(prefix_ptr + i, prefix, mask=on)
    tl.store(need_ptr + i, need - above, mask=on)
    if LAST:
        tl.store(tval_ptr + i, tl.load(lo_ptr + i).to(tl.int64) + 1 + prefix, mask=on)


def thresholds(case_t: torch.Tensor, state: sw.WindowScan, options: SelectionOptions) -> torch.Tensor:
    """tval (int64 [K] on the device): each CANDIDATE model's threshold key (the others'
    entries are undefined). case_t: rules.py's device copy, [case, aux] per model, then
    K prefixes (0) and K ranks still needed (aux), which the passes update. options.candidates
    picks the way: the radix select here, or torch.topk."""
    K, dev = len(state.cases), state.lo.device
    tval = torch.empty(K, dtype=torch.int64, device=dev)
    nblocks, cap = state.slots.shape[1:]
    if options.candidates == "topk":
        for i, (case, aux, _) in enumerate(state.cases):
            if case == sw.CANDIDATE:  # the slots past each block's count as 0, below all
                used = torch.arange(cap, device=dev) < state.counts[i, 3, :, None]
                kept = torch.where(used, state.slots[i], 0).reshape(-1)
                tval[i] = torch.topk(kept, aux, sorted=False).values.min()
        return tval
    passes = triton.cdiv(state.bits, DIGIT_BITS)  # 0: no CANDIDATE model
    if passes == 0:
        return tval
    ntiles = triton.cdiv(nblocks * cap, SLOT_TILE)
    nprog = hist_programs(dev, ntiles, options.hist_programs_per_sm)
    hist = torch.zeros((passes, K, 1 << DIGIT_BITS), dtype=torch.int32, device=dev)
    prefix, need = case_t[2 * K : 3 * K], case_t[3 * K :]
    for p in range(passes):
        shift = DIGIT_BITS * (passes - 1 - p)
        _slot_hist_kernel[(nprog, K)](
            case_t,
            state.lo,
            prefix,
            state.counts,
            state.slots,
            hist[p],
            nblocks,
            ntiles,
            nprog,
            SHIFT=shift,
            PREFIX_SHIFT=shift + DIGIT_BITS,
            BINS=1 << DIGIT_BITS,
            CAP=cap,
            TILE=SLOT_TILE,
        )
        _slot_pick_kernel[(K,)](case_t, state.lo, prefix, need, hist[p], tval, BITS=DIGIT_BITS, LAST=p == passes - 1)
    return tval
