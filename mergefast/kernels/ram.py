"""RAM and RAM+ (`ram`, `ramplus_tl`) on the fused kernels: the host side.

ram is one elementwise pass (csrc/cpu/ram.cpp, kernels/triton/ram.py): per element the
deltas, which are active (|delta| > epsilon), their count, and the result, stored once.
ramplus_tl scales each model's unique updates by lambda_i, which depends on counts over the
whole tensor: a counting pass first (per model, int64), lambda_i from the counts on the host
with the reference's own float64 formula (`boost_of_counts`), then the elementwise pass.

Numerics: the reference's float32 operations in its order, so the results are bit-identical,
but for 5 models or more, where torch sums the active deltas of an element in another order
than model order (its cascade sum): the shared mean may then differ in the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods import ram as _ram_ref
from ..methods.numerics import check_same_shape, result_dtype
from ..methods.ram import DEFAULT_ALPHA, DEFAULT_EPSILON, DEFAULT_R, boost_of_counts
from ..native import RAM_MAX_MODELS as MAX_MODELS
from .dispatch import _choose, _dispatch


def lambdas(impl, base: torch.Tensor, xs: Sequence[torch.Tensor], epsilon: float, r: float, alpha: float):
    """RAM+'s per-model factors lambda_i (rounded to float32, as the reference applies them)
    from the counting pass of backend `impl`."""
    shared, unique = impl.ram_counts(base, xs, epsilon)
    boost = boost_of_counts(torch.tensor(shared), torch.tensor(unique), r, alpha, epsilon)
    return boost.to(torch.float32).tolist()


def ram(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    epsilon: float = DEFAULT_EPSILON,
    plus: bool = False,
    r: float = DEFAULT_R,
    alpha: float = DEFAULT_ALPHA,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`mergefast.methods.ram` on the fused kernels: one elementwise pass (two with `plus`,
    i.e. `ramplus_tl`: a counting pass for lambda_i first). More than 255 models run the
    reference."""
    tensors = list(tensors)
    epsilon, r, alpha = float(epsilon), float(r), float(alpha)

    def reference():
        return _ram_ref(base, tensors, epsilon=epsilon, plus=plus, r=r, alpha=alpha, out_dtype=out_dtype)

    all_inputs = [base, *tensors]
    check_same_shape(all_inputs, "ram")
    out = result_dtype(all_inputs, out_dtype)
    if not tensors or len(tensors) > MAX_MODELS or _choose(all_inputs, out) == "torch":
        return reference()
    if base.numel() == 0:
        return torch.empty(base.shape, dtype=out, device=base.device)
    b, xs = base.contiguous(), [x.contiguous() for x in tensors]

    def run(impl):
        lam = lambdas(impl, b, xs, epsilon, r, alpha) if plus else None
        return impl.ram_apply(b, xs, epsilon, lam, out)

    return _dispatch(all_inputs, out, reference, run)


def ramplus_tl(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    epsilon: float = DEFAULT_EPSILON,
    r: float = DEFAULT_R,
    alpha: float = DEFAULT_ALPHA,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`mergefast.methods.ramplus_tl` on the fused kernels (`ram` with `plus`)."""
    return ram(base, tensors, epsilon=epsilon, plus=True, r=r, alpha=alpha, out_dtype=out_dtype)
