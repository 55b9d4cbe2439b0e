"""Task arithmetic / TIES on the GPU: the exact magnitude selection (select/two_pass.py) gives
each model a threshold key, a tie quota and per-block tie counts; then one fused apply pass
`_task_arithmetic_kernel` reads base and the K models, and per element, in registers:
deltas, keep masks, weighted deltas, the elected sign, the agreeing sum and divisor, the
result; stored once. No K x N temporaries, no sorts, no int64 index tensors.

With magnitude selection, large tensors first try the one-read scheme of select/one_read.py
(`SelectionOptions(one_read=False)`: always the two passes).

SPARSIFY is a tl.constexpr: 0 none, 1 magnitude, 2 magnitude_outliers (breadcrumbs: two
cuts per model, launched by breadcrumbs.py). DARE (random) has its own kernels in dare.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..selection import DEFAULT, SelectionOptions
from .apply import keep_mask, merge_result, weighted_sum
from .select import one_read
from .select.two_pass import select_magnitude
from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32


@triton.jit
def _task_arithmetic_kernel(
    base_ptr,
    xs,
    ws,
    thr_ptr,
    quota_ptr,
    eqb_ptr,
    out_ptr,
    n,
    nblocks,
    divisor,
    lam,
    SPARSIFY: tl.constexpr,
    TIE_CUT: tl.constexpr,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    total = weighted_sum(b, xs, ws, offs, mask, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, SPARSIFY, TIE_CUT)
    out = merge_result(
        b,
        total,
        xs,
        ws,
        offs,
        mask,
        thr_ptr,
        quota_ptr,
        eqb_ptr,
        pid,
        nblocks,
        divisor,
        lam,
        SPARSIFY,
        TIE_CUT,
        CONSENSUS,
        NORMALIZE,
        SCALE,
    )
    store_f32(out_ptr, offs, out, mask)


def task_arithmetic_forward(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    keep: Sequence[int] | None,
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
    selection: SelectionOptions = DEFAULT,
) -> torch.Tensor:
    n, dev = base.numel(), base.device
    block = block_size()
    nblocks = triton.cdiv(n, block)
    out = torch.empty(base.shape, dtype=out_dtype, device=dev)
    if keep is None:
        sparsify = 0
        thr = quota = torch.zeros(1, dtype=torch.int64, device=dev)
        eqb = None
    else:
        sparsify = 1
        if selection.one_read and one_read.task_arithmetic(
            base, xs, weights, keep, consensus, normalize, divisor, lambda_, out, selection
        ):
            return out
        thr, quota, eqb = select_magnitude(base, xs, keep, block, selection)
    tie_cut = eqb is not None
    if eqb is None:
        eqb = torch.zeros(1, dtype=torch.int64, device=dev)
    _task_arithmetic_kernel[(nblocks,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(w) for w in weights),
        thr,
        quota,
        eqb,
        as_arg(out),
        n,
        nblocks,
        float(divisor),
        float(lambda_),
        SPARSIFY=sparsify,
        TIE_CUT=tie_cut,
        CONSENSUS=bool(consensus),
        NORMALIZE=bool(normalize),
        SCALE=float(lambda_) != 1.0,
        BLOCK=block,
        **launch_options(),
    )
    return out


@triton.jit
def _keep_mask_kernel(
    base_ptr, x_ptr, thr_ptr, quota_ptr, eqb_ptr, mask_ptr, n, nblocks, TIE_CUT: tl.constexpr, BLOCK: tl.constexpr
):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    d = load_f32(x_ptr, offs, mask) - b
    kept = keep_mask(d, mask, 0, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    tl.store(mask_ptr + offs, kept.to(tl.int8), mask=mask)


def magnitude_keep(
    base: torch.Tensor, x: torch.Tensor, keep: int, selection: SelectionOptions = DEFAULT
) -> torch.Tensor:
    """Keep-mask of x - base as the two passes select it (for tests)."""
    n = base.numel()
    block = block_size()
    nblocks = triton.cdiv(n, block)
    thr, quota, eqb = select_magnitude(base, [x], [keep], block, selection)
    tie_cut = eqb is not None
    if eqb is None:
        eqb = torch.zeros(1, dtype=torch.int64, device=base.device)
    out = torch.empty(n, dtype=torch.int8, device=base.device)
    _keep_mask_kernel[(nblocks,)](
        as_arg(base), as_arg(x), thr, quota, eqb, out, n, nblocks, TIE_CUT=tie_cut, BLOCK=block, **launch_options()
    )
    return out.view(x.shape).bool()
