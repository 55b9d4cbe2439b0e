"""DARE (`dare_linear`, `dare_ties`) on the fused kernels: the host side of one call.

The kernels (csrc/cpu/dare.cpp, kernels/triton/dare.py) draw each element's Bernoulli keep
from the counter-based generator of `methods/random.py`, evaluated in registers: this module
gives them each model's stream key (seed, tensor name, model index), its keep probability
and, with `rescale`, its L1 scale.

The L1 rescale (`methods.task_arithmetic.l1_rescale`) multiplies a model's kept deltas by
sum|delta| / sum|kept delta|. The reference takes both sums with torch's float32 `sum()`,
whose order depends on the device, the CPU's vector width and the thread count; the kernels
sum in float64 in a fixed order (the same on any thread count) and round to float32, so the
scale equals the reference's except where torch's float32 sum differs from the correctly
rounded one, in its last bit. The masks are the reference's exactly, and without rescale
(or at density 0 and 1) the results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods.random_keys import stream_keys
from ..methods.scalars import l1_scales
from ..native import MASK_WORD_MODELS  # keep bits in the 16-bit word della_apply reads


def run(
    impl,
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    rescale: bool,
    seed: int,
    tensor_name: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """DARE on backend `impl` (kernels.cpu or kernels.triton.ops): the norms pass when
    `rescale`, then the apply pass. Inputs contiguous, validated by the kernel API. On the CPU
    with at most MASK_WORD_MODELS models the norms pass leaves the keep bits in the output and
    DELLA's apply reads them there instead of drawing every element again (csrc/cpu/dare.cpp:
    0.83-0.96x the time)."""
    keys = stream_keys(seed, tensor_name, len(xs))
    scales = [1.0] * len(xs)
    if rescale and hasattr(impl, "dare_masks") and len(xs) <= MASK_WORD_MODELS:
        out, sums = impl.dare_masks(base, xs, keys, densities, out_dtype)
        return impl.della_apply(base, xs, weights, l1_scales(sums), consensus, normalize, divisor, lambda_, out)
    if rescale:
        scales = l1_scales(impl.dare_norms(base, xs, keys, densities))
    return impl.dare(base, xs, weights, keys, densities, scales, consensus, normalize, divisor, lambda_, out_dtype)
