"""Scalars the kernels' host side computes as the torch references compute them, without
torch: the torch-free engine (host/) and the kernels' torch binding share them.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# The L1 rescale (DARE, DELLA) is skipped when either norm is below this.
RESCALE_MIN_NORM = 1e-7


def f32(value: float) -> float:
    """`value` rounded to float32 (as a float32 `sum().item()` is), overflow to inf: the C
    conversion of a double to a float (ctypes), which rounds to nearest."""
    return ctypes.c_float(value).value


def f32_sum(values: Sequence[float]) -> float:
    """The float32 sum of `values` in order, rounding after each addition: the references' sum
    of a few values (`methods/numerics.py` `ordered_sum`: weights, SCE's energies) on any
    count of models. Each float32 addition is made in float64 and rounded: a float64 sum of
    two float32 values rounded to float32 is their float32 sum (53 >= 2 * 24 + 2 bits)."""
    total = 0.0
    for value in values:
        total = f32(total + f32(value))
    return total


def f64_div(a: float, b: float) -> float:
    """a / b with IEEE's results for b == 0 (+-inf, NaN for 0 / 0), where Python raises."""
    if b != 0.0:
        return a / b
    return math.nan if a == 0.0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def f32_div(a: float, b: float) -> float:
    """The float32 quotient of two float32 values: their float64 quotient rounded (correctly
    rounded, 53 >= 2 * 24 + 2 bits), IEEE's at b == 0."""
    return f32(f64_div(a, b))


def nan_max(a: float, b: float) -> float:
    """max(a, b), NaN when either is: numpy's maximum (a where a >= b or a is NaN, else b)."""
    return a if a >= b or a != a else b


def nan_min(a: float, b: float) -> float:
    """min(a, b), NaN when either is: numpy's minimum (a where a <= b or a is NaN, else b)."""
    return a if a <= b or a != a else b


def l1_scales(sums: Sequence[float]) -> list[float]:
    """Each model's L1 rescale from the kernels' (sum |delta|, sum |kept delta|) pairs
    `sums[2i], sums[2i + 1]`, as `l1_rescale` computes it: 1.0 (no change) when either norm is
    below 1e-7, else before / after in float64 (NaN when a norm is: NaN compares false)."""
    scales = []
    for before, after in zip(sums[0::2], sums[1::2]):
        before, after = f32(before), f32(after)
        if before < RESCALE_MIN_NORM or after < RESCALE_MIN_NORM:
            scales.append(1.0)
        else:
            scales.append(before / after)
    return scales


# mergekit's constants: vectors are only normalised when their norm exceeds NORM_EPS, and
# |cos| above PARALLEL_DOT (parallel or antiparallel) falls back to linear interpolation.
NORM_EPS = 1e-8
PARALLEL_DOT = 0.9995


def slerp_coefficients(dot: float, t: float) -> tuple[float, float]:
    """(c0, c1) such that the result is c0 * a + c1 * b, given cos(angle) = `dot`."""
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > PARALLEL_DOT:
        return 1.0 - t, t
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp_coefficients_from_dots(aa: float, bb: float, ab: float, t: float) -> tuple[float, float] | None:
    """SLERP's (c0, c1) from the kernels' float64 <a,a>, <b,b>, <a,b> (the reference's norm
    rule), or None where a dot is not finite: float32 sums overflow past |x| ~ 1e19 (and
    NaN/inf inputs), where the reference, which normalises before its dot, must run."""
    if not all(math.isfinite(v) for v in (aa, bb, ab)):
        return None
    n0, n1 = aa**0.5, bb**0.5
    dot = ab / ((n0 if n0 > NORM_EPS else 1.0) * (n1 if n1 > NORM_EPS else 1.0))
    return slerp_coefficients(dot, t)


def rows_cols(shape: Sequence[int], per_row: bool = True) -> tuple[int, int]:
    """(rows, cols) of a tensor of `shape` as the references take its rows: along the last axis
    (`per_row`), or as one flat vector (not `per_row`, or a 0-d tensor)."""
    numel = math.prod(shape)
    if not per_row or not shape:
        return 1, numel
    return numel // shape[-1], shape[-1]


def nuslerp_view(shape: Sequence[int], flatten: bool, row_wise: bool) -> tuple[int, int, bool]:
    """(rows, cols, columns) of nuslerp's slices of a tensor of `shape`: the whole tensor
    (`flatten`, or 0-1 dims), its rows along the last axis, or with `row_wise` (columns true)
    the columns of shape[0] rows of the other axes' elements: the reference's slices along axis
    0 (transpose(0, -1) then its rows)."""
    per_row = not flatten and len(shape) > 1
    if per_row and row_wise:
        return shape[0], math.prod(shape[1:]), True
    return (*rows_cols(shape, per_row), False)


def keep_count(density: float, numel: int) -> int:
    """How many elements magnitude selection keeps: mergekit 0.1.5's rule.

    density >= 1 keeps everything, density <= 0 keeps nothing, otherwise
    max(1, int(density * numel)) (0.1.5 never zeroes a whole tensor for a positive density).
    """
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def outlier_bounds(density: float, gamma: float, n: int) -> tuple[int, int]:
    """The positions [lo, hi) of the ascending |delta| order that `outlier_mask` keeps.

    target = int(density * n), n_top = int(gamma * n), lo = n - target - n_top (0 when
    negative: the top cut shrinks), hi = lo + target, both clipped to n; density >= 1 is
    (0, n), everything.
    """
    if density >= 1:
        return 0, n
    target = max(0, int(density * n))
    n_bot = max(0, n - target - int(gamma * n))
    return min(n_bot, n), min(n_bot + target, n)


# DELLA's pmin of a model that keeps everything (density >= 1): every draw u < 1 < 2.
KEEP_ALL = 2.0


def keep_rule(density: float, epsilon: float, cols: int) -> tuple[float, float]:
    """(pmin, span) of one model for the kernels: p = pmin + (rank / (cols - 1)) * span, or
    p = pmin where span is 0, each rounded to float32 as torch rounds the reference's Python
    scalars. density >= 1 keeps all, <= 0 nothing, rows of one element use p = density."""
    if density >= 1:
        return KEEP_ALL, 0.0
    if density <= 0:
        return 0.0, 0.0
    if cols == 1:
        return density, 0.0
    return density - epsilon, 2 * epsilon


# methods/sce.py's WEIGHT_SUM_MIN: below it SCE's weights are uniform.
SCE_WEIGHT_SUM_MIN = 1e-6


def sce_weights(sums: Sequence[float], n: int) -> list[float]:
    """SCE's omega from the kernels' float64 sums of squared kept deltas over n elements, in
    float32 as kernels/sce.py's `weights` and methods/sce.py's `weights_of_energies` compute
    them: energy_i = sum_i / n, omega_i = energy_i / sum_j energy_j (summed in order, as
    `weights_of_energies`), uniform below 1e-6."""
    energy = [f32_div(f32(s), f32(n)) for s in sums]
    total = f32_sum(energy)
    if total < f32(SCE_WEIGHT_SUM_MIN):
        return [f32(1.0 / len(energy))] * len(energy)
    return [f32_div(e, total) for e in energy]


# arcee_fusion's quartiles and the IQR rule (methods/arcee_fusion.py `importance_threshold`).
ARCEE_QUANTILES = (0.25, 0.5, 0.75)
ARCEE_IQR_FACTOR = 1.5


def arcee_ranks(n: int) -> list[int]:
    """The 0-based ascending ranks of Q1, the median and Q3 of n values (`sorted_quantile`)."""
    return [int(q * (n - 1)) for q in ARCEE_QUANTILES]


def arcee_threshold(values: Sequence[float]) -> float:
    """median + 1.5 * (Q3 - Q1) in float32 from (Q1, median, Q3), as `importance_threshold`
    computes it on float32 tensors."""
    q1, median, q3 = (f32(v) for v in values)
    return f32(median + f32(f32(ARCEE_IQR_FACTOR) * f32(q3 - q1)))


def ram_boost(shared: Sequence[int], unique: Sequence[int], r: float, alpha: float, eps: float) -> list[float]:
    """RAM+'s per-model factors lambda_i rounded to float32, as kernels/ram.py's `lambdas`
    gets them from `boost_of_counts` (methods/ram.py): 1 + r * clamp(rho, 0, alpha) in
    float64 with rho = shared / max(unique, eps) (0 where shared is 0), NaN where torch's
    clamps give NaN."""
    out = []
    for s, u in zip(shared, unique):
        rho = 0.0 if s == 0 else f64_div(float(s), nan_max(float(u), float(eps)))
        out.append(f32(1.0 + float(r) * nan_min(nan_max(rho, 0.0), float(alpha))))
    return out


# methods/model_stock.py's clamps: the product of norms in a cosine, and t's denominator.
STOCK_NORM_PRODUCT_MIN = 1e-6
STOCK_DENOMINATOR_MIN = 1e-6


def gram_column(i: int, j: int, k: int) -> int:
    """Column of <d_i, d_j> (i <= j) in a Gram row of k inputs: (0,0), (0,1) .. (1,1) .."""
    return i * k - i * (i - 1) // 2 + (j - i)


def model_stock_ratios(gram: np.ndarray, k: int) -> np.ndarray:
    """Per row t = stock_ratio(mean pairwise cosine), float32 (rows,), from the float64 Gram
    rows of k task vectors: methods/model_stock.py's `pair_cosine`, `mean_of` and `stock_ratio`
    in float64, t rounded once to float32, as kernels/slerp_family.py's `stock_ratios` does."""
    import numpy as np  # here: no other method needs it (io/host_array.py)

    f32 = np.float32
    with np.errstate(all="ignore"):
        norms = [np.sqrt(gram[:, gram_column(i, i, k)]) for i in range(k)]
        total = np.zeros(gram.shape[0], dtype=np.float64)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        for i, j in pairs:
            product = np.maximum(norms[i] * norms[j], STOCK_NORM_PRODUCT_MIN)
            total += np.clip(gram[:, gram_column(i, j, k)] / product, -1.0, 1.0)
        cos = total / len(pairs)
        denominator = 1.0 + (k - 1) * cos
        small = np.abs(denominator) < STOCK_DENOMINATOR_MIN
        return np.where(small, 0.0, k * cos / np.where(small, 1.0, denominator)).astype(f32)
