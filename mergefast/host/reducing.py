"""The torch-free engine's methods whose elementwise pass needs one statistic of the whole
tensor, a sum over its elements that the C library adds up block by block into the caller's
accumulator: SLERP's dots, RAM+'s counts, Model Stock's Gram row (not `filter_wise`). The
statistic's pass and the elementwise pass are separate calls, so host/parts.py can run the
first over a tensor's parts and then the second part by part; ops.py runs both on a whole
tensor. Parts of whole C blocks (mf_block()) added in order give the whole tensor's sums bit
for bit (float64 dots and Gram sums in block order; integer counts in any order).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import native
from ..io.host_array import HostArray
from ..methods.scalars import gram_column, model_stock_ratios, ram_boost, rows_cols, slerp_coefficients_from_dots
from ..methods.spec import split_base
from ..plan import MergePlan, TensorJob
from .ops import arrays, code, doubles, fused, library, threads


@dataclass(frozen=True)
class Reduction:
    """One method's statistic: `zero(job)` a fresh accumulator, `add(job, inputs, stat)` adds
    a tensor's (or a part's) sums to it, `apply(job, inputs, out, stat)` is the elementwise
    pass with the whole tensor's statistic: whether it proved every input finite, or None when
    the statistic leaves the merge to the whole tensor's reference (SLERP's non-finite dots).
    `cuts(job)`: whether the job's statistic is one sum over the whole tensor."""

    zero: Callable[[TensorJob], Any]
    add: Callable[[TensorJob, list[HostArray], Any], None]
    apply: Callable[[TensorJob, list[HostArray], HostArray, Any], bool | None]
    cuts: Callable[[TensorJob], bool] = lambda job: True


def whole(name: str, job: TensorJob, inputs: list[HostArray], out: HostArray) -> bool | None:
    """Method `name`'s statistic pass and elementwise pass over a whole tensor."""
    reduction = REDUCTIONS[name]
    stat = reduction.zero(job)
    reduction.add(job, inputs, stat)
    return reduction.apply(job, inputs, out, stat)


def _add_dots(job: TensorJob, inputs: list[HostArray], dots) -> None:
    a, (b,), _ = split_base(inputs, job.base_index, job.model_params)
    if a.numel():
        lib = library()
        native.check(lib, lib.mf_slerp_dots(a.data_ptr(), code(a), b.data_ptr(), code(b), a.numel(), threads(), dots))


def _slerp_apply(job: TensorJob, inputs: list[HostArray], out: HostArray, dots) -> bool | None:
    coefficients = slerp_coefficients_from_dots(*dots, float(job.global_params["t"]))
    if coefficients is None:
        return None
    a, (b,), _ = split_base(inputs, job.base_index, job.model_params)
    (c0, c1), n, lib = coefficients, out.numel(), library()
    if n:
        status = lib.mf_slerp_apply(
            a.data_ptr(), code(a), b.data_ptr(), code(b), n, c0, c1, out.data_ptr(), code(out), threads()
        )
        native.check(lib, status)
    return False  # SLERP proves nothing about its inputs but through a finite output


def _add_counts(job: TensorJob, inputs: list[HostArray], counts) -> None:
    base, xs, _ = split_base(inputs, job.base_index, job.model_params)
    if base.numel():
        lib, (ptrs, codes), eps = library(), arrays(xs), float(job.global_params["epsilon"])
        status = lib.mf_ram_counts(
            base.data_ptr(), code(base), ptrs, codes, len(xs), base.numel(), eps, threads(), counts
        )
        native.check(lib, status)


def _ram_plus_apply(job: TensorJob, inputs: list[HostArray], out: HostArray, counts) -> bool:
    base, xs, _ = split_base(inputs, job.base_index, job.model_params)
    g, epsilon = job.global_params, float(job.global_params["epsilon"])
    boost = ram_boost(counts[0::2], counts[1::2], float(g["r"]), float(g["alpha"]), epsilon)
    return fused("mf_ram_apply", base, xs, out, (epsilon, doubles(boost))) if out.numel() else True


def _gram_shape(job: TensorJob) -> tuple[int, int]:
    return rows_cols(job.shape, job.global_params["filter_wise"])


def _zero_gram(job: TensorJob):
    k = len(job.sources) - (job.base_index is not None)
    return (ctypes.c_double * (_gram_shape(job)[0] * (k * (k + 1) // 2)))()


def _add_gram(job: TensorJob, inputs: list[HostArray], gram) -> None:
    base, xs, _ = split_base(inputs, job.base_index, job.model_params)
    rows, cols = _gram_shape(job)
    if rows * cols:
        lib, (ptrs, codes) = library(), arrays(xs)
        head = (base.data_ptr(), code(base), ptrs, codes, len(xs), rows, cols)
        native.check(lib, lib.mf_slerpfam_gram(*head, threads(), gram))


def _model_stock_apply(job: TensorJob, inputs: list[HostArray], out: HostArray, gram) -> bool:
    import numpy as np  # here: the elementwise methods need none (io/host_array.py)

    base, xs, _ = split_base(inputs, job.base_index, job.model_params)
    (rows, cols), k = _gram_shape(job), len(xs)
    if rows * cols == 0:
        return True
    table = np.frombuffer(gram, dtype=np.float64).reshape(rows, k * (k + 1) // 2)
    ratios, lib, (ptrs, codes) = model_stock_ratios(table, k), library(), arrays(xs)
    head = (base.data_ptr(), code(base), ptrs, codes, k, rows, cols)
    native.check(lib, lib.mf_model_stock_apply(*head, ratios.ctypes.data, out.data_ptr(), code(out), threads()))
    return bool(np.isfinite(table[:, [gram_column(i, i, k) for i in range(k)]]).all())


REDUCTIONS = {
    "slerp": Reduction(lambda job: (ctypes.c_double * 3)(), _add_dots, _slerp_apply),
    "ramplus_tl": Reduction(
        lambda job: (ctypes.c_int64 * (2 * (len(job.sources) - 1)))(), _add_counts, _ram_plus_apply
    ),
    "model_stock": Reduction(
        _zero_gram, _add_gram, _model_stock_apply, lambda job: not job.global_params["filter_wise"]
    ),
}


def slerp(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """SLERP's dots pass and apply pass, as kernels.slerp runs them; where a dot is not finite,
    the torch reference (imported then) writes `out`."""
    if out.numel() and whole("slerp", job, inputs, out) is None:
        from ..methods.slerp import slerp as reference

        a, (b,), _ = split_base(inputs, job.base_index, job.model_params)
        t = float(job.global_params["t"])
        out.to_torch().copy_(reference(a.to_torch(), b.to_torch(), t, out_dtype=out.to_torch().dtype))
    return False  # SLERP proves nothing about its inputs but through a finite output


def ram_plus(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """RAM+'s counting pass, then RAM's elementwise pass with its factors (kernels/ram.py);
    whether every delta was finite."""
    return whole("ramplus_tl", job, inputs, out) if out.numel() else True


def model_stock(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """Model Stock's Gram pass (every norm and pairwise dot of the task vectors, per row with
    `filter_wise`), the ratios (methods/scalars.py), the elementwise pass
    (kernels/slerp_family.py); whether the norms proved every input finite."""
    return whole("model_stock", job, inputs, out) if out.numel() else True
