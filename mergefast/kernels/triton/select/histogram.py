"""Exact selection by histogram passes over all the keys on the GPU: what decides the models
whose sampled window missed their threshold T or whose candidates overflowed their slots (and
every model with `SelectionOptions(two_pass="histogram")`). The CPU's counterpart:
csrc/cpu/select/histogram.cpp.

A radix select over the 31-bit keys, 8 + 8 + 8 + 7 bits (`RADIX_DIGITS`): one
`_digit_hist_kernel` pass per digit over the keys that share the prefix found so far -> the
bucket of the k-th largest key and the count above it (one sync a pass); after the last digit
T and its quota r; then `_eq_count_kernel` counts T per block when r < count(key == T). The
result is stated as the window case "T at hi" with hi = T (`_settle`), for rules.py. A pass is
skipped when a whole bucket is kept.

Every pass counts in per-program `tl.histogram`s, never with per-element global atomics:
same-address atomics serialise, and fine-tune deltas crowd few keys. Measured on an H200, 7B
layer, K = 3: global atomics on the top 15 bits take 11 ms; with global atomics on the low 15
bits, 845,861 elements of each model land on ONE bin (bf16 deltas are multiples of the
weights' ulp; counted with torch on the benchmark layer) and the whole TIES call takes 3.6 ms,
against 0.23 ms for the apply pass alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ...selection import SelectionOptions
from ..utils import (
    NO_QUOTA,
    as_arg,
    block_span,
    hist_programs,
    launch_options,
    load_f32,
    magnitude_key,
    masked_histogram,
)
from .window import AT_HI, WindowScan

# (shift, width) of the radix digits of the 31-bit key, most significant first
RADIX_DIGITS = ((23, 8), (15, 8), (7, 8), (0, 7))


@triton.jit
def _digit_hist_kernel(
    base_ptr,
    xs,
    prefix_ptr,
    hist_ptr,
    n,
    nblocks,
    nprog,
    SHIFT: tl.constexpr,
    BINS: tl.constexpr,
    PREFIX_SHIFT: tl.constexpr,
    KB: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """BINS-bin histogram of the digit (key >> SHIFT) & (BINS - 1) over the keys whose
    key >> PREFIX_SHIFT equals model i's prefix (all keys when PREFIX_SHIFT == 31).

    Each of the `nprog` programs walks blocks pid, pid + nprog, ... and sums its per-block
    `tl.histogram`s in registers ([KB, BINS], one row per model), then adds them to `hist`
    once (a flush per block would send one atomic per block to each hot bin, ~22K per bin on
    a 7B layer). The loop runs over plain integers (Triton 3.6's interpreter cannot iterate from
    a program id); a block past the end is all masked."""
    pid = tl.program_id(0)
    bins = tl.arange(0, BINS)
    rows = tl.arange(0, KB)
    acc = tl.zeros([KB, BINS], dtype=tl.int32)
    for first in range(0, nblocks, nprog):
        offs = (pid + first).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        b = load_f32(base_ptr, offs, mask)
        for i in tl.static_range(len(xs)):
            key = magnitude_key(load_f32(xs[i], offs, mask) - b)
            sel = mask
            if PREFIX_SHIFT < 31:
                sel = sel & ((key >> PREFIX_SHIFT) == tl.load(prefix_ptr + i))
            counts = masked_histogram((key >> SHIFT) & (BINS - 1), sel, BINS)
            acc = acc + tl.where(rows[:, None] == i, counts[None, :], 0)
    live = (acc > 0) & (rows[:, None] < len(xs))
    tl.atomic_add(hist_ptr + rows[:, None] * BINS + bins[None, :], acc, mask=live)


@triton.jit
def _eq_count_kernel(base_ptr, xs, thr_ptr, count_ptr, n, nblocks, BLOCK: tl.constexpr):
    """count_ptr[i, block] = keys of model i equal to its threshold thr_ptr[i]."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    for i in tl.static_range(len(xs)):
        key = magnitude_key(load_f32(xs[i], offs, mask) - b)
        thr = tl.load(thr_ptr + i)
        eq = ((key == thr) & mask).to(tl.int32)
        tl.store(count_ptr + i * nblocks + pid, tl.sum(eq, axis=0))


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
    return torch.stack([chosen, above, count]).tolist()  # one device sync


def select_by_histograms(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    keep: Sequence[int],
    models: Sequence[int],
    block: int,
    state: WindowScan,
    options: SelectionOptions,
) -> None:
    """The histogram passes for `models`: settles each one's exact T in `state` (_settle)."""
    n, dev = xs[0].numel(), xs[0].device
    nblocks = triton.cdiv(n, block)
    opts = launch_options()
    b = as_arg(base)
    hist_grid = (hist_programs(dev, nblocks, options.hist_programs_per_sm),)
    cut = []
    # (model, prefix so far, still needed below the prefix), refined one radix digit a pass
    todo = [(i, 0, keep[i]) for i in models]
    for shift, width in RADIX_DIGITS:
        if not todo:
            break
        bins = 1 << width
        hist = torch.zeros((len(todo), bins), dtype=torch.int32, device=dev)
        prefixes = torch.tensor([p for _, p, _ in todo], dtype=torch.int32, device=dev)
        _digit_hist_kernel[hist_grid](
            b,
            tuple(as_arg(xs[i]) for i, _, _ in todo),
            prefixes,
            hist,
            n,
            nblocks,
            hist_grid[0],
            SHIFT=shift,
            BINS=bins,
            PREFIX_SHIFT=shift + width,
            KB=triton.next_power_of_2(len(todo)),
            BLOCK=block,
            **opts,
        )
        need = torch.tensor([r for _, _, r in todo], dtype=torch.int64, device=dev)
        digit, above, count = _first_reaching(hist, need)
        nxt = []
        for q, (i, prefix, r) in enumerate(todo):
            p = (prefix << width) | digit[q]
            rest = r - above[q]  # still needed among keys with this prefix
            if rest == count[q]:  # the whole bucket is kept
                _settle(state, i, p << shift, NO_QUOTA, None)
            elif shift > 0:
                nxt.append((i, p, rest))
            else:  # p is the exact threshold key
                cut.append((i, p, rest))
        todo = nxt
    if cut:
        counts = torch.empty((len(cut), nblocks), dtype=torch.int32, device=dev)
        thr_cut = torch.tensor([t for _, t, _ in cut], dtype=torch.int32, device=dev)
        _eq_count_kernel[(nblocks,)](
            b, tuple(as_arg(xs[i]) for i, _, _ in cut), thr_cut, counts, n, nblocks, BLOCK=block, **opts
        )
        for q, (i, t, rest) in enumerate(cut):
            _settle(state, i, t, rest, counts[q])


def _settle(state: WindowScan, i: int, t: int, quota: int, ties: torch.Tensor | None) -> None:
    """Model i's exact threshold key t as the window case "T at hi": hi = t, its quota of
    t-valued keys (NO_QUOTA: all) and their per-block counts (`ties`, needed only when the
    quota cuts them)."""
    state.hi[i] = t
    if ties is None:
        state.counts[i, 1].zero_()
    else:
        state.counts[i, 1].copy_(ties)
    state.cases[i] = (AT_HI, quota, ties is not None)
