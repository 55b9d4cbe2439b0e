"""The sampled window of the selection on the GPU: the CPU's scheme (csrc/cpu/select/window.cpp)
with one counting pass and no atomics.

1. A stratified sample of up to `SAMPLE_MAX` keys per model (`windows`: a gather kernel, a
   sort, an ends kernel) predicts an interval (lo, hi) that should hold the threshold key T:
   the sample's keys `WINDOW_SIGMAS` standard deviations of rank above and below the rank
   where T is expected.
2. `_window_scan_kernel`, one pass over base and the models, writes per block the counts of
   keys above hi, equal to hi, equal to lo (when lo < hi) and strictly inside (lo, hi), and
   packs the inside keys, in flat order, into the block's own `cap` slots (the slots past
   the block's count hold garbage). A block's candidates have a fixed place: no atomics.
3. One sync for the totals: where T lies (`case_of`: at hi, at lo or the rank-th largest
   candidate). rules.rules turns the cases into thresholds, quotas and tie counts on the
   device.

A model whose T lies outside its window, or whose candidates overflow a block's slots, is
left to the histogram passes (histogram.py). The one-read pass (one_read.py) calls
`window_counts` in its own kernel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

from ..utils import KEEP_NONE, NO_QUOTA, as_arg, block_span, launch_options, load_f32, magnitude_key

SAMPLE_MAX = 1 << 13  # sampled keys per model, as on the CPU
WINDOW_SIGMAS = 3.0  # half-width of the window in standard deviations of the sample's rank
MIN_SAMPLE = 64  # fewer sampled keys (n < 1024) predict nothing: histogram passes only
SLOT_SLACK = 1.5  # slots per block: this times the window's expected share, rounded up
NO_HI = 0x7FFFFFFF  # hi when the window is open above (no key is greater)
SAMPLE_BLOCK = 1024  # sampled keys per program of _sample_keys_kernel
_NO_HI = tl.constexpr(NO_HI)
_KEEP_NONE = tl.constexpr(KEEP_NONE)
# Where a model's threshold T lies after a window scan (case_of; rules.py reads them).
KEEP_ALL, KEEP_NOTHING, AT_HI, AT_LO, CANDIDATE = range(5)
STATS = 7  # window_stats' columns


@triton.jit
def window_counts(key, mask, lo, hi, counts, nblocks, own, CAP: tl.constexpr):
    """For one block of one model's keys: counts[0, 1, 2, 3 x nblocks] = keys > hi, == hi,
    == lo (when lo < hi), inside (lo, hi); own[0:CAP] = the inside keys in flat order (those
    past CAP are dropped: the count tells). The slots past the count are left as they were:
    their readers mask them with the count (filling them would be ~16 MB of writes on the
    benchmark 7B layer's one-read pass, where most slots stay empty)."""
    tl.store(counts, tl.sum((mask & (key > hi)).to(tl.int32), axis=0))
    tl.store(counts + nblocks, tl.sum((mask & (key == hi)).to(tl.int32), axis=0))
    tl.store(counts + 2 * nblocks, tl.sum((mask & (key == lo) & (lo < hi)).to(tl.int32), axis=0))
    inside = (mask & (key > lo) & (key < hi)).to(tl.int32)
    got = tl.sum(inside, axis=0)
    tl.store(counts + 3 * nblocks, got)
    pos = tl.cumsum(inside, axis=0) - 1
    tl.store(own + pos, key, mask=(inside > 0) & (pos < CAP))


@triton.jit
def _window_scan_kernel(
    base_ptr,
    xs,
    lo_ptr,
    hi_ptr,
    count_ptr,
    slot_ptr,
    n,
    nblocks,
    ACTIVE: tl.constexpr,
    CAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per block and model i with bit i of ACTIVE set: window_counts into
    count_ptr[i, 0..3, block] and slot_ptr[i, block, :] (the others are not read)."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    for i in tl.static_range(len(xs)):
        if (ACTIVE >> i) & 1:
            key = magnitude_key(load_f32(xs[i], offs, mask) - b)
            window_counts(
                key,
                mask,
                tl.load(lo_ptr + i),
                tl.load(hi_ptr + i),
                count_ptr + i * 4 * nblocks + pid,
                nblocks,
                slot_ptr + (i * nblocks + pid).to(tl.int64) * CAP,
                CAP,
            )


@functools.lru_cache(maxsize=64)
def sample_positions(n: int, m: int, device: torch.device) -> torch.Tensor:
    """Sample q: the element of stratum q (n // m elements) that splitmix64 of q picks, as on
    the CPU (a plain stride samples the same columns of every row). An int64 tensor on
    `device`, cached: a copy from pageable memory per call would wait for the GPU."""
    stride = n // m
    q = np.arange(m, dtype=np.uint64)
    z = (q + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    offset = (z % np.uint64(stride)).astype(np.int64)
    return torch.from_numpy(np.arange(m, dtype=np.int64) * stride + offset).to(device)


def sample_size(n: int, most: int = SAMPLE_MAX) -> int:
    """Keys sampled per model from n: one per 16 elements, at most `most`."""
    return min(most, n // 16)


def _margin(m: int, keep: int, n: int) -> float:
    p = keep / n
    return WINDOW_SIGMAS * math.sqrt(m * p * (1.0 - p)) + 2.0


def expected_share(n: int, keep: int, m: int) -> float:
    """The share of n keys a window predicted from m sampled keys is expected to hold
    (without ties at its ends)."""
    return min(1.0, 2 * _margin(m, keep, n) / m)


def window_ranks(keep: int, n: int, m: int) -> tuple[int, int]:
    """Where hi and lo sit among m sampled keys sorted from the largest (0-based): WINDOW_SIGMAS
    standard deviations of rank above and below where the keep-th largest of n is expected;
    hi is open (NO_HI) when its rank is < 0, lo is 0 when its rank is >= m."""
    return (math.floor(keep / n * m - _margin(m, keep, n)), math.ceil(keep / n * m + _margin(m, keep, n)))


@triton.jit
def _sample_keys_kernel(base_ptr, xs, pos_ptr, keys_ptr, m, BLOCK: tl.constexpr):
    """keys_ptr[a, q] = the key of model a at the sampled element pos_ptr[q]."""
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = q < m
    pos = tl.load(pos_ptr + q, mask=mask, other=0)
    b = load_f32(base_ptr, pos, mask)
    for a in tl.static_range(len(xs)):
        tl.store(keys_ptr + a * m + q, magnitude_key(load_f32(xs[a], pos, mask) - b), mask=mask)


@triton.jit
def _ends_kernel(ranked_ptr, m, rows, tops_hi, tops_lo, lo_ptr, hi_ptr, thr_ptr):
    """Per model i: lo, hi of its window and the pass's threshold (hi + 1). rows[i]: its row
    in `ranked` (the sample sorted from the largest key), or -1 keep all, -2 keep none (a
    window nothing is in); tops_hi/lo[i]: the ranks of hi and lo (window_ranks). Floats:
    exact below 2^24, and Triton does not specialise float arguments."""
    for i in tl.static_range(len(rows)):
        row = tl.cast(rows[i], tl.int32)
        top_hi = tl.cast(tops_hi[i], tl.int32)
        top_lo = tl.cast(tops_lo[i], tl.int32)
        at = tl.maximum(row, 0) * m
        hi = tl.load(ranked_ptr + at + tl.minimum(tl.maximum(top_hi, 0), m - 1))
        lo = tl.load(ranked_ptr + at + tl.minimum(tl.maximum(top_lo, 0), m - 1))
        hi = tl.where(top_hi >= 0, hi, _NO_HI)
        lo = tl.where(top_lo < m, lo, 0)
        thr = tl.where(row == -1, 0, tl.where(row == -2, _KEEP_NONE, hi.to(tl.int64) + 1))
        tl.store(lo_ptr + i, tl.where(row >= 0, lo, _NO_HI))
        tl.store(hi_ptr + i, tl.where(row >= 0, hi, 0))
        tl.store(thr_ptr + i, thr)


def windows(base: torch.Tensor, xs: Sequence[torch.Tensor], keep: Sequence[int], active: Sequence[int], m: int):
    """lo, hi (int32 [K]) of every model's window on the device, and the one-read pass's
    thresholds (int64 [K]: hi + 1): for the models of `active` predicted from m sampled keys
    (window_ranks) in three launches; for the others a window nothing is in and keep-all or
    keep-none."""
    n, K, dev = xs[0].numel(), len(xs), xs[0].device
    pos = sample_positions(n, m, dev)
    keys = torch.empty((len(active), m), dtype=torch.int32, device=dev)
    _sample_keys_kernel[(triton.cdiv(m, SAMPLE_BLOCK),)](
        as_arg(base), tuple(as_arg(xs[i]) for i in active), pos, keys, m, BLOCK=SAMPLE_BLOCK
    )
    ranked = keys.sort(dim=1, descending=True).values
    rows, tops_hi, tops_lo = [], [], []
    for i, k in enumerate(keep):
        top_hi, top_lo = window_ranks(k, n, m) if i in active else (0, 0)
        rows.append(float(active.index(i)) if i in active else -1.0 if k >= n else -2.0)
        tops_hi.append(float(top_hi))
        tops_lo.append(float(top_lo))
    lo, hi = (torch.empty(K, dtype=torch.int32, device=dev) for _ in range(2))
    thr = torch.empty(K, dtype=torch.int64, device=dev)
    _ends_kernel[(1,)](ranked, m, tuple(rows), tuple(tops_hi), tuple(tops_lo), lo, hi, thr)
    return lo, hi, thr


def slots_per_block(n: int, keep: Sequence[int], models: Sequence[int], block: int, m: int | None = None) -> int:
    """Candidate slots of a block: SLOT_SLACK times the widest window's expected share of a
    block, a power of two (the kernel's tile) between 16 and the block."""
    m = m or sample_size(n)
    share = max(expected_share(n, keep[i], m) for i in models)
    return max(16, min(block, triton.next_power_of_2(math.ceil(SLOT_SLACK * share * block))))


class WindowScan(NamedTuple):
    """A selection's state after its one sync, every model's row (rules.rules' input):
    lo, hi int32 [K]; counts int32 [K, 4, nblocks]; slots int32 [K, nblocks, cap]; cases[i]
    model i's case_of, None while its T is unknown (its window missed, its slots overflowed,
    or it was not scanned); bits: candidate_bits."""

    lo: torch.Tensor
    hi: torch.Tensor
    counts: torch.Tensor
    slots: torch.Tensor
    cases: list
    bits: int


def scan(
    base: torch.Tensor, xs: Sequence[torch.Tensor], keep: Sequence[int], active: Sequence[int], block: int
) -> WindowScan:
    """The window scan of the models of `active` (those with 0 < keep < n); unscanned()
    when the tensor is too small to sample."""
    n, K, dev = xs[0].numel(), len(xs), xs[0].device
    m = sample_size(n)
    if m < MIN_SAMPLE or not active:
        return unscanned(n, keep, block, dev)
    nblocks = triton.cdiv(n, block)
    lo, hi, _ = windows(base, xs, keep, active, m)
    cap = slots_per_block(n, keep, active, block, m)
    counts = torch.empty((K, 4, nblocks), dtype=torch.int32, device=dev)
    slots = torch.empty((K, nblocks, cap), dtype=torch.int32, device=dev)
    _window_scan_kernel[(nblocks,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        lo,
        hi,
        counts,
        slots,
        n,
        nblocks,
        ACTIVE=sum(1 << i for i in active),
        CAP=cap,
        BLOCK=block,
        **launch_options(),
    )
    stats = window_stats(counts, lo, hi).tolist()  # the one sync
    cases = cases_of(keep, n, stats, cap)
    return WindowScan(lo, hi, counts, slots, cases, candidate_bits(cases, stats))


def unscanned(n: int, keep: Sequence[int], block: int, device: torch.device) -> WindowScan:
    """The state without a window scan: zero windows and counts, no slots; cases only for
    the models keeping all or nothing."""
    K, nblocks = len(keep), triton.cdiv(n, block)
    lo, hi = (torch.zeros(K, dtype=torch.int32, device=device) for _ in range(2))
    counts = torch.zeros((K, 4, nblocks), dtype=torch.int32, device=device)
    slots = torch.empty((K, 1, 16), dtype=torch.int32, device=device)  # read by no case
    return WindowScan(lo, hi, counts, slots, [case_of(k, n, None, 16) for k in keep], 0)


def window_stats(counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per model row of counts [models, 4, nblocks]: the four totals, the fullest block's
    candidates, lo and hi (int64 [models, STATS], on the device)."""
    totals = counts.sum(2, dtype=torch.int64)
    ends = torch.stack([lo, hi], 1).to(torch.int64)
    return torch.cat([totals, counts[:, 3].amax(1).to(torch.int64)[:, None], ends], 1)


def window_case(k: int, stats: Sequence[int], cap: int):
    """(case, aux, ties cut) for a model keeping 0 < k < n keys, from its window_stats row:
    AT_HI / AT_LO with aux its quota of T-valued keys (NO_QUOTA when all are kept, then no
    cut), or CANDIDATE with aux the rank of T among the candidates; None when T is outside
    the window or the slots overflowed."""
    above, eq_hi, eq_lo, inside, most = stats[:5]
    r = k - above  # still needed at or below hi
    if most > cap or r <= 0:
        return None
    if r <= eq_hi:
        return (AT_HI, r, True) if r < eq_hi else (AT_HI, NO_QUOTA, False)
    if r - eq_hi <= inside:
        return CANDIDATE, r - eq_hi, True
    rest = r - eq_hi - inside
    if rest <= eq_lo:
        return (AT_LO, rest, True) if rest < eq_lo else (AT_LO, NO_QUOTA, False)
    return None


def case_of(k: int, n: int, stats: Sequence[int] | None, cap: int):
    """window_case, and KEEP_ALL / KEEP_NOTHING for a model keeping all or nothing (None:
    T is unknown, also when there are no stats)."""
    if k <= 0:
        return KEEP_NOTHING, 0, False
    if k >= n:
        return KEEP_ALL, 0, False
    return window_case(k, stats, cap) if stats is not None else None


def candidate_bits(cases: list, stats: Sequence[Sequence[int]]) -> int:
    """The widest offset key - lo - 1 of the CANDIDATE models' candidates, in bits (each
    lies strictly between lo and hi, the last two columns of its window_stats row)."""
    spans = [stats[i][6] - stats[i][5] - 2 for i, c in enumerate(cases) if c is not None and c[0] == CANDIDATE]
    return max((max(1, span.bit_length()) for span in spans), default=0)


def cases_of(keep: Sequence[int], n: int, stats: Sequence[Sequence[int]], cap: int) -> list:
    """case_of for every model, from its row of window_stats."""
    return [case_of(k, n, stats[i], cap) for i, k in enumerate(keep)]
