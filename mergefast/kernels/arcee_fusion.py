"""arcee_fusion (`mergefast.methods.arcee_fusion`) on the fused kernels: the host side.

Two kernel calls, two or three reads of base + other (the CPU kernel's second pass reads the
keys it left in the output), and no tensor of the inputs' size but the output (the reference
builds the float32 copies, both softmaxes, the importance and its three `kthvalue`s: 3.7 s for
a 7B layer on 2 cores):

- `impl.arcee_select` computes each row's KL(softmax(other) + 1e-8 || softmax(base) + 1e-8)
  and the three order statistics of importance = |other - base| * KL at the reference's
  ranks floor(q (n - 1)), q = 0.25, 0.5, 0.75, exactly (histograms of the float32 order keys,
  torch.kthvalue's order: every NaN above +inf), and makes the output tensor;
- the threshold median + 1.5 (Q3 - Q1) is the reference's float32 formula (`methods.scalars.arcee_threshold`);
- `impl.arcee_apply` writes base + (importance >= threshold ? other - base : 0) into it, rounded once.

Numerics: the reference computes the KL in float32 with torch's exp, log and summation order,
which cancels on fine-tune deltas (off by 1e-4 to 1e+1 relative); the kernels' KL is within
~1e-7 relative of the float64 reference (Triton: float64 math rounded once; the CPU kernel:
sum q f(p / q), without that cancellation, float32 terms summed in float64, see
csrc/cpu/arcee_math.h). Their KLs differ, so importance values at the threshold may rank
differently, and elements whose importance lies within that difference of the threshold may be
kept by one and not the other. Given the kernels' KL (what `arcee_select` returns), the
threshold and the output are the reference's bit for bit: the tests check that, and the KL
against the float64 reference by DESIGN's tolerance rule. NaN follows the reference: a NaN in
a row makes its KL and importances NaN, which rank above +inf; a NaN threshold keeps nothing.
"""

from __future__ import annotations

import torch

from ..methods import arcee_fusion as _reference
from ..methods.numerics import check_same_shape, result_dtype
from ..methods.scalars import arcee_ranks, arcee_threshold
from ..methods.scalars import rows_cols as arcee_rows
from .dispatch import _choose, _dispatch


def rows_cols(x: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the reference's rows along the last axis (a 0-d tensor: one element)."""
    return arcee_rows(x.shape)


def run(impl, base: torch.Tensor, other: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """arcee_fusion on backend `impl` (contiguous inputs, at least one element)."""
    rows, cols = rows_cols(base)
    kl, values, out = impl.arcee_select(base, other, rows, cols, arcee_ranks(base.numel()), out_dtype)
    return impl.arcee_apply(base, other, rows, cols, kl, arcee_threshold(values), out)


def arcee_fusion(base: torch.Tensor, other: torch.Tensor, *, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`mergefast.methods.arcee_fusion` on the fused kernels: the selection call (per-row KL and
    the exact quartiles of the importance), then one elementwise pass (see the module)."""

    def reference():
        return _reference(base, other, out_dtype=out_dtype)

    check_same_shape([base, other], "arcee_fusion")
    out = result_dtype([base, other], out_dtype)
    if base.numel() == 0 or _choose([base, other], out) == "torch":
        return reference()  # empty: the reference's own error (no quantile of nothing)
    b, x = base.contiguous(), other.contiguous()

    def fused(impl):
        if not hasattr(impl, "arcee_select"):  # a backend without arcee_fusion kernels
            return reference()
        return run(impl, b, x, out).reshape(base.shape)

    return _dispatch([base, other], out, reference, fused)
