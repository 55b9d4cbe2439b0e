"""multislerp and karcher on the fused kernels: the host side.

Every vector the references build (the unit vectors, their weighted mean, the tangents, the
Karcher iterates) is a linear combination of the inputs d_i (x_i - base, or x_i without a
base). So one reduction pass (`impl.gram`: csrc/cpu/gram.cpp, kernels/triton/slerp_family.py)
gives the K x K Gram matrix G of the d_i in float64, the references' math runs on K-vectors of
coefficients with G standing in for every dot product (<sum a_i d_i, sum b_j d_j> = a^T G b:
methods/gram_scalars.py, which the torch-free engine shares), and one elementwise pass writes
result = base + sum_i c_i d_i (the task-arithmetic kernel without sparsification) or sum_i c_i
x_i (the linear kernel). Two passes over the inputs.

Numerics: the scalars are float64 where the references compute float32 vectors, and the
result is one weighted sum of the inputs where the references scale an iterate: not bit-
identical, within DESIGN's tolerance rule (the tests). Karcher's stopping test |T| < tol runs
on a float64 |T| that tracks the float64 reference's, where the float32 reference's |T| carries
~1e-7 of rounding: an input whose |T| falls within that of tol at some iteration may take one
step more or fewer there than in the float32 reference (a 1e-5 relative difference).
Near a degenerate configuration the coefficients lose that agreement, and the tensor runs the
reference: where the weighted sum of the d_i would cancel (an input near the antipode of the
Karcher mean, a nearly vanishing mean direction: methods/gram_scalars.py's `cancels`; 25 float32
ulps off in one such case, and 1.3% where the quadratic forms of G cancelled as well), and where
multislerp's mean direction vanishes (|m| < eps on G: the float32 reference's rounding decides
whether it does there, hence its AntipodalError or its two-input interpolation).
Inputs at an angle of pi to the Karcher iterate (opposite directions) make its tangent
ill-posed (theta / sin theta with sin theta ~ 0). Exactly opposite inputs add no tangent, as in
the references (their u_i - dot_i u is exactly 0); within ~1e-6 rad of pi this one drops the
term too, where the float32 reference, the float64 one and this one disagree anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..methods import karcher as _karcher_ref
from ..methods import multislerp as _multislerp_ref
from ..methods.gram_scalars import (
    cancels,
    gram_matrix,
    karcher_coefficients,
    multislerp_coefficients,
    multislerp_weights,
)
from ..methods.karcher import DEFAULT_MAX_ITER, DEFAULT_TOL
from ..methods.multislerp import DEFAULT_EPS
from ..methods.numerics import check_same_shape, result_dtype
from ..native import GRAM_MAX_INPUTS as MAX_INPUTS
from .dispatch import _choose, _dispatch


def _gram(packed: torch.Tensor, k: int) -> list[list[float]]:
    """The k x k Gram matrix (methods/gram_scalars.py) of one packed float64 Gram row."""
    return gram_matrix(packed.reshape(-1).double().cpu().tolist(), k)


def _combine(impl, b, xs, coefficients: Sequence[float], out: torch.dtype) -> torch.Tensor:
    """base + sum_i c_i (x_i - base), or sum_i c_i x_i without a base: one elementwise pass."""
    c = [float(v) for v in coefficients]
    if b is None:
        return impl.linear(xs, c, False, 1.0, out)
    return impl.task_arithmetic(b, xs, c, None, False, False, 1.0, 1.0, out)


def _not_the_input(result: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """A single input comes back as it is from the references: a copy, as the kernels give."""
    return result.clone() if result is tensor else result


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = DEFAULT_EPS,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`mergefast.methods.multislerp` on the fused kernels: the Gram pass, the reference's
    math on coefficients (`multislerp_coefficients`), one weighted pass. A single input, more
    than 64, and the degenerate configurations of the module docstring run the reference
    (which raises AntipodalError)."""
    tensors, weights, eps = list(tensors), [float(w) for w in weights], float(eps)

    def reference():
        kw = dict(normalize_weights=normalize_weights, eps=eps, out_dtype=out_dtype)
        return _multislerp_ref(tensors, weights, base, **kw)

    if len(tensors) < 2 or len(tensors) != len(weights) or len(tensors) > MAX_INPUTS:
        return _not_the_input(reference(), tensors[0])  # the reference raises for bad arguments
    all_inputs = [*tensors, *([base] if base is not None else [])]
    check_same_shape(all_inputs, "multislerp")
    out = result_dtype(all_inputs, out_dtype)
    if _choose(all_inputs, out) == "torch" or tensors[0].numel() == 0:
        return reference()  # empty: the reference's AntipodalError for 3+ inputs
    b, xs = (base.contiguous() if base is not None else None), [x.contiguous() for x in tensors]
    w64 = multislerp_weights(weights, normalize_weights)

    def run(impl):
        g = _gram(impl.gram(b, xs, 1, xs[0].numel()), len(xs))
        c = multislerp_coefficients(g, w64, eps)
        if c is None or cancels(g, c):
            return None  # the reference decides, outside the backend's failure handling
        return _combine(impl, b, xs, c, out)

    result = _dispatch(all_inputs, out, reference, run)
    return reference() if result is None else result


def karcher(
    tensors: Sequence[torch.Tensor],
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`mergefast.methods.karcher` on the fused kernels: the Gram pass, the Karcher iteration
    on coefficients (`karcher_coefficients`), one weighted pass (the plain mean where every
    input's norm is <= tol). A single input, more than 64, and a sum that would cancel (the
    module docstring) run the reference."""
    tensors, tol = list(tensors), float(tol)

    def reference():
        return _karcher_ref(tensors, max_iter=max_iter, tol=tol, out_dtype=out_dtype)

    if len(tensors) < 2 or len(tensors) > MAX_INPUTS:
        return _not_the_input(reference(), tensors[0])  # the reference raises without inputs
    check_same_shape(tensors, "karcher")
    out = result_dtype(tensors, out_dtype)
    if _choose(tensors, out) == "torch" or tensors[0].numel() == 0:
        return reference()
    xs, k = [x.contiguous() for x in tensors], len(tensors)

    def run(impl):
        g = _gram(impl.gram(None, xs, 1, xs[0].numel()), k)
        c = karcher_coefficients(g, max_iter=max_iter, tol=tol)
        if c is None:
            return impl.linear(xs, [1.0] * k, True, float(k), out)  # the reference's x.mean(0)
        return None if cancels(g, c) else _combine(impl, None, xs, c, out)

    result = _dispatch(tensors, out, reference, run)
    return reference() if result is None else result
