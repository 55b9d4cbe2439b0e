"""DELLA (`della`, `della_linear`) on the GPU, as csrc/cpu/della.cpp on the CPU.

Two passes over base + K models (kernels/della.py is the host side):
  1. `_della_masks_kernel`, one program per row (the last axis), the whole row in registers:
     per model, |delta|'s key (utils.magnitude_key) with the column index below it is sorted
     (tl.sort; the keys are distinct, so the order is the reference's stable one: ties lowest
     index first, NaN above inf); at sorted position r the keep probability is
     p = pmin + (r / (cols - 1)) * span (IEEE division, as the CPU reference) and the draw u of
     the element's flat index (dare.uniform) keeps it where u < p; the keep bit goes straight
     to the element's own output slot (a 16-bit word holding the K bits), the sorted index
     giving its place: one sort per model. Per row sum |d| and sum |kept d| per model (float64)
     for the L1 rescale.
  2. `_della_apply_kernel`, per block: the words, then as dare's apply pass.
Rows longer than MAX_ROW (beyond what one program holds in registers) take the same rule in
torch ops on the device (`_masks_torch`: per-row sorts, K x cols temporaries at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ...methods.random import uniform_from_key
from .dare import _keys, uniform
from .utils import as_arg, block_size, block_span, interpret, launch_options, load_f32, magnitude_key, store_f32

# The longest row one program sorts in registers (32 warps: 32 int64 keys per thread). Triton
# compiles the masks pass per row block; for sm_90 on a 2-vCPU Intel VM: 12 s at 1024, 62 s
# at 4096, 105 s at 16384, ~6 min at this one (benchmarks/RESULTS.md, 2026-12-04).
MAX_ROW = 1 << 15
# Under TRITON_INTERPRET=1 the ranks come from pairwise compares (one numpy op per row) unless
# this is False: the interpreter runs tl.sort's bitonic network op by op, ~0.15 s per 128-element
# sort on a 2-vCPU AMD EPYC VM. The GPU always sorts (cols log^2 cols work, not cols^2).
INTERPRET_PAIRWISE = True
# Sort key of the padding lanes past a row's end: above every magnitude key (NaN's included).
_PAD_KEY = tl.constexpr(0x7FFFFFFF)


@triton.jit
def _pairwise_keep(mkey, offs, cols_idx, key, pmin, span, denom):
    """The interpreter's ranks: how many elements order before each (ROW_BLOCK^2 compares, one
    numpy op); its keep bits (int32 0/1) in index order."""
    before = (mkey[None, :] < mkey[:, None]) | (
        (mkey[None, :] == mkey[:, None]) & (cols_idx[None, :] < cols_idx[:, None])
    )
    rank = tl.sum(before.to(tl.int32), axis=1)
    p = pmin + tl.math.div_rn(rank.to(tl.float32), denom) * span
    return (uniform(key, offs) < p).to(tl.int32)


@triton.jit
def _sorted_keep(
    mkey, cols_idx, cols, row_start, key, pmin, span, denom, word_ptr, STRIDE: tl.constexpr, MODEL: tl.constexpr
):
    """Model MODEL's keep bits by one sort of (key, index): at sorted position r the element's
    p = pmin + (r / (cols - 1)) * span; bit MODEL is or-ed into the element's word where it lies
    (the positions of one model are a permutation: no two threads store to one word; a barrier
    orders the models). Returns |kept d| (float64) in sorted order, |d| read off the key."""
    ranked = tl.sort((mkey.to(tl.int64) << 32) | cols_idx.to(tl.int64))
    idx = (ranked & 0xFFFFFFFF).to(tl.int64)
    live = cols_idx < cols  # the padding sorts last
    p = pmin + tl.math.div_rn(cols_idx.to(tl.float32), denom) * span
    kept = (uniform(key, row_start + idx) < p) & live
    at = word_ptr + (row_start + idx) * STRIDE
    word = kept.to(tl.int32) << MODEL
    if MODEL > 0:
        tl.debug_barrier()  # the previous model's words, stored by other threads
        word = word | tl.load(at, mask=live, other=0).to(tl.int32)
    tl.store(at, word.to(tl.int16), mask=live)
    magnitude = (ranked >> 32).to(tl.int32).to(tl.float32, bitcast=True)  # |d|; NaN keys are NaNs
    return tl.where(kept, magnitude, 0.0).to(tl.float64)


@triton.jit
def _della_masks_kernel(
    base_ptr,
    xs,
    pmins,
    spans,
    key_ptr,
    word_ptr,
    part_ptr,
    cols,
    denom,
    STRIDE: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
    PAIRWISE: tl.constexpr,
):
    """Row `program_id`'s keep words and part[row, i] = (sum |d_i|, sum |kept d_i|) (float64)."""
    row = tl.program_id(0).to(tl.int64)
    cols_idx = tl.arange(0, ROW_BLOCK)
    valid = cols_idx < cols
    row_start = row * cols
    offs = row_start + cols_idx
    b = load_f32(base_ptr, offs, valid)
    bits = tl.zeros_like(cols_idx)
    for i in tl.static_range(len(xs)):
        key = tl.load(key_ptr + i).to(tl.uint64, bitcast=True)
        d = load_f32(xs[i], offs, valid) - b
        ad = tl.where(valid, tl.abs(d), 0.0).to(tl.float64)
        mkey = tl.where(valid, magnitude_key(d), _PAD_KEY)
        if PAIRWISE:
            kept = _pairwise_keep(mkey, offs, cols_idx, key, pmins[i], spans[i], denom)
            bits = bits | (kept << i)
            kept_ad = tl.where(kept != 0, ad, 0.0)
        else:
            kept_ad = _sorted_keep(mkey, cols_idx, cols, row_start, key, pmins[i], spans[i], denom, word_ptr, STRIDE, i)
        at = part_ptr + (row * len(xs) + i) * 2
        tl.store(at, tl.sum(ad, axis=0))
        tl.store(at + 1, tl.sum(kept_ad, axis=0))
    if PAIRWISE:
        tl.store(word_ptr + offs * STRIDE, bits.to(tl.int16), mask=valid)


@triton.jit
def _della_apply_kernel(
    base_ptr,
    xs,
    ws,
    ss,
    word_ptr,
    out_ptr,
    n,
    divisor,
    lam,
    STRIDE: tl.constexpr,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, offs, mask = block_span(n, BLOCK)
    words = tl.load(word_ptr + offs * STRIDE, mask=mask, other=0).to(tl.int32)
    b = load_f32(base_ptr, offs, mask)
    total = tl.zeros_like(b)
    for i in tl.static_range(len(xs)):
        d = load_f32(xs[i], offs, mask) - b
        total = total + (tl.where(((words >> i) & 1) != 0, d, 0.0) * ss[i]) * ws[i]
    if CONSENSUS:
        # elect the sign of the sum (0 counts as +); zero deltas never agree. The second loop
        # reloads the block (an L1/L2 hit) rather than keeping K blocks in registers.
        pos = total >= 0.0
        acc = tl.zeros_like(b)
        dacc = tl.zeros_like(b)
        for i in tl.static_range(len(xs)):
            d = load_f32(xs[i], offs, mask) - b
            wd = (tl.where(((words >> i) & 1) != 0, d, 0.0) * ss[i]) * ws[i]
            agree = tl.where(pos, wd > 0.0, wd < 0.0)
            acc = acc + tl.where(agree, wd, 0.0)
            dacc = dacc + tl.where(agree, ws[i], 0.0)
        r = acc
        if NORMALIZE:  # IEEE-rounded division, as the CPU
            r = tl.math.div_rn(r, tl.where(dacc == 0.0, 1.0, dacc))
    else:
        r = total
        if NORMALIZE:
            r = tl.math.div_rn(r, divisor)
    if SCALE:
        r = r * lam
    store_f32(out_ptr, offs, b + r, mask)


def _words(out: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The output as int16 words and the stride of element j's keep word (j * stride)."""
    return out.view(-1).view(torch.int16), out.element_size() // 2


def row_warps(row_block: int) -> int:
    """Warps of a masks program: about 512 row elements per warp (16 per thread), 4 .. 32."""
    return max(4, min(32, row_block // 512))


def della_masks(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    keys: Sequence[int],
    pmin: Sequence[float],
    span: Sequence[float],
    cols: int,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, list[float]]:
    """DELLA's first pass: a new output holding the keep words, and the L1 norms
    [sum |d_0|, sum |kept d_0|, sum |d_1|, ...] (float64)."""
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    words, stride = _words(out)
    if cols > MAX_ROW:
        return out, _masks_torch(base, xs, keys, pmin, span, cols, words, stride)
    rows, row_block = base.numel() // cols, triton.next_power_of_2(cols)
    part = torch.empty((rows, len(xs), 2), dtype=torch.float64, device=base.device)
    options = launch_options()
    if not interpret():
        options["num_warps"] = row_warps(row_block)
    _della_masks_kernel[(rows,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(p) for p in pmin),
        tuple(float(s) for s in span),
        _keys(keys, base.device),
        words,
        part,
        cols,
        float(max(cols - 1, 1)),  # rows of one element: every span is 0
        STRIDE=stride,
        ROW_BLOCK=row_block,
        PAIRWISE=interpret() and INTERPRET_PAIRWISE,
        **options,
    )
    return out, part.sum(dim=0).flatten().tolist()


def _masks_torch(base, xs, keys, pmin, span, cols, words, stride) -> list[float]:
    """The masks pass in torch ops, for rows longer than MAX_ROW: the same rule and draws."""
    dev, b = base.device, base.float().view(-1, cols)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=dev)  # noqa: E731 - the reference's scalar rounding
    packed = torch.zeros(b.shape, dtype=torch.int32, device=dev)
    sums = []
    for i, x in enumerate(xs):
        d = x.float().view(-1, cols) - b
        mkey = torch.clamp_max(d.view(torch.int32) & 0x7FFFFFFF, 0x7F800001)
        order = torch.sort(mkey, dim=-1, stable=True).indices
        ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(cols, device=dev).expand_as(order))
        p = f32(pmin[i]) + (ranks.float() / f32(float(cols - 1))) * f32(span[i])
        kept = uniform_from_key(keys[i], d.numel(), device=dev).view(d.shape) < p
        packed |= kept.to(torch.int32) << i
        sums += [d.abs().double().sum().item(), torch.where(kept, d.abs(), 0.0).double().sum().item()]
    words[::stride] = packed.view(-1).to(torch.int16)
    return sums


def della_apply(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    scales: Sequence[float],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """DELLA's apply pass into `out` (which holds della_masks' keep words); returns `out`."""
    n, block = base.numel(), block_size()
    words, stride = _words(out)
    _della_apply_kernel[(triton.cdiv(n, block),)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(w) for w in weights),
        tuple(float(s) for s in scales),
        words,
        as_arg(out),
        n,
        float(divisor),
        float(lambda_),
        STRIDE=stride,
        CONSENSUS=bool(consensus),
        NORMALIZE=bool(normalize),
        SCALE=float(lambda_) != 1.0,
        BLOCK=block,
        **launch_options(),
    )
    return out
