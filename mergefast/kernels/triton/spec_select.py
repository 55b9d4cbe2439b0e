"""The selection side of the one-read scheme (speculative.py) in few launches: the windows
before the pass, the exact rules after it.

Every launch between the start of a TIES call and its pass, and between its one sync and its
fix-up, leaves the GPU idle while the host issues it (a few microseconds each, against ~0.15
ms for the pass of a 7B layer). The two-pass scheme's torch compositions take ~40 launches
after its sync for 3 models (counted with a TorchDispatchMode); here:
- before the pass: select_window.windows (a sampling kernel, one sort, an ends kernel: lo,
  hi and the pass's thresholds of every model);
- after the sync: one host-to-device copy of the per-model cases, one topk per model whose
  threshold is a candidate, `_rules_kernel` (per-block tie counts), one cumsum,
  `_finalize_kernel` (thresholds, quotas, ties before each block).
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from . import select_window as sw
from .utils import KEEP_NONE, NO_QUOTA

FINALIZE_BLOCKS = 1024
# The case of a model after the sync (select_window.window_case; column 0 of `cases`, column
# 1 its aux). constexpr copies: the kernels read them.
KEEP_ALL, KEEP_NOTHING, AT_HI, AT_LO, CANDIDATE = (
    tl.constexpr(v) for v in (sw.KEEP_ALL, sw.KEEP_NOTHING, sw.AT_HI, sw.AT_LO, sw.CANDIDATE))
_KEEP_NONE = tl.constexpr(KEEP_NONE)
_NO_QUOTA = tl.constexpr(NO_QUOTA)


@triton.jit
def _threshold(case, aux, i, lo_ptr, hi_ptr, tval_ptr):
    """Model i's exact threshold key for its case (aux: the rank of T among the candidates,
    whose topk values, largest first, tval_ptr holds)."""
    t = tl.load(tval_ptr + tl.maximum(aux - 1, 0), mask=case == CANDIDATE, other=0).to(tl.int64)
    t = tl.where(case == AT_HI, tl.load(hi_ptr + i).to(tl.int64), t)
    t = tl.where(case == AT_LO, tl.load(lo_ptr + i).to(tl.int64), t)
    return tl.where(case == KEEP_NOTHING, _KEEP_NONE, t)   # KEEP_ALL: 0


@triton.jit
def _rules_kernel(cases_ptr, lo_ptr, hi_ptr, tvals, count_ptr, slot_ptr, eqgt_ptr, nblocks,
                  CAP: tl.constexpr):
    """Per block and model i: eqgt[0, i, block] = its keys equal to T, eqgt[1, i, block] =
    its candidates above T (CANDIDATE only)."""
    pid = tl.program_id(0)
    for i in tl.static_range(len(tvals)):
        case = tl.load(cases_ptr + 2 * i)
        t = _threshold(case, tl.load(cases_ptr + 2 * i + 1), i, lo_ptr, hi_ptr, tvals[i])
        slots = tl.load(slot_ptr + (i * nblocks + pid).to(tl.int64) * CAP + tl.arange(0, CAP))
        eq = tl.sum((slots == t).to(tl.int64), axis=0)
        eq = tl.where(case == AT_HI, tl.load(count_ptr + (4 * i + 1) * nblocks + pid), eq)
        eq = tl.where(case == AT_LO, tl.load(count_ptr + (4 * i + 2) * nblocks + pid), eq)
        eq = tl.where(case >= AT_HI, eq, 0)
        gt = tl.where(case == CANDIDATE, tl.sum((slots > t).to(tl.int64), axis=0), 0)
        tl.store(eqgt_ptr + i * nblocks + pid, eq)
        tl.store(eqgt_ptr + (len(tvals) + i) * nblocks + pid, gt)


@triton.jit
def _finalize_kernel(cases_ptr, lo_ptr, hi_ptr, tvals, eqgt_ptr, cum_ptr, thr_ptr, quota_ptr,
                     eqb_ptr, nblocks, BLOCKS: tl.constexpr):
    """thr and quota per model (program 0) and eqb[i, block] = its ties before the block."""
    pid = tl.program_id(0)
    blocks = pid * BLOCKS + tl.arange(0, BLOCKS)
    mask = blocks < nblocks
    for i in tl.static_range(len(tvals)):
        row = i * nblocks + blocks
        before = tl.load(cum_ptr + row, mask=mask, other=0) - tl.load(eqgt_ptr + row, mask=mask, other=0)
        tl.store(eqb_ptr + row, before, mask=mask)
        if pid == 0:
            case = tl.load(cases_ptr + 2 * i)
            aux = tl.load(cases_ptr + 2 * i + 1)
            tl.store(thr_ptr + i, _threshold(case, aux, i, lo_ptr, hi_ptr, tvals[i]))
            above = tl.load(cum_ptr + (len(tvals) + i) * nblocks + nblocks - 1)
            quota = tl.where(case == CANDIDATE, aux - above, aux)
            tl.store(quota_ptr + i, tl.where(case == KEEP_ALL, _NO_QUOTA, quota))


def case_of(k: int, n: int, stats: Sequence[int], cap: int):
    """select_window.window_case, and for a model keeping all or nothing its case."""
    if k <= 0:
        return sw.KEEP_NOTHING, 0, False
    if k >= n:
        return sw.KEEP_ALL, 0, False
    return sw.window_case(k, stats, cap)


def rules(cases: list, lo, hi, counts, slots, block: int, n: int):
    """thr, quota (int64 [K]) and eqb (int64 [K, nblocks], or None when no model's ties are
    cut) on the device, from each model's case_of (no sync)."""
    K, dev, nblocks = len(cases), lo.device, triton.cdiv(n, block)
    flat = [v for case, aux, _ in cases for v in (case, aux)]
    host = torch.tensor(flat, dtype=torch.int64)
    case_t = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host
    # the candidates' topk, largest first: T is the rank-th (rank = aux)
    tvals = tuple(torch.topk(slots[i].reshape(-1), aux, sorted=True).values
                  if case == sw.CANDIDATE else slots for i, (case, aux, _) in enumerate(cases))
    eqgt = torch.empty((2, K, nblocks), dtype=torch.int64, device=dev)
    _rules_kernel[(nblocks,)](case_t, lo, hi, tvals, counts, slots, eqgt, nblocks,
                              CAP=slots.shape[2])
    cum = eqgt.cumsum(2)
    thr, quota = (torch.empty(K, dtype=torch.int64, device=dev) for _ in range(2))
    eqb = torch.empty((K, nblocks), dtype=torch.int64, device=dev)
    _finalize_kernel[(triton.cdiv(nblocks, FINALIZE_BLOCKS),)](
        case_t, lo, hi, tvals, eqgt, cum, thr, quota, eqb, nblocks, BLOCKS=FINALIZE_BLOCKS)
    return thr, quota, (eqb if any(cut for _, _, cut in cases) else None)
