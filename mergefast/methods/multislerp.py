"""`multislerp`: a weighted spherical average of any number of models (or of their task
vectors against a base): one exponential-map step from the normalised weighted mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .numerics import accumulation_dtype, check_same_shape, ordered_sum, result_dtype

DEFAULT_EPS = 1e-8
ANTIPODAL = (
    "multislerp: the inputs are antipodal (their weighted mean direction vanishes); change the weights or the models"
)


class AntipodalError(ValueError):
    """The unit vectors' weighted mean vanishes (antipodal inputs) with 3+ models."""


def multislerp_vectors(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The multislerp of the rows of `x` (N, D) with weights `w` (N,): a (D,) vector.

    n_i = |x_i|, u_i = x_i / (n_i + eps), m = sum w_i u_i. If |m| < eps: two rows give
    w0 x0 + w1 x1, more raise AntipodalError. Else m /= |m|; tangents
    tau_i = u_i - (u_i . m) m; T = sum w_i tau_i; |T| + eps -> r = m cos|T| + T sin|T|/|T|;
    result r * sum(w_i n_i).
    """
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    units = x / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if x.shape[0] == 2:
            return w[0] * x[0] + w[1] * x[1]
        raise AntipodalError(ANTIPODAL)
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w[:, None]).sum(0)
    tangent_norm = torch.linalg.vector_norm(tangent) + eps
    r = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    return r * (norms.squeeze(-1) * w).sum()


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = DEFAULT_EPS,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """multislerp of `tensors` (at least one) with `weights`, on task vectors if `base`.

    A single input is returned as it is. Otherwise the inputs (minus `base`) are flattened,
    the weights divided by their sum when `normalize_weights`, combined by
    `multislerp_vectors`, reshaped and `base` added back. Float32 arithmetic (mergekit runs
    in the input dtype), rounded once to `out_dtype` (default: promoted inputs).
    """
    if not tensors or len(tensors) != len(weights):
        raise ValueError(f"multislerp: got {len(tensors)} tensors and {len(weights)} weights")
    all_inputs = [*tensors, *([base] if base is not None else [])]
    check_same_shape(all_inputs, "multislerp")
    out = result_dtype(all_inputs, out_dtype)
    if len(tensors) == 1:
        return tensors[0].to(out)
    acc = accumulation_dtype(all_inputs)
    x = torch.stack([t.to(acc).flatten() for t in tensors])
    if base is not None:
        x = x - base.to(acc).flatten()
    w = torch.tensor(list(weights), dtype=acc, device=x.device)
    if normalize_weights:
        w = w / ordered_sum(w)
    result = multislerp_vectors(x, w, eps).view(tensors[0].shape)
    if base is not None:
        result = result + base.to(acc)
    return result.to(out)
