"""DELLA's masks pass on the GPU: each row's keep bits from rank bounds, with no sort (the
CPU's way, csrc/cpu/della_keep.h). kernels/triton/della.py is the host side.

The rule (methods/task_arithmetic.py, della_mask): at rank r of |delta| in its row (ascending,
ties lowest column first, NaN above inf: the integer order of magnitude_key, then the
column) the keep probability is p(r) = pmin + (r / (cols - 1)) * span in float32, and the
element is kept where its counter-based draw u < p(r). Each of p's operations rounds
monotonically, so an element whose rank lies in [lo, hi] is kept where u < min(p(lo), p(hi))
and dropped where u >= max(p(lo), p(hi)), whatever its exact rank. A persistent grid; each
program takes whole rows, per model, in chunks of CHUNK columns:
  1. the row's largest key (a model of span 0, p = pmin, skips 1, 2 and 4);
  2. a histogram of the keys' buckets: bucket 0 holds the zeros, buckets 1.. the keys' top
     bits (128 a binade, SHIFT) over the binades below the row's largest key, smaller keys in
     bucket 1; its prefix sums give each bucket's rank range;
  3. per element: a zero delta is dropped (kept or not, it adds nothing to the output, the
     sign election or the norms: so a frozen tensor's rows need no ranks); any other's draw
     against p at its bucket's two ends decides it, or leaves it open (a bucket of s elements
     leaves ~s * s * 2 |epsilon| / cols open); the keep bit is or-ed into the element's
     16-bit word (its own output slot), the open elements' columns are listed in the
     program's scratch; sum |d| (float64, for the L1 rescale);
  4. each open element's exact rank by compares over the row's chunks, G at a time.
A row with more than OPEN_CAP open elements (keys on a coarse grid: buckets of many ties) is
flagged; the host ranks those rows by sorting (della.py, masks_torch). Triton compiles this
once per CHUNK (at most 1024 columns) whatever the row length: no per-row-length sort.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .dare import uniform
from .utils import load_f32, magnitude_key, masked_histogram

# Buckets: 0 for the zeros, NB - 1 over the key's top bits (key >> SHIFT: the exponent and 7
# significand bits, 128 a binade), ~8 binades below the row's largest key.
NB = tl.constexpr(1024)
SHIFT = tl.constexpr(16)
# Open elements ranked per group (a G x CHUNK compare at a time).
G = tl.constexpr(16)


@triton.jit
def _keep_p(rank, pmin, span, denom):
    """p(rank) in the reference's float32 operations and order (IEEE division)."""
    return pmin + tl.math.div_rn(rank.to(tl.float32), denom) * span


@triton.jit
def _chunk(base_ptr, x_ptr, row_start, c0, cols, CHUNK: tl.constexpr):
    """Columns c0.. of the row: their indices, which are < cols, flat offsets, deltas, keys."""
    cidx = c0 + tl.arange(0, CHUNK)
    valid = cidx < cols
    offs = row_start + cidx
    d = load_f32(x_ptr, offs, valid) - load_f32(base_ptr, offs, valid)
    return cidx, valid, offs, d, magnitude_key(d)


@triton.jit
def _bucket(k, lo, SHIFT: tl.constexpr, NB: tl.constexpr):
    """Bucket of key k (monotone in k): 0 for zero, else 1 + (k >> SHIFT) - lo within [1, NB)."""
    q = (k >> SHIFT) - lo + 1
    return tl.where(k == 0, 0, tl.minimum(tl.maximum(q, 1), NB - 1))


@triton.jit
def _row_max(base_ptr, x_ptr, row_start, cols, CHUNK: tl.constexpr):
    """The row's largest key."""
    kmax = tl.full([], 0, tl.int32)
    for c0 in range(0, cols, CHUNK):
        _, valid, _, _, k = _chunk(base_ptr, x_ptr, row_start, c0, cols, CHUNK)
        kmax = tl.maximum(kmax, tl.max(tl.where(valid, k, 0), axis=0))
    return kmax


@triton.jit
def _bucket_p(base_ptr, x_ptr, row_start, cols, pmin, span, denom, CHUNK: tl.constexpr):
    """The bucket window's start (lo) and min and max of p over each bucket's rank range
    [first, first + count] (both ends); -1 for bucket 0 (the zeros)."""
    lo = tl.maximum((_row_max(base_ptr, x_ptr, row_start, cols, CHUNK) >> SHIFT) - (NB - 2), 0)
    hist = tl.zeros([NB], tl.int32)
    for c0 in range(0, cols, CHUNK):
        _, valid, _, _, k = _chunk(base_ptr, x_ptr, row_start, c0, cols, CHUNK)
        hist += masked_histogram(_bucket(k, lo, SHIFT, NB), valid, NB)
    first = tl.cumsum(hist, axis=0) - hist
    p_first = _keep_p(first, pmin, span, denom)
    p_next = _keep_p(first + hist, pmin, span, denom)
    zeros = tl.arange(0, NB) == 0  # never kept nor open: every draw u >= 0
    return lo, tl.where(zeros, -1.0, tl.minimum(p_first, p_next)), tl.where(zeros, -1.0, tl.maximum(p_first, p_next))


@triton.jit
def _decide(
    base_ptr, x_ptr, key, row_start, cols, lo, pmin, span, denom, p_low, p_high, word_ptr, open_ptr,
    STRIDE: tl.constexpr, MODEL: tl.constexpr, CHUNK: tl.constexpr, OPEN_CAP: tl.constexpr,
):  # fmt: skip
    """Step 3: the decided keep bits or-ed into the words, the open columns listed at open_ptr
    (up to OPEN_CAP); returns how many are open, sum |d| and the decided sum |kept d| (float64)."""
    total = tl.full([], 0.0, tl.float64)
    m = tl.full([], 0, tl.int32)
    kept_sum = tl.full([], 0.0, tl.float64)
    for c0 in range(0, cols, CHUNK):
        cidx, valid, offs, d, k = _chunk(base_ptr, x_ptr, row_start, c0, cols, CHUNK)
        b = _bucket(k, lo, SHIFT, NB)
        u = uniform(key, offs)
        keep = (u < tl.gather(p_low, b, 0)) & valid
        is_open = valid & ~keep & (u < tl.gather(p_high, b, 0))
        o32 = is_open.to(tl.int32)
        at = m + tl.cumsum(o32, axis=0) - 1
        tl.store(open_ptr + at, cidx, mask=is_open & (at < OPEN_CAP))
        m += tl.sum(o32, axis=0)
        word = keep.to(tl.int32) << MODEL
        if MODEL > 0:
            word = word | tl.load(word_ptr + offs * STRIDE, mask=valid, other=0).to(tl.int32)
        tl.store(word_ptr + offs * STRIDE, word.to(tl.int16), mask=valid)
        total += tl.sum(tl.where(valid, tl.abs(d), 0.0).to(tl.float64), axis=0)
        kept_sum += tl.sum(tl.where(keep, tl.abs(d), 0.0).to(tl.float64), axis=0)
    return m, total, kept_sum


@triton.jit
def _resolve_open(
    base_ptr, x_ptr, key, row_start, cols, m, pmin, span, denom, word_ptr, open_ptr,
    STRIDE: tl.constexpr, MODEL: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Step 4: the m open columns' exact ranks (smaller keys, then equal keys at smaller
    columns) and keep bits, or-ed into their words; returns their sum |kept d| (float64)."""
    kept_sum = tl.full([], 0.0, tl.float64)
    for g0 in range(0, m, G):
        live = g0 + tl.arange(0, G) < m
        gc = tl.load(open_ptr + g0 + tl.arange(0, G), mask=live, other=0)
        goffs = row_start + gc
        gd = load_f32(x_ptr, goffs, live) - load_f32(base_ptr, goffs, live)
        gk = magnitude_key(gd)
        rank = tl.zeros([G], tl.int32)
        for c0 in range(0, cols, CHUNK):
            cidx, valid, _, _, k = _chunk(base_ptr, x_ptr, row_start, c0, cols, CHUNK)
            before = (k[None, :] < gk[:, None]) | ((k[None, :] == gk[:, None]) & (cidx[None, :] < gc[:, None]))
            rank += tl.sum((before & valid[None, :]).to(tl.int32), axis=1)
        keep = (uniform(key, goffs) < _keep_p(rank, pmin, span, denom)) & live
        word = tl.load(word_ptr + goffs * STRIDE, mask=live, other=0).to(tl.int32) | (keep.to(tl.int32) << MODEL)
        tl.store(word_ptr + goffs * STRIDE, word.to(tl.int16), mask=live)
        kept_sum += tl.sum(tl.where(keep, tl.abs(gd), 0.0).to(tl.float64), axis=0)
    return kept_sum


@triton.jit
def _della_masks_kernel(
    base_ptr, xs, pmins, spans, key_ptr, word_ptr, part_ptr, open_ptr, flag_ptr, rows, cols, denom,
    STRIDE: tl.constexpr, CHUNK: tl.constexpr, OPEN_CAP: tl.constexpr,
):  # fmt: skip
    """Rows pid, pid + programs, ...: their keep words, part[row, i] = (sum |d_i|, sum |kept
    d_i|) (float64), and flag[row] = 1 where a model left more than OPEN_CAP open."""
    pid = tl.program_id(0)
    scratch = open_ptr + pid.to(tl.int64) * OPEN_CAP
    row = pid.to(tl.int64)
    while row < rows:
        row_start = row * cols
        for i in tl.static_range(len(xs)):
            key = tl.load(key_ptr + i).to(tl.uint64, bitcast=True)
            # a model without ranks (span 0: p = pmin) decides every element by its draw
            lo = tl.full([], 0, tl.int32)
            p_low = tl.where(tl.arange(0, NB) == 0, -1.0, pmins[i])  # zeros: never kept
            p_high = p_low
            if spans[i] != 0.0:
                lo, p_low, p_high = _bucket_p(base_ptr, xs[i], row_start, cols, pmins[i], spans[i], denom, CHUNK)
            tl.debug_barrier()  # the words and scratch of the previous model (or row), by other threads
            m, total, kept_sum = _decide(
                base_ptr, xs[i], key, row_start, cols, lo, pmins[i], spans[i], denom, p_low, p_high, word_ptr,
                scratch, STRIDE, i, CHUNK, OPEN_CAP,
            )  # fmt: skip
            tl.debug_barrier()  # the open list and words, stored by other threads
            if m > OPEN_CAP:
                tl.store(flag_ptr + row, 1)
            else:
                kept_sum += _resolve_open(
                    base_ptr, xs[i], key, row_start, cols, m, pmins[i], spans[i], denom, word_ptr, scratch,
                    STRIDE, i, CHUNK,
                )  # fmt: skip
            at = part_ptr + (row * len(xs) + i) * 2
            tl.store(at, total)
            tl.store(at + 1, kept_sum)
        row += tl.num_programs(0)
