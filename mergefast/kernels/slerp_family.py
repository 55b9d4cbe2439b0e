"""The SLERP family on the fused kernels (nuslerp, model_stock, nearswap): the host side.

nuslerp and model_stock need reductions over the whole tensor (or each row) before any output
element: one pass (`impl.gram`, csrc/cpu/gram.cpp, kernels/triton/slerp_family.py) reads
every input once and returns, per row, all the dot products <d_i, d_j> of the vectors d_i =
x_i - base in float64. The per-row scalars come from them with the reference's own formulas
(nuslerp's float32 `slerp_factors` in numpy, methods/gram_scalars.py, which the torch-free
engine shares; Model Stock's `pair_cosine`, `mean_of`, `stock_ratio` in float64, t rounded
once), and one elementwise pass writes the output in the reference's order of operations.
nearswap has no reduction: one pass.

Numerics: the reductions are float64 sums of exact products rounded once to float32 (nuslerp's
cosine once, from the dot and the norms; Model Stock's t), where the reference sums float32
products in torch's float32 order: their scalars differ in the last bits, and so
may every output element (the tests apply DESIGN's tolerance rule). Given the same scalars,
the elementwise passes are bit-identical, and nearswap always is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods import model_stock as _model_stock_ref
from ..methods import nearswap as _nearswap_ref
from ..methods import nuslerp as _nuslerp_ref
from ..methods.gram_scalars import nuslerp_factors as gram_factors
from ..methods.model_stock import mean_of, pair_cosine, stock_ratio
from ..methods.numerics import check_same_shape, result_dtype
from ..methods.nuslerp import nuslerp_t
from ..methods.scalars import gram_column as pair_index  # the Gram row's layout, shared with host/
from ..methods.scalars import nuslerp_view, rows_cols
from ..native import GRAM_MAX_INPUTS
from .dispatch import _choose, _dispatch


def nuslerp_factors(gram: torch.Tensor, t: float) -> torch.Tensor:
    """Per row (c0, c1, dv) of nuslerp's elementwise pass, float32 (rows, 3), on the Gram
    rows' device: methods/gram_scalars.py's (numpy, shared with the torch-free engine)."""
    factors = gram_factors(gram.double().cpu().numpy(), t)
    return torch.from_numpy(factors).to(gram.device)


def stock_ratios(gram: torch.Tensor, k: int) -> torch.Tensor:
    """Per row t = stock_ratio(mean pairwise cosine), float32 (rows,), from the float64 Gram
    rows of the k task vectors: the reference's `pair_cosine`, `mean_of` and `stock_ratio` in
    float64, t rounded once to float32. t is ill-conditioned on short rows of nearly opposite
    task vectors (filter_wise over a conv kernel's 3 taps), where this puts the outputs ~3x
    closer to the float64 result than the float32 reference's: summed error 0.28 against 0.84
    over 6.4M elements of random 3- to 4096-element rows (benchmarks/model_stock_accuracy.py);
    the reference's float32 formulas on the rounded norms and dots gave 0.85."""
    gram = gram.double()
    norms = [gram[:, pair_index(i, i, k)].sqrt().unsqueeze(-1) for i in range(k)]
    cosines = [
        pair_cosine(gram[:, pair_index(i, j, k)].unsqueeze(-1), norms[i], norms[j])
        for i in range(k)
        for j in range(i + 1, k)
    ]
    return stock_ratio(mean_of(cosines), k).float().flatten().contiguous()


def nuslerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    flatten: bool = True,
    row_wise: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`mergefast.methods.nuslerp` on the fused kernels: one reduction pass, one elementwise
    pass, over the whole tensor, its rows, or (`row_wise` without `flatten`, 2+ dims) the
    columns of its view as shape[0] rows (the reference's slices along axis 0)."""
    tensors = list(tensors)
    weights = [float(w) for w in weights]

    def reference():
        return _nuslerp_ref(tensors, weights, base, flatten=flatten, row_wise=row_wise, out_dtype=out_dtype)

    if len(tensors) != 2 or len(weights) != 2:
        return reference()  # raises the reference's error
    all_inputs = [*tensors, *([base] if base is not None else [])]
    check_same_shape(all_inputs, "nuslerp")
    out = result_dtype(all_inputs, out_dtype)
    if _choose(all_inputs, out) == "torch":
        return reference()
    if tensors[0].numel() == 0:
        return torch.empty(tensors[0].shape, dtype=out, device=tensors[0].device)
    rows, cols, columns = nuslerp_view(tensors[0].shape, flatten, row_wise)
    x0, x1 = tensors[0].contiguous(), tensors[1].contiguous()
    b = base.contiguous() if base is not None else None
    t = nuslerp_t(weights[0], weights[1])

    def run(impl):
        factors = nuslerp_factors(impl.gram(b, [x0, x1], rows, cols, columns=columns), t)
        return impl.nuslerp_apply(b, x0, x1, rows, cols, factors, out, columns=columns)

    return _dispatch(all_inputs, out, reference, run)


def model_stock(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    filter_wise: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`mergefast.methods.model_stock` on the fused kernels: one reduction pass (every norm and
    pairwise dot of the task vectors, per row with `filter_wise`), one elementwise pass."""
    tensors = list(tensors)

    def reference():
        return _model_stock_ref(base, tensors, filter_wise=filter_wise, out_dtype=out_dtype)

    all_inputs = [base, *tensors]
    if len(tensors) < 2 or len(tensors) > GRAM_MAX_INPUTS:
        return reference()  # fewer: the reference's error; more: past the kernels' Gram size
    check_same_shape(all_inputs, "model_stock")
    out = result_dtype(all_inputs, out_dtype)
    if _choose(all_inputs, out) == "torch":
        return reference()
    if base.numel() == 0:
        return torch.empty(base.shape, dtype=out, device=base.device)
    rows, cols = rows_cols(base.shape, filter_wise)
    b, xs = base.contiguous(), [x.contiguous() for x in tensors]

    def run(impl):
        t = stock_ratios(impl.gram(b, xs, rows, cols), len(xs))
        return impl.model_stock_apply(b, xs, rows, cols, t, out)

    return _dispatch(all_inputs, out, reference, run)


def nearswap(base: torch.Tensor, other: torch.Tensor, t: float, *, out_dtype: torch.dtype | None = None):
    """`mergefast.methods.nearswap` on the fused kernels: one elementwise pass, bit-identical."""
    t = float(t)

    def reference():
        return _nearswap_ref(base, other, t, out_dtype=out_dtype)

    check_same_shape([base, other], "nearswap")
    out = result_dtype([base, other], out_dtype)
    if _choose([base, other], out) == "torch":
        return reference()
    if base.numel() == 0:
        return torch.empty(base.shape, dtype=out, device=base.device)
    b, x = base.contiguous(), other.contiguous()
    return _dispatch([base, other], out, reference, lambda impl: impl.nearswap(b, x, t, out))
