"""Model Stock, nuslerp, multislerp and karcher on the torch-free engine, as reducing methods
(host/reduction.py): the Gram pass (mf_slerpfam_gram: per row, every dot product of the
vectors d_i = x_i - base, or x_i; mf_slerpfam_gram_columns per column, nuslerp's row_wise),
the scalars from it (methods/scalars.py, methods/gram_scalars.py, which
kernels/slerp_family.py and kernels/spherical.py call too), then one elementwise pass: Model
Stock's and nuslerp's own, multislerp's and karcher's the linear or task-arithmetic kernel
with their coefficients.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable

from .. import native
from ..io.host_array import HostArray, import_torch
from ..methods.gram_scalars import (
    cancels,
    gram_matrix,
    karcher_coefficients,
    multislerp_coefficients,
    multislerp_weights,
    nuslerp_factors,
    nuslerp_t,
)
from ..methods.scalars import gram_column, model_stock_ratios, nuslerp_view, rows_cols
from ..methods.spec import optional_base, split_base
from ..plan import MergePlan, TensorJob
from . import gram_vectors, model_weights
from .ops import arrays, code, doubles, fused, library, threads
from .reduction import Reduction, whole
from .task_arithmetic import ONE_READ_DEFAULT


def _inputs(method: str, job: TensorJob, inputs: list[HostArray]) -> tuple[HostArray | None, list[HostArray]]:
    """(base or None, the Gram pass's other inputs) of `method`'s job."""
    if method == "karcher":
        return None, list(inputs)
    if method == "model_stock":
        return split_base(inputs, job.base_index, job.model_params)[:2]
    return optional_base(inputs, job.base_index, job.model_params)[:2]


def _rows_cols(method: str, job: TensorJob) -> tuple[int, int]:
    """The rows of `method`'s Gram sums: per row with Model Stock's filter_wise and nuslerp's
    flatten: false (over the last axis; with row_wise the columns of shape[0] rows, `_columns`),
    else one row of the whole tensor."""
    g = job.global_params
    if method == "model_stock":
        return rows_cols(job.shape, g["filter_wise"])
    if method == "nuslerp":
        return _nuslerp_view(job)[:2]
    return 1, math.prod(job.shape)


def _nuslerp_view(job: TensorJob) -> tuple[int, int, bool]:
    """nuslerp's (rows, cols, columns) of the job's tensor (methods/scalars.py)."""
    g = job.global_params
    return nuslerp_view(job.shape, g["nuslerp_flatten"], g["nuslerp_row_wise"])


def _columns(method: str, job: TensorJob) -> bool:
    """Whether `method`'s Gram sums are per column: nuslerp's row_wise (slices along axis 0)."""
    return method == "nuslerp" and _nuslerp_view(job)[2]


def _vectors(method: str, job: TensorJob) -> int:
    """How many vectors `method`'s Gram sums are per: rows, or columns (`_columns`)."""
    rows, cols = _rows_cols(method, job)
    return cols if _columns(method, job) else rows


def _reduction(method: str, apply: Callable) -> Reduction:
    def zero(job: TensorJob):
        k = gram_vectors(method, job)
        return (ctypes.c_double * (_vectors(method, job) * (k * (k + 1) // 2)))()

    def add(job: TensorJob, inputs: list[HostArray], gram) -> None:
        base, xs = _inputs(method, job, inputs)
        rows, cols = _rows_cols(method, job)
        if rows * cols:
            lib, (ptrs, codes) = library(), arrays(xs)
            bptr, bcode = (None, 0) if base is None else (base.data_ptr(), code(base))
            call = lib.mf_slerpfam_gram_columns if _columns(method, job) else lib.mf_slerpfam_gram
            native.check(lib, call(bptr, bcode, ptrs, codes, len(xs), rows, cols, threads(), gram))

    def run(job: TensorJob, inputs: list[HostArray], out: HostArray, gram):
        base, xs = _inputs(method, job, inputs)
        return apply(job, base, xs, out, gram, _rows_cols(method, job))

    return Reduction(zero, add, run, lambda job: _rows_cols(method, job)[0] == 1 and not _columns(method, job))


def _norms_finite(gram, k: int) -> bool:
    """Whether every |d_i|^2 of the Gram rows is finite (which proves every input finite)."""
    per_row = k * (k + 1) // 2
    return all(math.isfinite(gram[r + gram_column(i, i, k)]) for r in range(0, len(gram), per_row) for i in range(k))


def _model_stock(job, base, xs, out, gram, shape) -> bool:
    import numpy as np  # here: no other method needs it (io/host_array.py)

    (rows, cols), k, lib, (ptrs, codes) = shape, len(xs), library(), arrays(xs)
    ratios = model_stock_ratios(np.frombuffer(gram, dtype=np.float64).reshape(rows, -1), k)
    head = (base.data_ptr(), code(base), ptrs, codes, k, rows, cols)
    native.check(lib, lib.mf_model_stock_apply(*head, ratios.ctypes.data, out.data_ptr(), code(out), threads()))
    return _norms_finite(gram, k)


def _nuslerp(job, base, xs, out, gram, shape) -> bool:
    import numpy as np  # here: no other method needs it (io/host_array.py)

    (rows, cols), (x0, x1), lib = shape, xs, library()
    weights = model_weights("nuslerp", job)
    gram_rows = np.frombuffer(gram, dtype=np.float64).reshape(_vectors("nuslerp", job), 3)
    factors = nuslerp_factors(gram_rows, nuslerp_t(*weights))
    bptr, bcode = (None, 0) if base is None else (base.data_ptr(), code(base))
    head = (bptr, bcode, x0.data_ptr(), code(x0), x1.data_ptr(), code(x1), rows, cols)
    call = lib.mf_nuslerp_apply_columns if _columns("nuslerp", job) else lib.mf_nuslerp_apply
    native.check(lib, call(*head, factors.ctypes.data, out.data_ptr(), code(out), threads()))
    return _norms_finite(gram, 2)


def _combine(base: HostArray | None, xs: list[HostArray], out: HostArray, c: list[float], normalize=False) -> None:
    """base + sum_i c_i (x_i - base), or sum_i c_i x_i (the mean with `normalize`): the
    task-arithmetic or linear call kernels/spherical.py's `_combine` makes."""
    if base is not None:
        tail = (False, False, 1.0, 1.0)  # no sign consensus, no normalize, divisor, lambda
        fused("mf_task_arithmetic", base, xs, out, (doubles(c), None, native.SPARSIFY_NONE, *tail), (ONE_READ_DEFAULT,))
        return
    lib, (ptrs, codes) = library(), arrays(xs)
    total = float(len(xs)) if normalize else 1.0
    status = lib.mf_linear(
        ptrs, codes, len(xs), out.numel(), doubles(c), normalize, total, out.data_ptr(), code(out), threads()
    )
    native.check(lib, status)


def _multislerp(job, base, xs, out, gram, shape) -> bool | None:
    g = job.global_params
    w64 = multislerp_weights(model_weights("multislerp", job), g["normalize_weights"])
    gm = gram_matrix(list(gram), len(xs))
    c = multislerp_coefficients(gm, w64, float(g["eps"]))
    if c is None or cancels(gm, c):
        return None  # the reference decides (`merge_whole`)
    _combine(base, xs, out, c)
    return _norms_finite(gram, len(xs))


def _karcher(job, base, xs, out, gram, shape) -> bool | None:
    g, k = job.global_params, len(xs)
    gm = gram_matrix(list(gram), k)
    c = karcher_coefficients(gm, max_iter=int(g["max_iter"]), tol=float(g["tol"]))
    if c is None:  # the plain mean
        _combine(None, xs, out, [1.0] * k, normalize=True)
    elif cancels(gm, c):
        return None  # the reference decides (`merge_whole`)
    else:
        _combine(None, xs, out, c)
    return _norms_finite(gram, k)


GRAM_REDUCTIONS = {
    "model_stock": _reduction("model_stock", _model_stock),
    "nuslerp": _reduction("nuslerp", _nuslerp),
    "multislerp": _reduction("multislerp", _multislerp),
    "karcher": _reduction("karcher", _karcher),
}


def merge_whole(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """One of these methods over a whole tensor (host/merge.py's CALLS); whether the Gram
    pass's norms proved every input finite. Where multislerp's or karcher's Gram scalars are
    near a degenerate configuration (their apply gives None; a part's, host/merge.py, has its
    whole tensor merged here) the torch reference writes `out`, as kernels/spherical.py runs
    it there, and proves nothing."""
    if not out.numel():
        return True
    proven = whole(GRAM_REDUCTIONS[plan.spec.name], job, inputs, out)
    if proven is None:
        _by_reference(plan, job, inputs, out)
        return False
    return proven


def _by_reference(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray) -> None:
    """`out` = the method's torch reference through its merge function (`plan.spec.merge`,
    methods/adapters.py: antipodal multislerp inputs are its MergeError naming the tensor) on
    torch views of the job's inputs; torch is imported for it."""
    torch = import_torch()  # one merge thread at a time
    from ..methods.spec import MergeContext

    views, out_dtype = [x.to_torch() for x in inputs], getattr(torch, out.dtype)
    result = plan.spec.merge(
        views, job.base_index, job.global_params, job.model_params, out_dtype, MergeContext(tensor_name=job.name)
    )
    out.to_torch().copy_(result.reshape(out.shape))
