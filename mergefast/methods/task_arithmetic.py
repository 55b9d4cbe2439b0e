"""The task-arithmetic family: `task_arithmetic`, `ties`, DARE (`dare_linear`,
`dare_ties`), breadcrumbs (`breadcrumbs`, `breadcrumbs_ties`) and DELLA (`della`,
`della_linear`), all on one skeleton.

Per output tensor: task vectors delta_i = x_i - base (exact, in float32), optional
sparsification of each delta with its own density (plus gamma / epsilon), an optional L1
rescale of the sparsified delta, weighting (after sparsification), an optional sign
consensus, normalisation by the divisor, `lambda`, and base + result rounded once.

Random sparsifiers (DARE's "random", DELLA's "della") draw from the counter-based generator
in `random.py`, keyed by (seed, tensor name, model index among the non-base inputs, element
index): results never depend on device, thread count or torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .linear import ZERO_WEIGHT_SUM
from .numerics import keep_count, ordered_sum, task_vectors
from .random import uniform_like
from .scalars import RESCALE_MIN_NORM, outlier_bounds

SPARSIFY_METHODS = ("none", "magnitude", "magnitude_outliers", "random", "della")
# mergekit's defaults for the breadcrumbs and DELLA extra parameters.
DEFAULT_GAMMA = 0.01
DEFAULT_EPSILON = 0.15


class DellaRangeError(ValueError):
    """DELLA needs density - epsilon > 0 and density + epsilon < 1."""


CONSENSUS_METHODS = (None, "sum")


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep-mask of exactly keep_count(density, numel) elements with the largest |delta|.

    Ties at the threshold are kept lowest flat index first (a stable descending sort), so
    the result is deterministic; mergekit's order among ties is unspecified.
    """
    n = delta.numel()
    k = keep_count(density, n)
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    if k > 0:
        order = torch.sort(delta.abs().flatten(), descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask.view(delta.shape)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """Breadcrumbs (mergekit 0.1.5 `magnitude_outliers`): drop the largest and smallest |delta|.

    n = numel, target = int(density * n), n_top = int(gamma * n), n_bot = n - target - n_top
    (when negative, n_top shrinks by that much and n_bot = 0). Sorting |delta| ascending
    (ties: lowest flat index first), the kept positions are [n_bot, n_bot + target): exactly
    `target` elements (`outlier_bounds`). density >= 1 keeps everything.
    """
    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    lo, hi = outlier_bounds(density, gamma, n)
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    if hi > lo:
        order = torch.sort(delta.abs().flatten(), stable=True).indices
        mask[order[lo:hi]] = True
    return mask.view(delta.shape)


def random_mask(delta: torch.Tensor, density: float, *, seed: int, tensor_name: str, model_index: int) -> torch.Tensor:
    """DARE: keep each element independently with probability `density` (u < density).

    u comes from the counter-based generator (`random.uniform_like`); density >= 1 keeps
    everything, density <= 0 nothing.
    """
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    return uniform_like(delta, seed, tensor_name, model_index) < density


def check_della_range(density: float, epsilon: float, tensor_name: str = "") -> None:
    """Raise DellaRangeError unless 0 < density - epsilon and density + epsilon < 1."""
    if not (density - epsilon > 0 and density + epsilon < 1):
        where = f"tensor {tensor_name}: " if tensor_name else ""
        raise DellaRangeError(
            f"{where}della needs density - epsilon > 0 and density + epsilon < 1, got "
            f"density={density}, epsilon={epsilon} (keep probabilities would span "
            f"[{density - epsilon:g}, {density + epsilon:g}])"
        )


def della_keep_probability(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's per-element keep probability (float32), shaped like `delta`.

    Rows are 1-D slices along the last axis (a 1-D tensor is one row). Within a row, |delta|
    is ranked ascending from 1 (ties: lowest index first), rank_norm = (rank - 1)/(cols - 1)
    and p = (density - epsilon) + rank_norm * 2 * epsilon. A row of one element gets
    p = density (mergekit divides 0 by 0 there).
    """
    cols = delta.shape[-1] if delta.dim() > 0 else 1
    if cols <= 1 or delta.numel() == 0:  # no ranks to take (and an empty tensor has no rows)
        return torch.full(delta.shape, density, dtype=torch.float32, device=delta.device)
    rows = delta.reshape(-1, cols)
    order = torch.sort(rows.abs(), dim=-1, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(cols, device=delta.device).expand_as(order)
    ranks.scatter_(-1, order, positions)  # 0-based rank = rank - 1
    rank_norm = ranks.to(torch.float32) / (cols - 1)
    p = (density - epsilon) + rank_norm * (2 * epsilon)
    return p.view(delta.shape)


def della_mask(
    delta: torch.Tensor,
    density: float,
    epsilon: float = DEFAULT_EPSILON,
    *,
    seed: int,
    tensor_name: str,
    model_index: int,
) -> torch.Tensor:
    """DELLA magprune: keep each element with `della_keep_probability` (u < p, float32).

    density >= 1 keeps everything, density <= 0 nothing; otherwise raises DellaRangeError
    (naming the tensor) unless density - epsilon > 0 and density + epsilon < 1.
    """
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    check_della_range(density, epsilon, tensor_name)
    p = della_keep_probability(delta, density, epsilon)
    return uniform_like(delta, seed, tensor_name, model_index) < p


def l1_rescale(sparse: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Scale `sparse` so its L1 norm equals `original`'s; unchanged if either is < 1e-7."""
    before = original.abs().sum().item()
    after = sparse.abs().sum().item()
    if before < RESCALE_MIN_NORM or after < RESCALE_MIN_NORM:
        return sparse
    return sparse * (before / after)


def sparsify_delta(
    delta: torch.Tensor,
    sparsify: str,
    density: float,
    *,
    gamma: float = DEFAULT_GAMMA,
    epsilon: float = DEFAULT_EPSILON,
    rescale: bool = False,
    seed: int = 0,
    tensor_name: str = "",
    model_index: int = 0,
) -> torch.Tensor:
    """One model's delta after `sparsify` (and the L1 `rescale` when asked; never for "none")."""
    if sparsify == "none":
        return delta
    if sparsify == "magnitude":
        mask = magnitude_mask(delta, density)
    elif sparsify == "magnitude_outliers":
        mask = outlier_mask(delta, density, gamma)
    elif sparsify == "random":
        mask = random_mask(delta, density, seed=seed, tensor_name=tensor_name, model_index=model_index)
    else:
        mask = della_mask(delta, density, epsilon, seed=seed, tensor_name=tensor_name, model_index=model_index)
    sparse = torch.where(mask, delta, 0.0)
    return l1_rescale(sparse, delta) if rescale else sparse


def _sign_consensus(weighted: list[torch.Tensor], weights: Sequence[float]):
    """TIES 'sum' election: the sign of the sum of weighted deltas (0 counts as +)."""
    elected = torch.where(sum(weighted) >= 0, 1.0, -1.0).to(weighted[0].dtype)
    mixed = torch.zeros_like(weighted[0])
    divisor = torch.zeros_like(weighted[0])
    for wd, w in zip(weighted, weights):
        agree = torch.sign(wd) == elected  # zero deltas never agree
        mixed += torch.where(agree, wd, 0.0)
        divisor += torch.where(agree, torch.tensor(w, dtype=wd.dtype), 0.0)
    divisor = torch.where(divisor == 0, 1.0, divisor)
    return mixed, divisor


def _plain_sum(weighted: list[torch.Tensor], weights: Sequence[float], dtype: torch.dtype):
    """No consensus: sum of weighted deltas; divisor sum(w), |divisor| < 1e-8 -> 1."""
    divisor = ordered_sum(torch.tensor(list(weights), dtype=dtype)).item()
    if abs(divisor) < ZERO_WEIGHT_SUM:
        divisor = 1.0
    return sum(weighted), divisor


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    densities: Sequence[float] | None = None,
    sparsify: str = "none",
    consensus: str | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    out_dtype: torch.dtype | None = None,
    gammas: Sequence[float] | None = None,
    epsilons: Sequence[float] | None = None,
    rescale: bool = False,
    seed: int = 0,
    tensor_name: str = "",
) -> torch.Tensor:
    """Generalised task arithmetic over task vectors `tensors[i] - base`.

    `sparsify`: "none", "magnitude" (exact top-k per model by |delta|, see
    `magnitude_mask`), "magnitude_outliers" (breadcrumbs, per-model `gammas`, default 0.01,
    see `outlier_mask`), "random" (DARE, see `random_mask`) or "della" (per-model `epsilons`,
    default 0.15, see `della_mask`). With `rescale` each sparsified delta is L1-matched to
    its original (`l1_rescale`; no effect with "none"). Random draws are keyed by `seed`
    (default 0), `tensor_name` and the model's index in `tensors`.
    `consensus`: None or "sum" (TIES sign election on weighted deltas).
    With `normalize` the mixed delta is divided by the divisor (sum of agreeing weights with
    consensus, 0 -> 1; else sum of weights, |sum| < 1e-8 -> 1); then multiplied by
    `lambda_`. Float32 arithmetic, rounded once to `out_dtype` (default: promoted inputs).
    """
    if sparsify not in SPARSIFY_METHODS:
        raise ValueError(f"sparsify must be one of {SPARSIFY_METHODS}, got {sparsify!r}")
    if consensus not in CONSENSUS_METHODS:
        raise ValueError(f"consensus must be one of {CONSENSUS_METHODS}, got {consensus!r}")
    if len(tensors) != len(weights):
        raise ValueError(f"task arithmetic: got {len(tensors)} tensors and {len(weights)} weights")
    for name, values in (("densities", densities), ("gammas", gammas), ("epsilons", epsilons)):
        if values is not None and len(values) != len(tensors):
            raise ValueError(f"task arithmetic: got {len(tensors)} tensors and {len(values)} {name}")
    b, deltas, out = task_vectors(base, tensors, "task arithmetic", out_dtype)
    if not deltas:
        return base.to(out, copy=True)
    densities = densities if densities is not None else [1.0] * len(tensors)
    gammas = gammas if gammas is not None else [DEFAULT_GAMMA] * len(tensors)
    epsilons = epsilons if epsilons is not None else [DEFAULT_EPSILON] * len(tensors)
    weighted = []
    for i, (delta, w, d) in enumerate(zip(deltas, weights, densities)):
        if sparsify != "none":
            delta = sparsify_delta(
                delta,
                sparsify,
                d,
                gamma=gammas[i],
                epsilon=epsilons[i],
                rescale=rescale,
                seed=seed,
                tensor_name=tensor_name,
                model_index=i,
            )
        weighted.append(delta * w)
    if consensus == "sum":
        mixed, divisor = _sign_consensus(weighted, weights)
    else:
        mixed, divisor = _plain_sum(weighted, weights, b.dtype)
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return (b + mixed).to(out)


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    normalize: bool = True,
    lambda_: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """TIES: magnitude trim to each model's density, sum sign election, disjoint mean."""
    return task_arithmetic(
        base,
        tensors,
        weights,
        densities=densities,
        sparsify="magnitude",
        consensus="sum",
        normalize=normalize,
        lambda_=lambda_,
        out_dtype=out_dtype,
    )
