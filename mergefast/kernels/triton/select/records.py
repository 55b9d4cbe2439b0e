"""The records of the one-read pass on the GPU (one_read.py): every element where some model's
key lies in its window [lo, hi], whose keep decision waits for the exact thresholds. A record
is the element's offset in its block and the base's and every model's values there, each in
its own column and its own dtype (10 bytes for base + 3 bf16 models; ~7 % of a 7B layer's
elements with 3 models). A block claims its records' place with one atomic on a counter; the
fix-up (fix_up.py) reads them back. The CPU's counterpart: csrc/cpu/select/records.h.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..utils import load_f32, store_f32

# Record memory: this times the windows' expected share of the elements (ties at the windows'
# ends need room); past it the pass falls back to the two passes.
RECORD_SLACK = 2.0


class Records(NamedTuple):
    """The record columns (rcap records each) and, per block, its first record and count."""

    offsets: torch.Tensor  # int16: the element's offset in its block
    base: torch.Tensor  # base's dtype
    xs: list  # each model's dtype
    used: torch.Tensor  # int32 [1]: records claimed so far (may exceed rcap)
    first: torch.Tensor  # int32 [nblocks]
    count: torch.Tensor  # int32 [nblocks]
    cap: int  # rcap


def allocate(base: torch.Tensor, xs: Sequence[torch.Tensor], share: float, nblocks: int, block: int) -> Records:
    """Record columns for `share` of base's elements (the windows' expected share), with
    RECORD_SLACK times that room and a block more."""
    n, dev = base.numel(), base.device
    rcap = min(n, math.ceil(RECORD_SLACK * share * n) + block)
    first, count = (torch.empty(nblocks, dtype=torch.int32, device=dev) for _ in range(2))
    return Records(
        torch.empty(rcap, dtype=torch.int16, device=dev),
        torch.empty(rcap, dtype=base.dtype, device=dev),
        [torch.empty(rcap, dtype=x.dtype, device=dev) for x in xs],
        torch.zeros(1, dtype=torch.int32, device=dev),
        first,
        count,
        rcap,
    )


@triton.jit
def store_records(
    uncertain,
    b,
    xs,
    offs,
    mask,
    pid,
    used_ptr,
    first_ptr,
    rcount_ptr,
    roff_ptr,
    rbase_ptr,
    rxs,
    rcap,
    BLOCK: tl.constexpr,
):
    """Block pid's records: the elements whose `uncertain` flag is set, their place in the
    record columns claimed with one atomic, then offset, base (`b`, in float32 registers,
    stored back in its dtype: exact) and every model's value. Records past rcap are dropped:
    the host sees the total in used_ptr and falls back."""
    got = tl.sum(uncertain, axis=0)
    first = tl.atomic_add(used_ptr, got)
    tl.store(first_ptr + pid, first)
    tl.store(rcount_ptr + pid, got)
    at = first.to(tl.int64) + (tl.cumsum(uncertain, axis=0) - 1)
    keep = (uncertain > 0) & (at < rcap)
    tl.store(roff_ptr + at, (offs - pid.to(tl.int64) * BLOCK).to(tl.int16), mask=keep)
    store_f32(rbase_ptr, at, b, keep)
    for i in tl.static_range(len(xs)):
        store_f32(rxs[i], at, load_f32(xs[i], offs, mask), keep)
