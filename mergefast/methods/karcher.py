"""`karcher`: the Karcher (Riemannian) mean of the inputs' directions on the unit sphere,
scaled by their mean norm. Every input counts equally; there is no base."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .numerics import accumulation_dtype, check_same_shape, result_dtype

DEFAULT_MAX_ITER = 10
DEFAULT_TOL = 1e-5


def _initial_direction(units: torch.Tensor, alphas: torch.Tensor, tol: float) -> torch.Tensor:
    """Normalised weighted mean of the unit vectors, or the first one if that is < tol."""
    mean = (units * alphas[:, None]).sum(0)
    norm = torch.linalg.vector_norm(mean)
    return units[0] if norm < tol else mean / norm


def _tangent(u: torch.Tensor, units: torch.Tensor, alphas: torch.Tensor, tol: float) -> torch.Tensor:
    """T = sum a_i (theta_i / sin theta_i)(u_i - dot_i u), skipping terms with theta_i < tol."""
    dots = (units @ u).clamp(-1, 1)
    thetas = torch.acos(dots)
    use = thetas >= tol
    scale = torch.where(use, thetas / torch.where(use, torch.sin(thetas), 1.0), 0.0) * alphas
    return (scale[:, None] * (units - dots[:, None] * u)).sum(0)


def karcher_direction(units: torch.Tensor, alphas: torch.Tensor, *, max_iter: int, tol: float) -> torch.Tensor:
    """Karcher mean of unit rows `units` with weights `alphas`, by at most `max_iter`
    exponential-map steps u <- cos|T| u + sin|T| T/|T| (renormalised); stops when |T| < tol."""
    u = _initial_direction(units, alphas, tol)
    for _ in range(int(max_iter)):
        t = _tangent(u, units, alphas, tol)
        t_norm = torch.linalg.vector_norm(t)
        if t_norm < tol:
            break
        u = torch.cos(t_norm) * u + torch.sin(t_norm) * t / t_norm
        u = u / torch.linalg.vector_norm(u)
    return u


def karcher(
    tensors: Sequence[torch.Tensor],
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Karcher mean of the flattened `tensors` with equal weights 1/N.

    n_i = |x_i|, u_i = x_i / n_i (zero for n_i = 0). Inputs with n_i > tol take part, their
    weights renormalised (see `karcher_direction`); result (sum_i n_i / N) * u over all
    inputs. If no input has n_i > tol the result is the plain mean (mergekit leaves this
    case undefined). A single input is returned as it is. Float32 arithmetic, rounded once
    to `out_dtype` (default: promoted inputs).
    """
    if not tensors:
        raise ValueError("karcher needs at least one input")
    check_same_shape(tensors, "karcher")
    out = result_dtype(tensors, out_dtype)
    if len(tensors) == 1:
        return tensors[0].to(out)
    acc = accumulation_dtype(tensors)
    x = torch.stack([t.to(acc).flatten() for t in tensors])
    norms = torch.linalg.vector_norm(x, dim=-1)
    valid = norms > tol
    if not bool(valid.any()):
        return x.mean(0).view(tensors[0].shape).to(out)
    units = x[valid] / norms[valid][:, None]
    alphas = torch.full((units.shape[0],), 1.0 / units.shape[0], dtype=acc, device=x.device)
    u = karcher_direction(units, alphas, max_iter=max_iter, tol=tol)
    return (norms.mean() * u).view(tensors[0].shape).to(out)
