"""`ram` and `ramplus_tl`: add each element's task-vector update where only one model
changed it, average the updates where several did (RAM+ boosts the unique updates)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .numerics import task_vectors

DEFAULT_EPSILON = 1e-5
DEFAULT_R = 0.1
DEFAULT_ALPHA = 0.2


def unique_boost(active: torch.Tensor, count: torch.Tensor, r: float, alpha: float, eps: float) -> torch.Tensor:
    """RAM+ per-model factors lambda_i = 1 + r * clamp(rho_i, 0, alpha), where
    rho_i = #(active_i and count > 1) / max(#(active_i and count == 1), eps)."""
    shared = (active & (count > 1)).flatten(1).sum(1)
    unique = (active & (count == 1)).flatten(1).sum(1)
    return boost_of_counts(shared, unique, r, alpha, eps)


def boost_of_counts(shared: torch.Tensor, unique: torch.Tensor, r: float, alpha: float, eps: float) -> torch.Tensor:
    """`unique_boost` from the per-model counts of shared and unique active elements (float64).
    A model with no shared active element has rho = 0: with `epsilon: 0` and no unique one
    either, mergekit divides 0 by 0, and the NaN factor turns every output element NaN."""
    rho = shared.to(torch.float64) / unique.to(torch.float64).clamp(min=eps)
    return 1 + r * torch.where(shared == 0, 0.0, rho).clamp(0, alpha)


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
    """RAM over tau_i = x_i - base, active_i = |tau_i| > epsilon, count = #active per element.

    Elements active in one model get that model's tau (times lambda_i of `unique_boost`
    when `plus`, i.e. `ramplus_tl`); elements active in several get the mean of the active
    tau; inactive elements keep the base. Float32 arithmetic, rounded once to `out_dtype`
    (default: promoted inputs).
    """
    b, deltas, out = task_vectors(base, tensors, "ram", out_dtype)
    if not deltas:
        return base.to(out)
    deltas = torch.stack(deltas)
    active = deltas.abs() > epsilon
    count = active.sum(0)
    kept = torch.where(active, deltas, 0.0)
    unique = torch.where(count == 1, kept, 0.0)
    if plus:
        boost = unique_boost(active, count, r, alpha, epsilon).to(b.dtype)
        unique = unique * boost.view(-1, *([1] * base.dim()))
    shared = torch.where(count > 1, kept.sum(0) / count.clamp(min=1), 0.0)
    return (b + unique.sum(0) + shared).to(out)


def ramplus_tl(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    epsilon: float = DEFAULT_EPSILON,
    r: float = DEFAULT_R,
    alpha: float = DEFAULT_ALPHA,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RAM+ (`ram` with the unique updates of each model scaled by its lambda_i)."""
    return ram(base, tensors, epsilon=epsilon, plus=True, r=r, alpha=alpha, out_dtype=out_dtype)
