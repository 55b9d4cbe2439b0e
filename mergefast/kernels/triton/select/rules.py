"""The exact rules of a magnitude selection, from where each model's threshold T lies, in few
launches: the thresholds, the tie quotas and the ties before each block that the apply pass
(apply.keep_mask) and the one-read fix-up read. Both schemes end here (two_pass.py and
one_read.py), so there is one implementation of them (the CPU's KeepRule:
csrc/cpu/select/rules.h).

A model's case (window.case_of): KEEP_ALL / KEEP_NOTHING; AT_HI / AT_LO, T is its window's hi
/ lo with aux its quota of T-valued keys (counted per block in the window's counts);
CANDIDATE, T is the aux-th largest of its candidate slots (candidates.py). The histogram
passes state their exact T as AT_HI with hi = T and their own per-block counts of T
(histogram.py).

Every launch between the one sync and the apply or the fix-up leaves the GPU idle while the
host issues it (a few microseconds each, against ~0.15 ms for the one-read pass of a 7B
layer), so: one host-to-device copy of the cases, the candidates' thresholds (two launches a
radix pass, for all CANDIDATE models together), `_rules_kernel` (per-block tie counts), one
cumsum, `_finalize_kernel` (thresholds, quotas, ties before each block).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...selection import SelectionOptions
from ..utils import KEEP_NONE, NO_QUOTA
from . import candidates
from . import window as sw

FINALIZE_BLOCKS = 1024
# constexpr copies of window.py's cases (column 0 of `cases`, column 1 its aux): the
# kernels read them.
KEEP_ALL, KEEP_NOTHING, AT_HI, AT_LO, CANDIDATE = (
    tl.constexpr(v) for v in (sw.KEEP_ALL, sw.KEEP_NOTHING, sw.AT_HI, sw.AT_LO, sw.CANDIDATE)
)
_KEEP_NONE = tl.constexpr(KEEP_NONE)
_NO_QUOTA = tl.constexpr(NO_QUOTA)


@triton.jit
def _threshold(case, i, lo_ptr, hi_ptr, tval_ptr):
    """Model i's exact threshold key for its case (a CANDIDATE's is tval[i])."""
    t = tl.load(tval_ptr + i, mask=case == CANDIDATE, other=0)
    t = tl.where(case == AT_HI, tl.load(hi_ptr + i).to(tl.int64), t)
    t = tl.where(case == AT_LO, tl.load(lo_ptr + i).to(tl.int64), t)
    return tl.where(case == KEEP_NOTHING, _KEEP_NONE, t)  # KEEP_ALL: 0


@triton.jit
def _rules_kernel(
    cases_ptr, lo_ptr, hi_ptr, tval_ptr, count_ptr, slot_ptr, eqgt_ptr, nblocks, K: tl.constexpr, CAP: tl.constexpr
):
    """Per block and model i: eqgt[0, i, block] = its keys equal to T, eqgt[1, i, block] =
    its candidates above T (CANDIDATE only)."""
    pid = tl.program_id(0)
    for i in tl.static_range(K):
        case = tl.load(cases_ptr + 2 * i)
        t = _threshold(case, i, lo_ptr, hi_ptr, tval_ptr)
        # masked by the case: only a CANDIDATE model's slots (its block's first `got`: the
        # rest is garbage), only AT_HI / AT_LO counts
        got = tl.load(count_ptr + (4 * i + 3) * nblocks + pid, mask=case == CANDIDATE, other=0)
        cap = tl.arange(0, CAP)
        slots = tl.load(slot_ptr + (i * nblocks + pid).to(tl.int64) * CAP + cap, mask=cap < got, other=0)
        eq = tl.sum((slots == t).to(tl.int64), axis=0)
        at_end = tl.load(
            count_ptr + (4 * i + 1 + (case == AT_LO).to(tl.int64)) * nblocks + pid,
            mask=(case == AT_HI) | (case == AT_LO),
            other=0,
        )
        eq = tl.where(case == CANDIDATE, eq, at_end)
        gt = tl.where(case == CANDIDATE, tl.sum((slots > t).to(tl.int64), axis=0), 0)
        tl.store(eqgt_ptr + i * nblocks + pid, eq)
        tl.store(eqgt_ptr + (K + i) * nblocks + pid, gt)


@triton.jit
def _finalize_kernel(
    cases_ptr,
    lo_ptr,
    hi_ptr,
    tval_ptr,
    eqgt_ptr,
    cum_ptr,
    thr_ptr,
    quota_ptr,
    eqb_ptr,
    nblocks,
    K: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    """thr and quota per model (program 0) and eqb[i, block] = its ties before the block."""
    pid = tl.program_id(0)
    blocks = pid * BLOCKS + tl.arange(0, BLOCKS)
    mask = blocks < nblocks
    for i in tl.static_range(K):
        row = i * nblocks + blocks
        before = tl.load(cum_ptr + row, mask=mask, other=0) - tl.load(eqgt_ptr + row, mask=mask, other=0)
        tl.store(eqb_ptr + row, before, mask=mask)
        if pid == 0:
            case = tl.load(cases_ptr + 2 * i)
            aux = tl.load(cases_ptr + 2 * i + 1)
            tl.store(thr_ptr + i, _threshold(case, i, lo_ptr, hi_ptr, tval_ptr))
            above = tl.load(cum_ptr + (K + i) * nblocks + nblocks - 1)
            quota = tl.where(case == CANDIDATE, aux - above, aux)
            tl.store(quota_ptr + i, tl.where(case == KEEP_ALL, _NO_QUOTA, quota))


def rules(state: sw.WindowScan, block: int, n: int, options: SelectionOptions):
    """thr, quota (int64 [K]) and eqb (int64 [K, nblocks], or None when no model's ties are
    cut) on the device (no sync), from a selection's state after its sync: every model's
    case (window.case_of) and its rows of the window scan."""
    cases, lo = state.cases, state.lo
    K, dev, nblocks = len(cases), lo.device, triton.cdiv(n, block)
    # [case, aux] per model, then the candidate select's prefixes (0) and ranks (aux)
    flat = [v for case, aux, _ in cases for v in (case, aux)] + [0] * K + [a for _, a, _ in cases]
    host = torch.tensor(flat, dtype=torch.int64)
    case_t = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host
    tval = candidates.thresholds(case_t, state, options)
    eqgt = torch.empty((2, K, nblocks), dtype=torch.int64, device=dev)
    _rules_kernel[(nblocks,)](
        case_t, lo, state.hi, tval, state.counts, state.slots, eqgt, nblocks, K=K, CAP=state.slots.shape[2]
    )
    cum = eqgt.cumsum(2)
    thr, quota = (torch.empty(K, dtype=torch.int64, device=dev) for _ in range(2))
    eqb = torch.empty((K, nblocks), dtype=torch.int64, device=dev)
    _finalize_kernel[(triton.cdiv(nblocks, FINALIZE_BLOCKS),)](
        case_t, lo, state.hi, tval, eqgt, cum, thr, quota, eqb, nblocks, K=K, BLOCKS=FINALIZE_BLOCKS
    )
    return thr, quota, (eqb if any(cut for _, _, cut in cases) else None)
