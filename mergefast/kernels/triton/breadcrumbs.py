"""Breadcrumbs (`breadcrumbs`, `breadcrumbs_ties`) on the GPU: each model keeps the deltas at
positions [lo, hi) of the reference's ascending stable |delta| order (ties lowest flat index
first), as csrc/cpu/breadcrumbs.cpp does on the CPU.

Two cuts from the top-k selection. In that order the ties of a key rank lowest index first,
so "at or above position p" is key > T plus the LAST ties of T in flat order, where the top-k
selection (select/two_pass.py, k = n - p) keeps the FIRST ones. One selection over 2K rules
(each model twice: rule 2i at or above lo, rule 2i + 1 at or above hi) gives every T, tie
quota and per-block tie count with TIES' window scan and histogram fallback; `_skip_kernel`
turns each quota into the number of leading ties the cut skips (ties - quota). Then
`_task_arithmetic_kernel` with SPARSIFY=2 (apply.band_mask) keeps at-or-above(lo) and not
at-or-above(hi), and does TIES' or task arithmetic's arithmetic: one pass, no K x N
temporaries, no sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..selection import DEFAULT, SelectionOptions
from .select.two_pass import select_magnitude
from .task_arithmetic import _task_arithmetic_kernel
from .utils import as_arg, block_size, launch_options, load_f32, magnitude_key


@triton.jit
def _skip_kernel(base_ptr, xs, thr_ptr, quota_ptr, eqb_ptr, skip_ptr, n, nblocks, BLOCK: tl.constexpr):
    """skip[r] = (keys equal to rule r's threshold) - its quota: eqb's count before the last
    block plus the last block's own (one program)."""
    offs = tl.cast(nblocks - 1, tl.int64) * BLOCK + tl.arange(0, BLOCK)  # nblocks is an int when it is 1
    mask = offs < n
    b = load_f32(base_ptr, offs, mask)
    for r in tl.static_range(2 * len(xs)):
        key = magnitude_key(load_f32(xs[r // 2], offs, mask) - b).to(tl.int64)
        thr = tl.load(thr_ptr + r)
        last = tl.sum(((key == thr) & mask).to(tl.int64), axis=0)
        ties = tl.load(eqb_ptr + r * nblocks + nblocks - 1) + last
        tl.store(skip_ptr + r, ties - tl.load(quota_ptr + r))


def breadcrumbs_forward(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    lo: Sequence[int],
    hi: Sequence[int],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
    selection: SelectionOptions = DEFAULT,
) -> torch.Tensor:
    """Breadcrumbs into a new tensor: model i keeps the deltas at positions [lo[i], hi[i]) of
    its ascending stable |delta| order (then the consensus or the plain sum)."""
    n, dev = base.numel(), base.device
    block = block_size()
    nblocks = triton.cdiv(n, block)
    out = torch.empty(base.shape, dtype=out_dtype, device=dev)
    keep = []  # top-k counts: at or above lo (n - lo), at or above hi (n - hi)
    for a, b in zip(lo, hi):
        keep += [0, 0] if b <= a else [n - a, n - b]  # an empty band: both cuts select nothing
    thr, quota, eqb = select_magnitude(base, [x for x in xs for _ in range(2)], keep, block, selection)
    tie_cut = eqb is not None
    if tie_cut:
        skip = torch.empty_like(quota)
        _skip_kernel[(1,)](
            as_arg(base),
            tuple(as_arg(x) for x in xs),
            thr,
            quota,
            eqb,
            skip,
            n,
            nblocks,
            BLOCK=block,
            **launch_options(),
        )
    else:
        skip, eqb = quota, torch.zeros(1, dtype=torch.int64, device=dev)
    _task_arithmetic_kernel[(nblocks,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(w) for w in weights),
        thr,
        skip,
        eqb,
        as_arg(out),
        n,
        nblocks,
        float(divisor),
        float(lambda_),
        SPARSIFY=2,
        TIE_CUT=tie_cut,
        CONSENSUS=bool(consensus),
        NORMALIZE=bool(normalize),
        SCALE=float(lambda_) != 1.0,
        BLOCK=block,
        **launch_options(),
    )
    return out
