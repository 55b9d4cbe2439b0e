"""Shared Triton helpers: dtype-generic loads/stores with float32 in registers, block sizes.

bf16 tensors are passed to the kernels viewed as int16 and converted with shifts (exact, and
it works under TRITON_INTERPRET=1, whose bf16 support is broken: triton#4972); bf16 outputs
are rounded to nearest even by hand, as c10::BFloat16 does (NaN -> 0x7FC0).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Elements per program and warps, chosen by a sweep on an H200 (benchmarks/gpu_check.sh; 7B
# layer, base + 3 x 11008 x 4096 bf16; BLOCK 1024/2048/4096/8192 x warps 4/8/16):
#   linear: 2048 x 8 -> 0.089 ms, 4.05 TB/s (84 % of HBM); 1024 x 8 -> 0.122 ms; 8192 x 4 ->
#   0.092 ms; TIES apply (density 1): 2048 x 8 -> 0.228 ms, best; 8192 x 8 -> 0.411 ms;
#   SLERP: 2048 x 4 -> 0.176 ms, 2048 x 8 -> 0.202 ms.
BLOCK = 2048
NUM_WARPS = 8
# Under the interpreter each program runs as numpy code, one after the other: small blocks
# keep the tests on many blocks (tie scans across blocks) with small tensors.
INTERPRET_BLOCK = 256


# Under the interpreter, the histogram passes' programs: few, so that every program loops
# over several blocks.
INTERPRET_HIST_PROGRAMS = 3
# Tie quota of a model whose threshold-equal keys are all kept (no per-block tie counts).
NO_QUOTA = 1 << 62
# Threshold of a model that keeps nothing: above every 31-bit key.
KEEP_NONE = 1 << 31
# The key of every NaN (magnitude_key): just above +inf's 0x7F800000.
NAN_KEY = 0x7F800001
_NAN_KEY = tl.constexpr(NAN_KEY)


def interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def block_size() -> int:
    return INTERPRET_BLOCK if interpret() else BLOCK


def hist_programs(device: torch.device, nblocks: int, per_sm: int) -> int:
    """Grid size of the histogram passes (a persistent grid, each program looping over
    blocks): `per_sm` programs per SM (SelectionOptions.hist_programs_per_sm), at most one a
    block."""
    if interpret():
        return max(1, min(nblocks, INTERPRET_HIST_PROGRAMS))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(nblocks, sms * per_sm))


def launch_options() -> dict:
    """num_warps, and no FMA contraction: a*b+c rounds twice, as the torch references do."""
    if interpret():
        return {}
    return {"num_warps": NUM_WARPS, "enable_fp_fusion": False}


def as_arg(t: torch.Tensor | None) -> torch.Tensor | None:
    """The tensor as the kernels see it: bf16 viewed as int16 (converted in registers); None
    (a selection without a base: load_f32) stays None."""
    return t.view(torch.int16) if t is not None and t.dtype == torch.bfloat16 else t


@triton.jit
def block_span(n, BLOCK: tl.constexpr):
    """This program's block of a flat tensor of n elements: the program id, the elements'
    offsets (int64: tensors may pass 2^31 elements) and which of them are < n."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return pid, offs, offs < n


@triton.jit
def load_f32(ptr, offs, mask):
    """Load and convert to float32 in registers; int16 pointers carry bf16 bit patterns; a
    None pointer (a constexpr: the selection's missing base, select/__init__.py) reads zeros."""
    if ptr is None:
        return tl.full(offs.shape, 0.0, tl.float32)
    elif ptr.dtype.element_ty == tl.int16:
        bits = tl.load(ptr + offs, mask=mask, other=0).to(tl.int32)
        return (bits << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_f32(ptr, offs, value, mask):
    """Round float32 `value` once to the output dtype and store (int16 pointer = bf16)."""
    if ptr.dtype.element_ty == tl.int16:
        u = value.to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(value != value, 0x7FC0, r)
        tl.store(ptr + offs, r.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    else:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def magnitude_key(d):
    """31-bit key of |d| whose integer order is the order of magnitudes (sign bit cleared),
    every NaN folded onto NAN_KEY, just above +inf: the reference's stable sort ranks NaNs
    equal (lowest index first), whatever their payloads."""
    return tl.minimum(d.to(tl.int32, bitcast=True) & 0x7FFFFFFF, _NAN_KEY)


@triton.jit
def masked_histogram(values, sel, BINS: tl.constexpr):
    """tl.histogram of `values` (in [0, BINS)) over the lanes where `sel` holds."""
    counts = tl.histogram(tl.where(sel, values, 0), BINS)
    # the unselected lanes were counted in bin 0: take them out again
    return counts - tl.where(tl.arange(0, BINS) == 0, tl.sum((~sel).to(tl.int32), axis=0), 0)
