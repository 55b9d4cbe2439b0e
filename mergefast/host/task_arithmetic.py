"""The torch-free engine's task-arithmetic family (task_arithmetic, TIES, DARE, breadcrumbs,
DELLA): the C passes kernels/__init__.py, kernels/dare.py, kernels/breadcrumbs.py and
kernels/della.py run, with the same scalars (methods/scalars.py, methods/random_keys.py).
"""

from __future__ import annotations

import ctypes

from .. import native
from ..io.host_array import HostArray
from ..methods.random_keys import stream_keys
from ..methods.registry import TASK_ARITHMETIC_FAMILY
from ..methods.scalars import f32_sum, keep_count, keep_rule, l1_scales, outlier_bounds, rows_cols
from ..methods.spec import ZERO_WEIGHT_SUM, split_base
from ..plan import MergePlan, TensorJob
from .ops import arrays, code, doubles, fused, library, threads

ONE_READ_DEFAULT = -1  # the C API's one_read_min: the library's default (SelectionOptions())


def task_arithmetic(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """The task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*, della*) into
    `out`; whether every delta x_i - base was finite."""
    sparsify, consensus = TASK_ARITHMETIC_FAMILY[plan.spec.name][:2]
    base, xs, params = split_base(inputs, job.base_index, job.model_params)
    weights = [float(p["weight"]) for p in params]
    n = out.numel()
    if n == 0:
        return True
    divisor = f32_sum(weights)
    if abs(divisor) < ZERO_WEIGHT_SUM:
        divisor = 1.0
    g = job.global_params
    tail = (consensus == "sum", bool(g["normalize"]), divisor, float(g["lambda"]))
    densities = [float(p["density"]) for p in params]
    if sparsify == "random":
        keys = stream_keys(seed, job.name, len(xs))
        return _dare(base, xs, out, weights, densities, keys, tail, bool(g["rescale"]))
    if sparsify == "della":
        cols = rows_cols(base.shape)[1]  # the reference's rows: the last axis
        rules = [keep_rule(d, float(p["epsilon"]), cols) for d, p in zip(densities, params)]
        keys = stream_keys(seed, job.name, len(xs))
        return _della(base, xs, out, weights, rules, keys, cols, tail, bool(g["rescale"]))
    if sparsify == "magnitude_outliers":
        lo, hi = zip(*(outlier_bounds(d, float(p["gamma"]), n) for d, p in zip(densities, params)))
        cuts = ((ctypes.c_int64 * len(lo))(*lo), (ctypes.c_int64 * len(hi))(*hi))
        return fused("mf_breadcrumbs", base, xs, out, (doubles(weights), *cuts, *tail), (ONE_READ_DEFAULT,))
    keep = None if sparsify == "none" else [keep_count(d, n) for d in densities]
    counts = None if keep is None else (ctypes.c_int64 * len(keep))(*keep)
    mode = native.SPARSIFY_NONE if keep is None else native.SPARSIFY_MAGNITUDE
    params_ = (doubles(weights), counts, mode, *tail)
    return fused("mf_task_arithmetic", base, xs, out, params_, (ONE_READ_DEFAULT,))


def _dare(
    base: HostArray,
    xs: list[HostArray],
    out: HostArray,
    weights: list[float],
    densities: list[float],
    model_keys: list[int],
    tail: tuple,
    rescale: bool,
) -> bool:
    """DARE's passes as kernels/dare.py runs them on the CPU: with `rescale`, the norms pass,
    which leaves the keep bits in `out` for DELLA's apply where they fit its 16-bit words (at
    most native.MASK_WORD_MODELS models; more draw every element again in DARE's apply);
    else DARE's apply alone. `tail`: (consensus, normalize, divisor, lambda), the apply
    passes' last scalars."""
    keys = (ctypes.c_uint64 * len(xs))(*model_keys)
    dens = doubles(densities)
    scales = [1.0] * len(xs)
    if rescale:
        words = len(xs) <= native.MASK_WORD_MODELS
        ptrs, codes = arrays(xs)
        sums, lib = (ctypes.c_double * (2 * len(xs)))(), library()
        optr = out.data_ptr() if words else None
        head = (base.data_ptr(), code(base), ptrs, codes, len(xs), out.numel(), keys, dens, optr, code(out))
        native.check(lib, lib.mf_dare_norms(*head, threads(), sums))
        scales = l1_scales(list(sums))
        if words:
            return fused("mf_della_apply", base, xs, out, (doubles(weights), doubles(scales), *tail))
    return fused("mf_dare", base, xs, out, (doubles(weights), keys, dens, doubles(scales), *tail))


def _della(
    base: HostArray,
    xs: list[HostArray],
    out: HostArray,
    weights: list[float],
    rules: list[tuple[float, float]],
    model_keys: list[int],
    cols: int,
    tail: tuple,
    rescale: bool,
) -> bool:
    """DELLA's two passes as kernels/della.py runs them: the masks pass leaves each element's
    keep bits in `out` (and the L1 norms), the apply pass reads them. `rules`: each model's
    (pmin, span) (`keep_rule`); `tail` as `_dare`'s."""
    k, n, lib = len(xs), out.numel(), library()
    ptrs, codes = arrays(xs)
    sums = (ctypes.c_double * (2 * k))()
    keys = (ctypes.c_uint64 * k)(*model_keys)
    pmins, spans = doubles([r[0] for r in rules]), doubles([r[1] for r in rules])
    bptr, bcode, optr, ocode = base.data_ptr(), code(base), out.data_ptr(), code(out)
    status = lib.mf_della_masks(bptr, bcode, ptrs, codes, k, n, cols, keys, pmins, spans, optr, ocode, threads(), sums)
    native.check(lib, status)
    scales = l1_scales(list(sums)) if rescale else [1.0] * k
    return fused("mf_della_apply", base, xs, out, (doubles(weights), doubles(scales), *tail))
