"""DARE (`dare_linear`, `dare_ties`) on the GPU, as csrc/cpu/dare.cpp on the CPU.

Each element's keep draw u comes from the counter-based generator of methods/random.py,
evaluated in registers (`uniform`: splitmix64 on uint64, wrapping): the masks are the
reference's on every device and block size. Passes over base + K models:
  1. with the L1 rescale only, `_dare_norms_kernel`: per block, sum |d| and sum |kept d| per
     model in float64; the host sums the blocks (kernels/dare.py turns them into scales);
  2. `_dare_kernel`: per element, v_i = ((u_i < p_i ? d_i : 0) * s_i) * w_i (the reference's
     order), then the TIES sign election and disjoint mean, or the plain sum; stored once.
No K x N temporaries, no sorts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32

# splitmix64's constants (methods/random.py); literals >= 2^63 are uint64 in Triton
_GOLDEN = tl.constexpr(0x9E3779B97F4A7C15)
_MIX1 = tl.constexpr(0xBF58476D1CE4E5B9)
_MIX2 = tl.constexpr(0x94D049BB133111EB)


@triton.jit
def uniform(key, offs):
    """random.uniform's draw of flat elements `offs` (int64) of the stream `key` (uint64):
    mix64(key + GOLDEN * (i + 1)), top 24 bits, times 2^-24 (exact in float32)."""
    z = key + (offs + 1).to(tl.uint64) * _GOLDEN
    z = (z ^ (z >> 30)) * _MIX1
    z = (z ^ (z >> 27)) * _MIX2
    z = z ^ (z >> 31)
    return (z >> 40).to(tl.int32).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def kept_delta(x_ptr, b, offs, mask, key_ptr, i, p):
    """Model i's delta where its draw keeps it (u < p, float32), else 0; and |delta|."""
    d = load_f32(x_ptr, offs, mask) - b
    key = tl.load(key_ptr + i).to(tl.uint64, bitcast=True)
    return tl.where(uniform(key, offs) < p, d, 0.0), d


@triton.jit
def _dare_norms_kernel(base_ptr, xs, ps, key_ptr, part_ptr, n, BLOCK: tl.constexpr):
    """part[pid, i] = (sum |d_i|, sum |kept d_i|) of this block, in float64."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    for i in tl.static_range(len(xs)):
        kept, d = kept_delta(xs[i], b, offs, mask, key_ptr, i, ps[i])
        at = part_ptr + (pid.to(tl.int64) * len(xs) + i) * 2
        tl.store(at, tl.sum(tl.abs(d).to(tl.float64), axis=0))
        tl.store(at + 1, tl.sum(tl.abs(kept).to(tl.float64), axis=0))


@triton.jit
def _dare_kernel(
    base_ptr,
    xs,
    ws,
    ps,
    ss,
    key_ptr,
    out_ptr,
    n,
    divisor,
    lam,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    total = tl.zeros_like(b)
    for i in tl.static_range(len(xs)):
        total = total + (kept_delta(xs[i], b, offs, mask, key_ptr, i, ps[i])[0] * ss[i]) * ws[i]
    if CONSENSUS:
        # elect the sign of the sum (0 counts as +); zero deltas never agree. The second
        # loop reloads the block (an L1/L2 hit) and redraws u rather than keeping K blocks.
        pos = total >= 0.0
        acc = tl.zeros_like(b)
        dacc = tl.zeros_like(b)
        for i in tl.static_range(len(xs)):
            wd = (kept_delta(xs[i], b, offs, mask, key_ptr, i, ps[i])[0] * ss[i]) * ws[i]
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


def _keys(keys: Sequence[int], device) -> torch.Tensor:
    """The unsigned 64-bit stream keys as an int64 tensor (same bits)."""
    signed = [k - (1 << 64) if k >= 1 << 63 else k for k in keys]
    return torch.tensor(signed, dtype=torch.int64, device=device)


def dare_norms(
    base: torch.Tensor, xs: Sequence[torch.Tensor], keys: Sequence[int], densities: Sequence[float]
) -> list[float]:
    """[sum |d_0|, sum |kept d_0|, sum |d_1|, ...] in float64 (blocks summed on the device)."""
    n, block = base.numel(), block_size()
    nblocks = triton.cdiv(n, block)
    part = torch.empty((nblocks, len(xs), 2), dtype=torch.float64, device=base.device)
    _dare_norms_kernel[(nblocks,)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(p) for p in densities),
        _keys(keys, base.device),
        part,
        n,
        BLOCK=block,
        **launch_options(),
    )
    return part.sum(dim=0).flatten().tolist()


def dare_forward(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    keys: Sequence[int],
    densities: Sequence[float],
    scales: Sequence[float],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """DARE's apply pass into a new tensor (one program per block)."""
    n, block = base.numel(), block_size()
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    _dare_kernel[(triton.cdiv(n, block),)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(w) for w in weights),
        tuple(float(p) for p in densities),
        tuple(float(s) for s in scales),
        _keys(keys, base.device),
        as_arg(out),
        n,
        float(divisor),
        float(lambda_),
        CONSENSUS=bool(consensus),
        NORMALIZE=bool(normalize),
        SCALE=float(lambda_) != 1.0,
        BLOCK=block,
        **launch_options(),
    )
    return out
