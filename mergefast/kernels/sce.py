"""SCE (`mergefast.methods.sce`) on the fused kernels: the host side of one call.

The kernels (csrc/cpu/sce.cpp and sce_apply.cpp; kernels/triton/sce.py on the GPU) run two
calls, each reading base + K models block by block: `sce_select` computes every position's
float32 variance across the task vectors once (on the CPU its top bits are kept for the apply
in the output's own slots, the exact value recomputed for the few near the threshold), finds
the k largest (an exact histogram top-k of their bits, ties lowest flat index first: the
reference's stable sort) and sums each model's squared kept deltas; `sce_apply` runs the sign
election and the weighted disjoint merge with the weights this module computes.

The weights: the reference takes mean(tau_i^2) as torch's float32 `mean()` (a float32 sum,
whose order depends on the device, the CPU's vector width and the thread count, then / n).
The kernels sum the float32 squares in float64 in a fixed order (the same on any thread
count) and round the sum to float32; `/ n` and the normalisation are the reference's own
torch operations (`weights_of_energies`). So the weights equal the reference's except
where torch's float32 sum differs from the correctly rounded one, in its last bits: the
kept set and the arithmetic are the reference's, and the result is bit-identical to a
reference whose energies are float64 sums (DESIGN's tolerance rule against the plain one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods.sce import weights_of_energies


def weights(sums: Sequence[float], n: int) -> list[float]:
    """omega from the kernels' float64 sums of squared kept deltas over n elements."""
    energy = torch.tensor(list(sums), dtype=torch.float64).to(torch.float32) / n
    return weights_of_energies(energy).tolist()


def run(impl, base: torch.Tensor, xs: Sequence[torch.Tensor], select_topk: float, out_dtype: torch.dtype):
    """SCE on backend `impl` (kernels.cpu or kernels.triton.ops): the selection with the
    energies, then the apply.
    Inputs contiguous, n > 0, at least one model, validated by the kernel API."""
    rule, sums = impl.sce_select(base, xs, select_topk, out_dtype)
    return impl.sce_apply(base, xs, rule, weights(sums, base.numel()), out_dtype)
