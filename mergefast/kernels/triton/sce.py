"""SCE (`mergefast.methods.sce`) on the GPU, as csrc/cpu/sce.cpp and sce_apply.cpp on the CPU:
no K x N temporaries, no sort. Passes over base + K models:

  1. (select_topk < 1) `_sce_var_kernel`: every position's population variance across the task
     vectors into a float32 array (4 bytes an element), and per block the nonzero count;
  2. the exact top-k of the variances, k = int(count_nonzero(var) * select_topk), by the
     magnitude selection of task arithmetic / TIES (select/, with no base: the variances rank
     by their own bits, non-negative float32 whose integer order is their order; NaN one key
     above inf), ties lowest flat index first as the reference's stable sort;
  3. `_sce_energies_kernel`: per block and model the sum of squared kept deltas in float64; the
     host sums the blocks (kernels/sce.py turns them into the weights);
  4. `_sce_apply_kernel`: the TIES "sum" election and the weighted disjoint merge, stored once.

Numerics. The variance is the CPU reference's (torch's CPU var(): Welford in float64, models in
order, m2 / K, rounded to float32), computed with the same float64 operations (`/` in float64
is IEEE division on NVIDIA GPUs, and launch_options() disables FMA contraction): bit-identical
keys, so the kept set is the CPU reference's. torch on CUDA takes the variance in float32 (its
own Welford and order), so a CUDA reference's variances differ from these in their last bits,
and where two positions' variances lie that close around the k-th largest, the boundary can
flip one for the other: its kept set differs there, nowhere else. The election and merge are
the reference's float32 operations in its order (division IEEE-rounded: div_rn). The energies
are float64 sums in another order than the CPU kernel's (per-block tree sums): rounded to
float32 they equal its ones except where the two float64 sums straddle a float32 rounding
boundary (about 2^-29 relative apart at most).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..selection import DEFAULT
from .apply import keep_mask
from .select import select_magnitude
from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32

_DIVISOR_MIN = tl.constexpr(1e-6)


@triton.jit
def _sce_var_kernel(base_ptr, xs, var_ptr, nz_ptr, n, BLOCK: tl.constexpr):
    """var[j] = population variance of the K deltas at j (float64 Welford, as torch's CPU
    WelfordOps::reduce, then m2 / K rounded to float32); nz[pid] = the block's nonzero ones."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    mean = tl.zeros([BLOCK], dtype=tl.float64)
    m2 = tl.zeros([BLOCK], dtype=tl.float64)
    for i in tl.static_range(len(xs)):
        v = (load_f32(xs[i], offs, mask) - b).to(tl.float64)
        delta = v - mean
        mean = mean + delta / (i + 1.0)
        m2 = m2 + delta * (v - mean)
    var = (m2 / len(xs)).to(tl.float32)
    tl.store(var_ptr + offs, var, mask=mask)
    tl.store(nz_ptr + pid, tl.sum(((var != 0.0) & mask).to(tl.int32), axis=0))


@triton.jit
def _keep_floats(var_ptr, offs, mask, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT: tl.constexpr):
    """1.0 where the variance selection keeps the element, else 0.0: the kernels multiply the
    deltas by it (NaN * 0 stays NaN, as the reference's multiply by its bool mask)."""
    var = tl.load(var_ptr + offs, mask=mask, other=0.0)
    keep = keep_mask(var, mask, 0, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    return tl.where(keep, 1.0, 0.0)


@triton.jit
def _sce_energies_kernel(
    base_ptr,
    xs,
    var_ptr,
    thr_ptr,
    quota_ptr,
    eqb_ptr,
    part_ptr,
    n,
    nblocks,
    SELECT: tl.constexpr,
    TIE_CUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """part[pid, i] = sum of model i's squared kept deltas in this block (squares in float32,
    summed in float64)."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    m = b
    if SELECT:
        m = _keep_floats(var_ptr, offs, mask, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    for i in tl.static_range(len(xs)):
        d = load_f32(xs[i], offs, mask) - b  # kept deltas inline: the interpreter pays per call
        if SELECT:
            d = d * m
        tl.store(part_ptr + pid.to(tl.int64) * len(xs) + i, tl.sum((d * d).to(tl.float64), axis=0))


@triton.jit
def _sce_apply_kernel(
    base_ptr,
    xs,
    ws,
    var_ptr,
    thr_ptr,
    quota_ptr,
    eqb_ptr,
    out_ptr,
    n,
    nblocks,
    SELECT: tl.constexpr,
    TIE_CUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """base + sum_i (d_i * w_i) * agree_i / max(sum_i w_i * agree_i, 1e-6) over the kept deltas
    d_i, agree_i = sign(d_i) == the sign of sum_i d_i (0 counts as +; zeros never agree)."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    m = b
    if SELECT:
        m = _keep_floats(var_ptr, offs, mask, thr_ptr, quota_ptr, eqb_ptr, pid, nblocks, TIE_CUT)
    total = tl.zeros_like(b)
    for i in tl.static_range(len(xs)):
        d = load_f32(xs[i], offs, mask) - b
        if SELECT:
            d = d * m
        total = d if i == 0 else total + d
    elected = tl.where(total >= 0.0, 1.0, -1.0)
    # the second loop reloads the block (an L1/L2 hit) rather than keeping K blocks in registers
    mixed = tl.zeros_like(b)
    div = tl.zeros_like(b)
    for i in tl.static_range(len(xs)):
        d = load_f32(xs[i], offs, mask) - b
        if SELECT:
            d = d * m
        agree = tl.where(elected * d > 0.0, 1.0, 0.0)
        v = (d * ws[i]) * agree
        dw = ws[i] * agree
        if i == 0:
            mixed = v
            div = dw
        else:
            mixed = mixed + v
            div = div + dw
    dv = tl.where(div < _DIVISOR_MIN, _DIVISOR_MIN, div)  # NaN stays NaN, as torch's clamp
    store_f32(out_ptr, offs, b + tl.math.div_rn(mixed, dv), mask)


def _keep_of(nonzero: int, topk: float) -> int:
    """int(nonzero * topk), at least 0 (the reference's k)."""
    return max(0, int(nonzero * topk))


def _variance_rule(base: torch.Tensor, xs: Sequence[torch.Tensor], select_topk: float, block: int):
    """(variances, thr, quota, eqb) of the selection (see the module docstring)."""
    n, dev = base.numel(), base.device
    nblocks = triton.cdiv(n, block)
    var = torch.empty(n, dtype=torch.float32, device=dev)
    nz = torch.empty(nblocks, dtype=torch.int32, device=dev)
    _sce_var_kernel[(nblocks,)](as_arg(base), tuple(as_arg(x) for x in xs), var, nz, n, BLOCK=block, **launch_options())
    k = _keep_of(int(nz.sum(dtype=torch.int64)), select_topk)  # a sync
    thr, quota, eqb = select_magnitude(None, [var], [k], block, DEFAULT)
    return var, thr, quota, eqb


def sce_select(base: torch.Tensor, xs: Sequence[torch.Tensor], select_topk: float, out_dtype: torch.dtype):
    """SCE's variance selection and energies, as kernels/cpu.py's: (rule, [sum of squared kept
    deltas per model]); the rule (variances, thr, quota, per-block ties or None; None when
    select_topk >= 1: every position kept) for `sce_apply`. out_dtype is the CPU kernels' (they
    keep the keys in the output, allocated here); on the GPU the variances have their own
    buffer and `sce_apply` allocates the output."""
    n, block = base.numel(), block_size()
    nblocks = triton.cdiv(n, block)
    rule = None if select_topk >= 1 else _variance_rule(base, xs, select_topk, block)
    part = torch.empty((nblocks, len(xs)), dtype=torch.float64, device=base.device)
    _sce_energies_kernel[(nblocks,)](
        as_arg(base), tuple(as_arg(x) for x in xs), *_rule_args(rule, part), part, n, nblocks,
        **_rule_flags(rule), BLOCK=block, **launch_options(),
    )  # fmt: skip
    return rule, part.sum(dim=0).tolist()


def _rule_args(rule, like: torch.Tensor) -> tuple:
    """(var, thr, quota, eqb) kernel arguments; `like` stands in for the unread ones."""
    if rule is None:
        return like, like, like, like
    var, thr, quota, eqb = rule
    return var, thr, quota, (eqb if eqb is not None else thr)


def _rule_flags(rule) -> dict:
    """The kernels' SELECT and TIE_CUT for a rule."""
    return dict(SELECT=rule is not None, TIE_CUT=rule is not None and rule[3] is not None)


def sce_apply(
    base: torch.Tensor, xs: Sequence[torch.Tensor], rule, omega: Sequence[float], out_dtype: torch.dtype
) -> torch.Tensor:
    """SCE's apply pass with `sce_select`'s rule and the weights omega, into a new tensor."""
    n, block = base.numel(), block_size()
    nblocks = triton.cdiv(n, block)
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    _sce_apply_kernel[(nblocks,)](
        as_arg(base), tuple(as_arg(x) for x in xs), tuple(float(w) for w in omega), *_rule_args(rule, out),
        as_arg(out), n, nblocks, **_rule_flags(rule), BLOCK=block, **launch_options(),
    )  # fmt: skip
    return out
