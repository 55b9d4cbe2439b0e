"""`slerp`: spherical interpolation between the base (t = 0) and one other model (t = 1)."""

from __future__ import annotations

import torch

from .numerics import accumulation_dtype, check_same_shape, result_dtype
from .scalars import NORM_EPS, PARALLEL_DOT, slerp_coefficients  # noqa: F401 - the spec's constants


def slerp(
    a: torch.Tensor,
    b: torch.Tensor,
    t: float,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Spherical interpolation of the whole tensors `a` (t=0, the base) and `b` (t=1).

    Each tensor is one flattened vector, normalised by its L2 norm only when that norm is
    above 1e-8; the cosine of the normalised vectors picks the coefficients, which are
    applied to the raw tensors. Float32 arithmetic, one rounding to `out_dtype` (default:
    the promoted input dtype).
    """
    check_same_shape([a, b], "slerp")
    acc_dtype = accumulation_dtype([a, b])
    v0 = a.to(acc_dtype)
    v1 = b.to(acc_dtype)
    n0 = torch.linalg.vector_norm(v0).item()
    n1 = torch.linalg.vector_norm(v1).item()
    u0 = v0 / n0 if n0 > NORM_EPS else v0
    u1 = v1 / n1 if n1 > NORM_EPS else v1
    dot = torch.sum(u0 * u1).item()
    c0, c1 = slerp_coefficients(dot, t)
    return (c0 * v0 + c1 * v1).to(result_dtype([a, b], out_dtype))
