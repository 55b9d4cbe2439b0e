"""The SLERP family on the GPU (nuslerp, model_stock, nearswap), as csrc/cpu/gram.cpp and
csrc/cpu/slerp_family.cpp on the CPU; the host side is kernels/slerp_family.py.

Passes over the inputs:
  1. nuslerp and model_stock, `_gram_kernel`: one program per block of one row (a flat tensor
     is one row): every product <d_i, d_j> (i <= j) of d_i = x_i - base in float64, per block;
     torch sums the blocks of each row in float64. nuslerp's row_wise, `_gram_columns_kernel`:
     per pair, one program per block of columns and chunk of rows, summed down the rows;
  2. the elementwise pass, in the reference's float32 order, with the per-row scalars the
     host derived from pass 1 (divisions IEEE-rounded, as on the CPU).
nearswap is the elementwise pass alone. No K x N temporaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32


@triton.jit
def _delta(x_ptr, base_ptr, offs, mask, HAS_BASE: tl.constexpr):
    """x - base in float32 (x alone without a base)."""
    x = load_f32(x_ptr, offs, mask)
    if HAS_BASE:
        x = x - load_f32(base_ptr, offs, mask)
    return x


@triton.jit
def _gram_kernel(base_ptr, xs, part_ptr, cols, per_row, HAS_BASE: tl.constexpr, BLOCK: tl.constexpr):
    """part[pid, q] = this block's sum of d_i d_j (float64) for the pairs i <= j in order."""
    pid = tl.program_id(0)
    row = pid // per_row
    at = (pid % per_row).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = at < cols
    offs = row.to(tl.int64) * cols + at
    q = 0
    for i in tl.static_range(len(xs)):
        di = _delta(xs[i], base_ptr, offs, mask, HAS_BASE).to(tl.float64)
        for j in tl.static_range(i, len(xs)):
            dj = _delta(xs[j], base_ptr, offs, mask, HAS_BASE).to(tl.float64)
            tl.store(part_ptr + pid.to(tl.int64) * (len(xs) * (len(xs) + 1) // 2) + q, tl.sum(di * dj, axis=0))
            q += 1


@triton.jit
def _gram_columns_kernel(
    base_ptr, a_ptr, b_ptr, part_ptr, rows, cols, HAS_BASE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr
):
    """part[chunk, col] = the sum of d_a d_b (float64) down rows [chunk ROWS, (chunk + 1) ROWS)
    of columns [pid BLOCK, (pid + 1) BLOCK), the rows in order."""
    pid, chunk = tl.program_id(0), tl.program_id(1)
    at = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = at < cols
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    first = chunk.to(tl.int64) * ROWS
    for row in range(first, tl.minimum(first + ROWS, rows)):
        offs = row * cols + at
        da = _delta(a_ptr, base_ptr, offs, mask, HAS_BASE).to(tl.float64)
        db = _delta(b_ptr, base_ptr, offs, mask, HAS_BASE).to(tl.float64)
        acc += da * db
    tl.store(part_ptr + chunk.to(tl.int64) * cols + at, acc, mask=mask)


@triton.jit
def _row_of(offs, cols, PER_ROW: tl.constexpr, COLUMNS: tl.constexpr):
    """Each element's row (all 0 for a flat tensor), or with COLUMNS its column."""
    if COLUMNS:
        return offs % cols
    elif PER_ROW:
        return offs // cols
    else:
        return tl.zeros_like(offs)


@triton.jit
def _nuslerp_kernel(
    base_ptr,
    x0_ptr,
    x1_ptr,
    f_ptr,
    out_ptr,
    n,
    cols,
    HAS_BASE: tl.constexpr,
    PER_ROW: tl.constexpr,
    COLUMNS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, offs, mask = block_span(n, BLOCK)
    row = _row_of(offs, cols, PER_ROW, COLUMNS)  # the factors' index: row, or column
    c0 = tl.load(f_ptr + 3 * row, mask=mask, other=0.0)
    c1 = tl.load(f_ptr + 3 * row + 1, mask=mask, other=0.0)
    dv = tl.load(f_ptr + 3 * row + 2, mask=mask, other=1.0)
    v0 = _delta(x0_ptr, base_ptr, offs, mask, HAS_BASE)
    v1 = _delta(x1_ptr, base_ptr, offs, mask, HAS_BASE)
    r = tl.math.div_rn(c0 * v0 + c1 * v1, dv)
    if HAS_BASE:
        r = load_f32(base_ptr, offs, mask) + r
    store_f32(out_ptr, offs, r, mask)


@triton.jit
def _model_stock_kernel(base_ptr, xs, t_ptr, out_ptr, n, cols, PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    m = tl.zeros_like(b)
    for i in tl.static_range(len(xs)):
        m = m + load_f32(xs[i], offs, mask)
    m = tl.math.div_rn(m, tl.full(m.shape, len(xs), tl.float32))
    t = tl.load(t_ptr + _row_of(offs, cols, PER_ROW, False), mask=mask, other=0.0)
    store_f32(out_ptr, offs, t * m + (1.0 - t) * b, mask)


@triton.jit
def _nearswap_kernel(base_ptr, x_ptr, out_ptr, n, t, BLOCK: tl.constexpr):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    x = load_f32(x_ptr, offs, mask)
    dist = tl.abs(b - x)
    c = tl.where(dist < 1e-6, 1e-6, dist)  # NaN stays NaN, as torch's clamp
    w = tl.math.div_rn(tl.full(c.shape, 1.0, tl.float32), c) * t
    w = tl.where(w < 0.0, 0.0, tl.where(w > 1.0, 1.0, w))
    store_f32(out_ptr, offs, w * x + (1.0 - w) * b, mask)


# Rows per program of the column Gram: its programs are the column blocks times the row chunks,
# and torch adds each column's chunks in chunk order.
GRAM_COLUMN_ROWS = 64


def gram(
    base: torch.Tensor | None, xs: Sequence[torch.Tensor], rows: int, cols: int, *, columns: bool = False
) -> torch.Tensor:
    """Per row, <d_i, d_j> for i <= j in float64: (rows, P) on the inputs' device; with
    `columns`, per column of the rows x cols view: (cols, P)."""
    if columns:
        return _gram_columns(base, xs, rows, cols)
    k, block = len(xs), block_size()
    per_row = max(1, triton.cdiv(cols, block))
    pairs = k * (k + 1) // 2
    part = torch.empty((rows * per_row, pairs), dtype=torch.float64, device=xs[0].device)
    _gram_kernel[(rows * per_row,)](
        as_arg(base if base is not None else xs[0]),
        tuple(as_arg(x) for x in xs),
        part,
        cols,
        per_row,
        HAS_BASE=base is not None,
        BLOCK=block,
        **launch_options(),
    )
    return part.view(rows, per_row, pairs).sum(dim=1)


def _gram_columns(base: torch.Tensor | None, xs: Sequence[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """`gram` per column: one launch per pair (nuslerp's row_wise has two vectors, three pairs)."""
    k, block = len(xs), min(block_size(), triton.next_power_of_2(max(cols, 1)))
    chunks = triton.cdiv(rows, GRAM_COLUMN_ROWS)
    out = torch.empty((cols, k * (k + 1) // 2), dtype=torch.float64, device=xs[0].device)
    part = torch.empty((chunks, cols), dtype=torch.float64, device=xs[0].device)
    pairs = [(i, j) for i in range(k) for j in range(i, k)]
    for q, (i, j) in enumerate(pairs):
        _gram_columns_kernel[(triton.cdiv(cols, block), chunks)](
            as_arg(base if base is not None else xs[0]),
            as_arg(xs[i]),
            as_arg(xs[j]),
            part,
            rows,
            cols,
            HAS_BASE=base is not None,
            ROWS=GRAM_COLUMN_ROWS,
            BLOCK=block,
            **launch_options(),
        )
        out[:, q] = part.sum(dim=0)
    return out


def nuslerp_apply(
    base, x0, x1, rows: int, cols: int, factors: torch.Tensor, out_dtype: torch.dtype, *, columns: bool = False
) -> torch.Tensor:
    """out = base + (c0 (x0 - base) + c1 (x1 - base)) / dv per row (factors: rows x 3), or
    per column of the rows x cols view (`columns`, factors: cols x 3)."""
    out = torch.empty(x0.shape, dtype=out_dtype, device=x0.device)
    n, block = out.numel(), block_size()
    _nuslerp_kernel[(triton.cdiv(n, block),)](
        as_arg(base if base is not None else x0),
        as_arg(x0),
        as_arg(x1),
        factors.to(device=x0.device, dtype=torch.float32).contiguous(),
        as_arg(out),
        n,
        cols,
        HAS_BASE=base is not None,
        PER_ROW=rows > 1,
        COLUMNS=columns,
        BLOCK=block,
        **launch_options(),
    )
    return out


def model_stock_apply(base, xs, rows: int, cols: int, t: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """out = t m + (1 - t) base per row, m the mean of xs."""
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    n, block = out.numel(), block_size()
    _model_stock_kernel[(triton.cdiv(n, block),)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        t.to(device=base.device, dtype=torch.float32).contiguous(),
        as_arg(out),
        n,
        cols,
        PER_ROW=rows > 1,
        BLOCK=block,
        **launch_options(),
    )
    return out


def nearswap(base: torch.Tensor, x: torch.Tensor, t: float, out_dtype: torch.dtype) -> torch.Tensor:
    """w = clamp(t / max(|base - x|, 1e-6), 0, 1); out = w x + (1 - w) base."""
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    n, block = out.numel(), block_size()
    _nearswap_kernel[(triton.cdiv(n, block),)](
        as_arg(base), as_arg(x), as_arg(out), n, float(t), BLOCK=block, **launch_options()
    )
    return out
