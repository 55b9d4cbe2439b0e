"""`nuslerp`: spherical interpolation of two models (or of their task vectors against a
base), over the whole tensor or row by row, with the ratio from two weights."""

from __future__ import annotations

import torch

# the constants and `nuslerp_t` live with the kernels' torch-free scalars, which need them too
from .gram_scalars import COLLINEAR, NORM_MIN, WEIGHT_SUM_MIN, nuslerp_t  # noqa: F401 - re-exported
from .numerics import accumulation_dtype, check_same_shape, result_dtype


def slerp_rows(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Slerp each row (last axis) of `v0` (t=0) towards `v1` (t=1).

    cos from the rows normalised by their norms clamped to >= 1e-7, theta = acos(clamp(cos)),
    result (sin((1-t)theta) v0 + sin(t theta) v1) / sin(theta) on the unnormalised rows;
    rows with 1 - cos^2 <= 1e-16 get (1-t) v0 + t v1.
    """
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=NORM_MIN)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=NORM_MIN)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    s0, s1, safe_sin, collinear = slerp_factors(t, cos)
    spherical = (s0 * v0 + s1 * v1) / safe_sin
    return torch.where(collinear, (1 - t) * v0 + t * v1, spherical)


def slerp_factors(t: float, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sin((1-t) theta), sin(t theta), sin(theta) or 1 where collinear, collinear) of the
    clamped cosines `cos`: the per-slice factors of `slerp_rows`."""
    theta = torch.acos(cos)
    sin_theta = torch.sin(theta)
    collinear = (1 - cos * cos) <= COLLINEAR
    safe_sin = torch.where(collinear, 1.0, sin_theta)
    return torch.sin((1 - t) * theta), torch.sin(t * theta), safe_sin, collinear


def nuslerp_vectors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool = True, row_wise: bool = False
) -> torch.Tensor:
    """Slerp of whole tensors (`flatten`), of slices along the last axis (default), or of
    slices along axis 0 (`row_wise`: transpose, slerp, transpose back)."""
    if flatten or v0.dim() <= 1:
        return slerp_rows(t, v0.reshape(1, -1), v1.reshape(1, -1)).reshape(v0.shape)
    if row_wise:
        return slerp_rows(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1)
    return slerp_rows(t, v0, v1)


def nuslerp(
    tensors: list[torch.Tensor],
    weights: list[float],
    base: torch.Tensor | None = None,
    *,
    flatten: bool = True,
    row_wise: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """nuslerp of exactly two models with weights (w0, w1): t = w1/(w0+w1) (see `nuslerp_t`).

    Without `base`: slerp(x0, x1). With `base`: base + slerp(x0 - base, x1 - base).
    `flatten` (default true) treats each tensor as one vector; otherwise slices along the
    last axis, or along axis 0 with `row_wise`. Float32 arithmetic (mergekit runs in the
    input dtype), rounded once to `out_dtype` (default: promoted inputs).
    """
    if len(tensors) != 2 or len(weights) != 2:
        raise ValueError(f"nuslerp takes exactly 2 non-base models, got {len(tensors)}")
    all_inputs = [*tensors, *([base] if base is not None else [])]
    check_same_shape(all_inputs, "nuslerp")
    acc = accumulation_dtype(all_inputs)
    t = nuslerp_t(weights[0], weights[1])
    v0, v1 = (x.to(acc) for x in tensors)
    if base is None:
        out = nuslerp_vectors(t, v0, v1, flatten=flatten, row_wise=row_wise)
    else:
        b = base.to(acc)
        out = b + nuslerp_vectors(t, v0 - b, v1 - b, flatten=flatten, row_wise=row_wise)
    return out.to(result_dtype(all_inputs, out_dtype))
