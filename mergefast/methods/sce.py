"""`sce` (Select, Calculate, Erase): keep the positions where the models disagree most,
weight each model by its task vector's energy, erase minority signs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .numerics import ordered_sum, task_vectors

# Below WEIGHT_SUM_MIN the matrix weights are uniform; the divisor is clamped to DIVISOR_MIN.
WEIGHT_SUM_MIN = 1e-6
DIVISOR_MIN = 1e-6


def variance_mask(deltas: torch.Tensor, select_topk: float) -> torch.Tensor:
    """Keep-mask of the k positions with the largest variance across models, where
    k = int(count_nonzero(var) * select_topk) and var is the population variance (ties:
    lowest flat index first). select_topk >= 1 keeps everything."""
    if select_topk >= 1:
        return torch.ones(deltas.shape[1:], dtype=torch.bool, device=deltas.device)
    var = deltas.var(dim=0, unbiased=False).flatten()
    k = max(0, int(int(torch.count_nonzero(var)) * select_topk))
    mask = torch.zeros(var.numel(), dtype=torch.bool, device=deltas.device)
    if k > 0:
        mask[torch.sort(var.abs(), descending=True, stable=True).indices[:k]] = True
    return mask.view(deltas.shape[1:])


def energy_weights(deltas: torch.Tensor) -> torch.Tensor:
    """omega_i = mean(tau_i^2) / sum_j mean(tau_j^2); uniform when the sum is < 1e-6."""
    return weights_of_energies((deltas * deltas).flatten(1).mean(dim=1))


def weights_of_energies(energy: torch.Tensor) -> torch.Tensor:
    """omega_i = energy_i / sum_j energy_j from the energies mean(tau_i^2) (a 1-D tensor);
    uniform when the sum is < 1e-6."""
    total = ordered_sum(energy)
    if total < WEIGHT_SUM_MIN:
        return torch.full_like(energy, 1.0 / energy.numel())
    return energy / total


def sce(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    select_topk: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SCE over task vectors tau_i = x_i - base.

    Select: with select_topk < 1, zero every tau_i outside `variance_mask`. Calculate:
    `energy_weights` omega_i. Erase: TIES "sum" sign election on the unweighted tau
    (zeros never agree). Result base + sum tau_i omega_i mask_i / max(sum omega_i mask_i,
    1e-6). Float32 arithmetic, rounded once to `out_dtype` (default: promoted inputs).
    """
    b, deltas, out = task_vectors(base, tensors, "sce", out_dtype)
    if not deltas:
        return base.to(out)
    deltas = torch.stack(deltas)
    deltas = deltas * variance_mask(deltas, select_topk)
    omega = energy_weights(deltas).view(-1, *([1] * base.dim()))
    elected = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(b.dtype)
    agree = (torch.sign(deltas) == elected).to(b.dtype)
    mixed = (deltas * omega * agree).sum(0)
    divisor = (omega * agree).sum(0).clamp(min=DIVISOR_MIN)
    return (b + mixed / divisor).to(out)
