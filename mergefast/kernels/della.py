"""DELLA (`della`, `della_linear`) on the fused kernels: the host side of one call.

The reference (`methods.task_arithmetic.della_mask`) ranks |delta| along each row (the last
axis; ties lowest index first, NaN above inf), turns the rank into a keep probability
p = (density - epsilon) + (rank / (cols - 1)) * (2 epsilon) in float32 and keeps an element
where the counter-based draw u < p (`methods/random.py`). The kernels (csrc/cpu/della.cpp,
kernels/triton/della.py) do exactly that per row, in cache, with the draws evaluated in
registers, in two passes:

1. `della_masks`: each model's keep bits, packed into a 16-bit word stored in the element's
   own slot of the output (so no n-sized scratch; at most `MAX_MODELS` models), and the L1
   norms sum |delta|, sum |kept delta| per model;
2. `della_apply`: the kept deltas times the L1 scale (`rescale`) and the weight, then the TIES
   sign election and disjoint mean (`della`) or the plain sum (`della_linear`).

This module gives them each model's stream key and keep rule (pmin, span) as the reference
computes them. The masks are the reference's exactly; the L1 scales follow kernels/dare.py
(norms summed in float64: equal to the reference's float32 sums but in their last bit), so
without `rescale` the results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods.scalars import keep_rule, rows_cols
from .dare import MASK_WORD_MODELS, l1_scales, stream_keys

# Keep bits per element: a 16-bit word in the output slot (the smallest output dtype).
MAX_MODELS = MASK_WORD_MODELS


def run(
    impl,
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    rescale: bool,
    seed: int,
    tensor_name: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """DELLA on backend `impl` (kernels.cpu or kernels.triton.ops): the masks pass, the L1
    scales when `rescale`, the apply pass. Inputs contiguous, validated by the kernel API
    (density +- epsilon inside (0, 1), at most MAX_MODELS models)."""
    cols = rows_cols(base.shape)[1]  # the reference's rows: the last axis
    rules = [keep_rule(float(d), float(e), cols) for d, e in zip(densities, epsilons)]
    keys = stream_keys(seed, tensor_name, len(xs))
    out, sums = impl.della_masks(base, xs, keys, [r[0] for r in rules], [r[1] for r in rules], cols, out_dtype)
    scales = l1_scales(sums) if rescale else [1.0] * len(xs)
    return impl.della_apply(base, xs, weights, scales, consensus, normalize, divisor, lambda_, out)
