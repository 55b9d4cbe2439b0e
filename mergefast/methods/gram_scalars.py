"""The host-side scalars of nuslerp, multislerp and karcher, computed from the Gram pass's
float64 sums (kernels/spherical.py says how) without torch: both engines call these, so the
torch-free engine (host/reducing.py) writes the torch engine's bytes. Plain Python floats for
multislerp's and karcher's K-vectors (K <= 64, a fixed order of operations), numpy for
nuslerp's per-row factors. Against the float32 references they are within DESIGN's tolerance
rule, as the kernels' float64 Gram sums already are (tests/test_kernels_*.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .scalars import gram_column

# nuslerp: norms are clamped to at least NORM_MIN; slices with 1 - cos^2 <= COLLINEAR (0.1.5's
# test) fall back to linear interpolation; |w0 + w1| < WEIGHT_SUM_MIN gives t = 0.5.
NORM_MIN = 1e-7
COLLINEAR = 1e-16
WEIGHT_SUM_MIN = 1e-6
OPPOSITE = -1 + 1e-12  # karcher: a dot product at or below this is an opposite direction
# multislerp's and karcher's elementwise pass sums c_i v_i in float32 with float32 c_i: each
# term rounds at 2^-24 of its own size, so the result's error is `cancellation` times that of a
# sum without cancellation (and the quadratic forms of G that make the c_i cancel too, at its
# square). Past CANCELLING the tensor runs the reference (kernels/spherical.py). Fine-tunes of
# one base give ~1 (karcher's unit vectors nearly collinear) to ~sqrt(K) (multislerp's nearly
# orthogonal deltas); an input near the antipode of the Karcher mean gave 112 and a result 25
# float32 ulps from the float64 reference's, where the float32 reference's was within one.
CANCELLING = 8.0


def nuslerp_t(w0: float, w1: float) -> float:
    """t = w1 / (w0 + w1), or 0.5 when |w0 + w1| < 1e-6."""
    total = w0 + w1
    return 0.5 if abs(total) < WEIGHT_SUM_MIN else w1 / total


def gram_matrix(packed: Sequence[float], k: int) -> list[list[float]]:
    """The symmetric k x k matrix of one packed Gram row (pairs i <= j, `gram_column`)."""
    return [[packed[gram_column(min(i, j), max(i, j), k)] for j in range(k)] for i in range(k)]


def _div(a: float, b: float) -> float:
    """a / b with IEEE results where Python raises (b == 0)."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _trig(fn, x: float) -> float:
    """math.sin / math.cos / math.acos with NaN where math raises (inf, |x| > 1)."""
    try:
        return fn(x)
    except ValueError:
        return math.nan


def _norm(g: list[list[float]], a: Sequence[float]) -> float:
    """|sum a_i d_i| from the Gram matrix (rounding can make the form slightly negative)."""
    k = len(a)
    form = sum(sum(a[i] * g[i][j] for i in range(k)) * a[j] for j in range(k))
    return math.sqrt(form) if form > 0 else (form if form != form else 0.0)


def _gram_times(g: list[list[float]], a: Sequence[float]) -> list[float]:
    return [sum(g[i][j] * a[j] for j in range(len(a))) for i in range(len(a))]


def _clamp(x: float, lo: float, hi: float) -> float:
    return x if x != x else min(max(x, lo), hi)


def cancellation(g: list[list[float]], c: Sequence[float]) -> float:
    """sum_i |c_i| |v_i| / |sum_i c_i v_i| for the vectors v_i of Gram matrix g: how much larger
    the terms are than their sum (inf where the sum vanishes, 1 where every c_i is 0, NaN where
    g is not finite)."""
    terms = sum(abs(c[i]) * math.sqrt(max(g[i][i], 0.0)) for i in range(len(c)))
    return 1.0 if terms == 0 else _div(terms, _norm(g, c))


def cancels(g: list[list[float]], c: Sequence[float]) -> bool:
    """Whether the float32 sum of c_i v_i would cancel past CANCELLING (run the reference)."""
    return cancellation(g, c) > CANCELLING


def multislerp_weights(weights: Sequence[float], normalize: bool) -> list[float]:
    """The float64 weights of the coefficients, divided by their sum with `normalize`, as the
    reference divides its float32 weights."""
    w64 = [float(w) for w in weights]
    if normalize:
        total64 = sum(w64)
        w64 = [_div(w, total64) for w in w64]
    return w64


def multislerp_coefficients(g: list[list[float]], w: Sequence[float], eps: float) -> list[float] | None:
    """c with multislerp_vectors(d, w, eps) = sum c_i d_i, from the Gram matrix g; None where
    the weighted mean of the unit vectors vanishes (|m| < eps)."""
    k = len(w)
    norms = [math.sqrt(g[i][i]) if g[i][i] > 0 else (g[i][i] if g[i][i] != g[i][i] else 0.0) for i in range(k)]
    inv = [_div(1.0, n + eps) for n in norms]  # u_i = inv_i d_i
    mean = [w[i] * inv[i] for i in range(k)]
    mean_norm = _norm(g, mean)
    if mean_norm < eps:
        return None
    a = [_div(m, mean_norm) for m in mean]
    dots = [inv[i] * ga for i, ga in enumerate(_gram_times(g, a))]  # u_i . m
    spread = sum(w[i] * dots[i] for i in range(k))
    t = [w[i] * inv[i] - spread * a[i] for i in range(k)]  # sum w_i (u_i - (u_i . m) m)
    t_norm = _norm(g, t) + eps
    cos, sin_over = _trig(math.cos, t_norm), _div(_trig(math.sin, t_norm), t_norm)
    scale = sum(norms[i] * w[i] for i in range(k))
    return [(a[i] * cos + t[i] * sin_over) * scale for i in range(k)]


def karcher_coefficients(g: list[list[float]], *, max_iter: int, tol: float) -> list[float] | None:
    """c with karcher's result = sum c_i x_i, from the Gram matrix g; None where no input has
    a norm above tol (the result is the plain mean)."""
    k = len(g)
    norms = [math.sqrt(g[i][i]) if g[i][i] > 0 else (g[i][i] if g[i][i] != g[i][i] else 0.0) for i in range(k)]
    valid = [n > tol for n in norms]
    if not any(valid):
        return None
    inv = [_div(1.0, n) if ok else 0.0 for n, ok in zip(norms, valid)]  # u_i = inv_i x_i
    alpha = 1.0 / sum(valid)
    mean = [alpha * v for v in inv]
    mean_norm = _norm(g, mean)
    if mean_norm < tol:  # the first unit vector
        first = valid.index(True)
        u = [inv[i] if i == first else 0.0 for i in range(k)]
    else:
        u = [_div(m, mean_norm) for m in mean]
    for _ in range(int(max_iter)):
        dots = [_clamp(inv[i] * gu, -1.0, 1.0) for i, gu in enumerate(_gram_times(g, u))]
        thetas = [_trig(math.acos, d) for d in dots]
        # an input opposite the iterate adds nothing (kernels/spherical.py says why)
        use = [valid[i] and thetas[i] >= tol and dots[i] > OPPOSITE for i in range(k)]
        scale = [_div(thetas[i], math.sin(thetas[i])) * alpha if use[i] else 0.0 for i in range(k)]
        spread = sum(scale[i] * dots[i] for i in range(k))
        t = [scale[i] * inv[i] - spread * u[i] for i in range(k)]
        t_norm = _norm(g, t)
        if t_norm < tol:
            break
        cos, sin = _trig(math.cos, t_norm), _trig(math.sin, t_norm)
        u = [cos * u[i] + _div(sin * t[i], t_norm) for i in range(k)]
        u_norm = _norm(g, u)
        u = [_div(v, u_norm) for v in u]
    mean_norm = sum(norms) / k
    return [mean_norm * v for v in u]


def nuslerp_factors(gram, t: float):
    """Per row (c0, c1, dv) of nuslerp's elementwise pass, float32 (rows, 3), from the float64
    Gram rows (rows, 3) of (v0, v1): the reference's `slerp_factors` of cos = <v0,v1> /
    (max(|v0|, 1e-7) max(|v1|, 1e-7)), in float64 and each factor rounded once; collinear rows
    (1 - t, t, 1) where the reference's float32 test finds them, on cos rounded to float32.
    Near cos = -1 the factors move 1 / (1 + cos) times as fast as cos: float32 cos, arccos and
    sin (the reference's) left the kernels' result 30 float32 ulps from the float64 reference's
    at cos -0.995. numpy here: no other method needs it (io/host_array.py)."""
    import numpy as np

    with np.errstate(all="ignore"):
        n0 = np.maximum(np.sqrt(gram[:, 0]), NORM_MIN)
        n1 = np.maximum(np.sqrt(gram[:, 2]), NORM_MIN)
        cos = np.clip(gram[:, 1] / (n0 * n1), -1, 1)
        cos32 = cos.astype(np.float32)
        collinear = (np.float32(1) - cos32 * cos32) <= np.float32(COLLINEAR)
        theta = np.arccos(cos)
        safe_sin = np.where(collinear, 1.0, np.sin(theta))
        s0, s1 = np.sin((1 - t) * theta), np.sin(t * theta)
        spherical = np.stack([s0, s1, safe_sin], axis=-1)
        lerp = np.array([1 - t, t, 1.0], dtype=np.float32)  # the reference's float32 scalars
        return np.ascontiguousarray(np.where(collinear[:, None], lerp, spherical), dtype=np.float32)
