"""arcee_fusion on the GPU, as csrc/cpu/arcee_fusion.cpp on the CPU; the host side is
kernels/arcee_fusion.py.

Passes over base + other:
  1. `_kl_kernel`, one program per row: both maxima, the float64 sums of e^(v - max), then
     KL = sum p log(p / q) (p = e^(x - mx) / sx + 1e-8, q likewise of the base) in float64,
     rounded once to float32: three sweeps over the row (in L2 for rows of a 7B layer);
  2. a radix select of the three ranks of the importance |x - b| * KL over its float32 order
     keys (torch.kthvalue's order: every NaN above +inf), 8 bits a pass
     (`_digit_hist_kernel`: per-program `tl.histogram`s, one flush per program, as
     select/histogram.py), the three ranks in the same passes; no importance tensor;
  3. `_apply_kernel`: out = b + (importance >= threshold ? x - b : 0), rounded once.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..selection import DEFAULT
from .utils import as_arg, block_size, block_span, hist_programs, launch_options, load_f32, masked_histogram, store_f32

RADIX_DIGITS = ((24, 8), (16, 8), (8, 8), (0, 8))  # (shift, width) of the 32-bit key, top first
NAN_KEY = 0xFFFFFFFF


@triton.jit
def _kl_kernel(base_ptr, x_ptr, kl_ptr, cols, BLOCK: tl.constexpr):
    """kl[row] = KL(softmax(x) + 1e-8 || softmax(b) + 1e-8) of this program's row, float64."""
    row = tl.program_id(0).to(tl.int64)
    start = row * cols
    mb = tl.full([BLOCK], float("-inf"), tl.float32)
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    for j in range(0, cols, BLOCK):
        at = j + tl.arange(0, BLOCK)
        mask = at < cols
        mb = tl.maximum(mb, tl.where(mask, load_f32(base_ptr, start + at, mask), float("-inf")))
        mx = tl.maximum(mx, tl.where(mask, load_f32(x_ptr, start + at, mask), float("-inf")))
    rb = tl.max(mb, axis=0).to(tl.float64)
    rx = tl.max(mx, axis=0).to(tl.float64)
    sb = tl.zeros([BLOCK], tl.float64)
    sx = tl.zeros([BLOCK], tl.float64)
    for j in range(0, cols, BLOCK):
        at = j + tl.arange(0, BLOCK)
        mask = at < cols
        sb += tl.where(mask, tl.exp(load_f32(base_ptr, start + at, mask).to(tl.float64) - rb), 0.0)
        sx += tl.where(mask, tl.exp(load_f32(x_ptr, start + at, mask).to(tl.float64) - rx), 0.0)
    ib = 1.0 / tl.sum(sb, axis=0)
    ix = 1.0 / tl.sum(sx, axis=0)
    acc = tl.zeros([BLOCK], tl.float64)
    for j in range(0, cols, BLOCK):
        at = j + tl.arange(0, BLOCK)
        mask = at < cols
        p = tl.exp(load_f32(x_ptr, start + at, mask).to(tl.float64) - rx) * ix + 1e-8
        q = tl.exp(load_f32(base_ptr, start + at, mask).to(tl.float64) - rb) * ib + 1e-8
        acc += tl.where(mask, p * tl.log(p / q), 0.0)
    tl.store(kl_ptr + row, tl.sum(acc, axis=0).to(tl.float32))


@triton.jit
def _importance(base_ptr, x_ptr, kl_ptr, offs, mask, cols):
    """|x - b| * kl[row] (float32) of the elements at offs."""
    d = load_f32(x_ptr, offs, mask) - load_f32(base_ptr, offs, mask)
    return tl.abs(d) * tl.load(kl_ptr + offs // cols, mask=mask, other=0.0)


@triton.jit
def _order_key(v):
    """The float32 order key as int64 in [0, 2^32): unsigned order == value order, -0 == +0,
    every NaN the top key."""
    u = v.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    u = tl.where(u == 0x80000000, 0, u)
    key = tl.where(u >= 0x80000000, u ^ 0xFFFFFFFF, u | 0x80000000)
    return tl.where(v != v, 0xFFFFFFFF, key)


@triton.jit
def _digit_hist_kernel(
    base_ptr, x_ptr, kl_ptr, prefix_ptr, hist_ptr, n, cols, nblocks, nprog,
    SHIFT: tl.constexpr, PREFIX_SHIFT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """hist[r, digit] += count of the keys with key >> PREFIX_SHIFT == prefix[r] (all when
    PREFIX_SHIFT == 32), digit = (key >> SHIFT) & 255, for the three ranks r; each program
    sums its blocks pid, pid + nprog, ... in registers and flushes once."""
    pid = tl.program_id(0)
    bins = tl.arange(0, 256)
    ranks = tl.arange(0, 4)
    acc = tl.zeros([4, 256], dtype=tl.int32)
    for first in range(0, nblocks, nprog):
        offs = (pid + first).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        key = _order_key(_importance(base_ptr, x_ptr, kl_ptr, offs, mask, cols))
        digit = ((key >> SHIFT) & 255).to(tl.int32)
        for r in tl.static_range(3):
            sel = mask
            if PREFIX_SHIFT < 32:
                sel = sel & ((key >> PREFIX_SHIFT) == tl.load(prefix_ptr + r))
            counts = masked_histogram(digit, sel, 256)
            acc = acc + tl.where(ranks[:, None] == r, counts[None, :], 0)
    live = (acc > 0) & (ranks[:, None] < 3)
    tl.atomic_add(hist_ptr + ranks[:, None] * 256 + bins[None, :], acc, mask=live)


@triton.jit
def _apply_kernel(base_ptr, x_ptr, kl_ptr, thr_ptr, out_ptr, n, cols, BLOCK: tl.constexpr):
    """out = b + (|x - b| * kl[row] >= threshold ? x - b : 0), rounded once."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    d = load_f32(x_ptr, offs, mask) - b
    imp = tl.abs(d) * tl.load(kl_ptr + offs // cols, mask=mask, other=0.0)
    store_f32(out_ptr, offs, b + tl.where(imp >= tl.load(thr_ptr), d, 0.0), mask)


def _key_value(key: int) -> float:
    """The float32 value of an order key (the NaN key: NaN)."""
    if key == NAN_KEY:
        return float("nan")
    bits = key & 0x7FFFFFFF if key >= 0x80000000 else key ^ 0xFFFFFFFF
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _select(b, x, kl, n: int, cols: int, ranks: Sequence[int]) -> list[float]:
    """The values of the three 0-based ascending ranks of the importance (radix select)."""
    block, opts = block_size(), launch_options()
    nblocks = triton.cdiv(n, block)
    grid = hist_programs(b.device, nblocks, DEFAULT.hist_programs_per_sm)
    prefixes, within = [0, 0, 0], list(ranks)
    for shift, width in RADIX_DIGITS:
        hist = torch.zeros((4, 256), dtype=torch.int32, device=b.device)
        pre = torch.tensor(prefixes, dtype=torch.int64, device=b.device)
        _digit_hist_kernel[(grid,)](
            b, x, kl, pre, hist, n, cols, nblocks, grid, SHIFT=shift, PREFIX_SHIFT=shift + width, BLOCK=block, **opts
        )
        cum = hist[:3].to(torch.int64).cumsum(1).tolist()  # one sync a pass
        for r in range(3):
            digit = next(i for i, c in enumerate(cum[r]) if c > within[r])
            within[r] -= cum[r][digit - 1] if digit else 0
            prefixes[r] = (prefixes[r] << width) | digit
    return [_key_value(k) for k in prefixes]


def arcee_select(base: torch.Tensor, other: torch.Tensor, rows: int, cols: int, ranks: Sequence[int], out_dtype):
    """(per-row float32 KL, the values of the three ranks of the importance, a new output tensor
    of `out_dtype` for arcee_apply), as kernels/cpu.py."""
    b, x = as_arg(base), as_arg(other)
    kl = torch.empty(rows, dtype=torch.float32, device=base.device)
    _kl_kernel[(rows,)](b, x, kl, cols, BLOCK=block_size(), **launch_options())
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    return kl, _select(b, x, kl, rows * cols, cols, ranks), out


def arcee_apply(base, other, rows: int, cols: int, kl: torch.Tensor, threshold: float, out: torch.Tensor):
    """base + (importance >= threshold ? other - base : 0) into `out`."""
    n, block = out.numel(), block_size()
    thr = torch.tensor([threshold], dtype=torch.float32, device=base.device)
    _apply_kernel[(triton.cdiv(n, block),)](
        as_arg(base), as_arg(other), kl, thr, as_arg(out), n, cols, BLOCK=block, **launch_options()
    )
    return out
