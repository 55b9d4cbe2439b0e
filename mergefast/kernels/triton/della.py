"""DELLA (`della`, `della_linear`) on the GPU, as csrc/cpu/della.cpp on the CPU.

Two passes over base + K models (kernels/della.py is the host side):
  1. the masks pass (della_masks.py): per row and model, rank bounds from a histogram of the
     row's keys decide most elements' keep bits without their ranks, the others get exact ranks
     by compares; the bits go to a 16-bit word in each element's own output slot; per row
     sum |d| and sum |kept d| per model (float64) for the L1 rescale. Rows it flags (too many
     elements left open) are ranked here by torch's sorts (`masks_torch`).
  2. `_della_apply_kernel`, per block: the words, then as dare's apply pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ...methods.random import uniform_at
from .dare import _keys
from .della_masks import _della_masks_kernel
from .utils import as_arg, block_size, block_span, interpret, launch_options, load_f32, store_f32

# Columns per step of the masks pass: the most Triton compiles it for, whatever the row length
# (shorter rows: their length rounded up to a power of two).
CHUNK = 1024
# Open elements a model may leave in one row before the host ranks the row by sorting (the
# scratch holds this many columns per program). bf16 deltas of a 7B layer leave ~5 of 4096.
OPEN_CAP = 256
# Masks programs per SM (a persistent grid: the scratch is per program); under the
# interpreter few, so that each program takes several rows.
PROGRAMS_PER_SM = 8
INTERPRET_PROGRAMS = 2
# Elements per batch of rows in masks_torch (its temporaries: ~80 bytes an element).
TORCH_BATCH = 1 << 22


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


def _programs(device: torch.device, rows: int) -> int:
    """Grid size of the masks pass: PROGRAMS_PER_SM a SM, at most one a row."""
    if interpret():
        return max(1, min(rows, INTERPRET_PROGRAMS))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(rows, sms * PROGRAMS_PER_SM))


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
    if base.numel() == 0:
        return out, [0.0] * (2 * len(xs))
    words, stride = _words(out)
    rows, dev = base.numel() // cols, base.device
    part = torch.zeros((rows, len(xs), 2), dtype=torch.float64, device=dev)
    flag = torch.zeros(rows, dtype=torch.int32, device=dev)
    programs = _programs(dev, rows)
    _della_masks_kernel[(programs,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(p) for p in pmin),
        tuple(float(s) for s in span),
        _keys(keys, dev),
        words,
        part,
        torch.empty((programs, OPEN_CAP), dtype=torch.int32, device=dev),
        flag,
        rows,
        cols,
        float(max(cols - 1, 1)),  # rows of one element: every span is 0
        STRIDE=stride,
        CHUNK=min(CHUNK, max(16, triton.next_power_of_2(cols))),
        OPEN_CAP=OPEN_CAP,
        **launch_options(),
    )
    flagged = flag.nonzero().flatten()
    if flagged.numel():
        masks_torch(base, xs, keys, pmin, span, cols, words, stride, part, flagged)
    return out, part.sum(dim=0).flatten().tolist()


def masks_torch(base, xs, keys, pmin, span, cols, words, stride, part, rows: torch.Tensor) -> None:
    """The masks pass in torch ops for the given rows (per-row stable sorts; the same rule
    and draws): their words, and their norms into part[row]."""
    for batch in rows.split(max(1, TORCH_BATCH // cols)):
        flat = (batch[:, None] * cols + torch.arange(cols, device=batch.device)).flatten()
        b = base.reshape(-1)[flat].float().view(-1, cols)
        packed = torch.zeros(b.shape, dtype=torch.int32, device=b.device)
        for i, x in enumerate(xs):
            d = x.reshape(-1)[flat].float().view(-1, cols) - b
            kept = _p_by_sort(d, pmin[i], span[i], cols) > uniform_at(keys[i], flat).view(d.shape)
            packed |= kept.to(torch.int32) << i
            part[batch, i, 0] = d.abs().double().sum(dim=1)
            part[batch, i, 1] = torch.where(kept, d.abs(), 0.0).double().sum(dim=1)
        words[flat * stride] = packed.flatten().to(torch.int16)


def _p_by_sort(d: torch.Tensor, pmin: float, span: float, cols: int) -> torch.Tensor:
    """p of every element of the rows of d: its stable rank of |d| (NaNs equal, above inf)."""
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=d.device)  # noqa: E731 - the reference's scalar rounding
    mkey = torch.clamp_max(d.view(torch.int32) & 0x7FFFFFFF, 0x7F800001)
    order = torch.sort(mkey, dim=-1, stable=True).indices
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(cols, device=d.device).expand_as(order))
    return f32(pmin) + (ranks.float() / f32(float(max(cols - 1, 1)))) * f32(span)


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
