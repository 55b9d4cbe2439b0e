"""RAM and RAM+ (ram, ramplus_tl) on the GPU, as csrc/cpu/ram.cpp on the CPU; the host side is
kernels/ram.py.

Passes over the inputs: ram one (`_ram_kernel`: per element the deltas, active = |delta| >
eps, their count, the result, stored once); ramplus_tl two: `_count_kernel` first (per
program and model, #(active & count > 1) and #(active & count == 1), summed by torch in
int64), the per-model lambda_i on the host, then `_ram_kernel`. In the reference's float32
order (the shared sum in model order from 0, divided by the count), one rounding on store.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .utils import as_arg, block_size, block_span, launch_options, load_f32, store_f32


@triton.jit
def _ram_kernel(base_ptr, xs, lambdas, out_ptr, n, eps, PLUS: tl.constexpr, BLOCK: tl.constexpr):
    """out = (b + unique) + shared; unique the one active delta (times lambda_i with PLUS)
    where count == 1, shared the mean of the active deltas where count > 1."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    cnt = tl.zeros([BLOCK], dtype=tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    uni = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(len(xs)):
        d = load_f32(xs[i], offs, mask) - b
        act = tl.abs(d) > eps  # NaN: never active
        cnt = cnt + tl.where(act, 1.0, 0.0)
        total = total + tl.where(act, d, 0.0)
        if PLUS:
            uni = uni + tl.where(act, d * lambdas[i], 0.0)
    if not PLUS:
        uni = total
    u = tl.where(cnt == 1.0, uni, 0.0)
    m = tl.where(cnt > 1.0, tl.math.div_rn(total, tl.maximum(cnt, 1.0)), 0.0)
    store_f32(out_ptr, offs, (b + u) + m, mask)


@triton.jit
def _count_kernel(base_ptr, xs, part_ptr, n, eps, BLOCK: tl.constexpr):
    """part[pid, 2i] = #(active_i & count > 1), part[pid, 2i + 1] = #(active_i & count == 1)
    over this program's block."""
    pid, offs, mask = block_span(n, BLOCK)
    b = load_f32(base_ptr, offs, mask)
    cnt = tl.zeros([BLOCK], dtype=tl.int32)
    for i in tl.static_range(len(xs)):
        cnt = cnt + ((tl.abs(load_f32(xs[i], offs, mask) - b) > eps) & mask).to(tl.int32)  # eps < 0: mask
    for i in tl.static_range(len(xs)):
        act = (tl.abs(load_f32(xs[i], offs, mask) - b) > eps) & mask  # a second read, from the L2 cache
        row = part_ptr + pid.to(tl.int64) * (2 * len(xs)) + 2 * i
        tl.store(row, tl.sum((act & (cnt > 1)).to(tl.int32), axis=0))
        tl.store(row + 1, tl.sum((act & (cnt == 1)).to(tl.int32), axis=0))


def ram_counts(base: torch.Tensor, xs: Sequence[torch.Tensor], epsilon: float) -> tuple[list[int], list[int]]:
    """Per model, #(active and count > 1) and #(active and count == 1) (RAM+'s lambda)."""
    n, block, k = base.numel(), block_size(), len(xs)
    programs = triton.cdiv(n, block)
    part = torch.empty((programs, 2 * k), dtype=torch.int32, device=base.device)
    _count_kernel[(programs,)](
        as_arg(base), tuple(as_arg(x) for x in xs), part, n, float(epsilon), BLOCK=block, **launch_options()
    )
    counts = part.sum(dim=0, dtype=torch.int64).tolist()
    return counts[0::2], counts[1::2]


def ram_apply(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    epsilon: float,
    lambdas: Sequence[float] | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """RAM's elementwise pass (RAM+ with per-model `lambdas`) into a new tensor."""
    out = torch.empty(base.shape, dtype=out_dtype, device=base.device)
    n, block = out.numel(), block_size()
    plus = lambdas is not None
    _ram_kernel[(triton.cdiv(n, block),)](
        as_arg(base),
        tuple(as_arg(x) for x in xs),
        tuple(float(v) for v in (lambdas if plus else [1.0] * len(xs))),
        as_arg(out),
        n,
        float(epsilon),
        PLUS=plus,
        BLOCK=block,
        **launch_options(),
    )
    return out
