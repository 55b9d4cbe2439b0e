"""The fix-up of the one-read pass on the GPU (one_read.py): every record recomputed with the
exact rules by the apply's own arithmetic (apply.weighted_sum / merge_result) and stored over
the pass's result. Every key equal to a threshold is a record, so ties are ranked in flat
order along the records as along the block; the output is the two-pass scheme's, bit for
bit. The CPU's counterpart: csrc/cpu/select/fix_up.cpp.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..apply import merge_result, weighted_sum
from ..utils import as_arg, launch_options, load_f32, store_f32
from .records import Records


@triton.jit
def _fix_up_kernel(
    roff_ptr,
    rbase_ptr,
    rxs,
    first_ptr,
    rcount_ptr,
    ws,
    thr_ptr,
    quota_ptr,
    eqb_ptr,
    out_ptr,
    nblocks,
    divisor,
    lam,
    TIE_CUT: tl.constexpr,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Block pid's records (at most TILE) recomputed with the exact rules."""
    pid = tl.program_id(0)
    got = tl.load(rcount_ptr + pid)
    q = tl.arange(0, TILE)
    valid = q < got
    at = tl.load(first_ptr + pid).to(tl.int64) + q
    b = load_f32(rbase_ptr, at, valid)
    total = weighted_sum(b, rxs, ws, at, valid, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, 1, TIE_CUT)
    out = merge_result(
        b,
        total,
        rxs,
        ws,
        at,
        valid,
        thr_ptr,
        quota_ptr,
        eqb_ptr,
        pid,
        nblocks,
        divisor,
        lam,
        1,
        TIE_CUT,
        CONSENSUS,
        NORMALIZE,
        SCALE,
    )
    offs = pid.to(tl.int64) * BLOCK + tl.load(roff_ptr + at, mask=valid, other=0).to(tl.int64)
    store_f32(out_ptr, offs, out, valid)


def fix_up(
    rec: Records,
    fullest: int,
    weights: Sequence[float],
    thr: torch.Tensor,
    quota: torch.Tensor,
    eqb: torch.Tensor | None,
    out: torch.Tensor,
    nblocks: int,
    divisor: float,
    lambda_: float,
    flags: dict,
    block: int,
) -> None:
    """Recompute the records (at most `fullest` in a block) into `out` with the rules thr,
    quota, eqb (None: no model's ties are cut); flags: the apply's CONSENSUS, NORMALIZE and
    SCALE."""
    _fix_up_kernel[(nblocks,)](
        rec.offsets,
        as_arg(rec.base),
        tuple(as_arg(r) for r in rec.xs),
        rec.first,
        rec.count,
        tuple(float(w) for w in weights),
        thr,
        quota,
        eqb if eqb is not None else thr,
        as_arg(out),
        nblocks,
        float(divisor),
        float(lambda_),
        TIE_CUT=eqb is not None,
        TILE=max(16, triton.next_power_of_2(fullest)),
        BLOCK=block,
        **flags,
        **launch_options(),
    )
