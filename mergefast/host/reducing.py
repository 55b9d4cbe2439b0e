"""SLERP and RAM+ on the torch-free engine, as reducing methods (host/reduction.py): SLERP's
three dots, then its elementwise pass; RAM+'s counts, then RAM's elementwise pass with its
factors. `REDUCTIONS` names every reducing method (the Gram ones: host/gram_methods.py).
"""

from __future__ import annotations

import ctypes

from .. import native
from ..io.host_array import HostArray
from ..methods.scalars import ram_boost, slerp_coefficients_from_dots
from ..methods.spec import split_base
from ..plan import MergePlan, TensorJob
from .gram_methods import GRAM_REDUCTIONS
from .ops import arrays, code, doubles, fused, library, threads
from .reduction import Reduction, whole


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


REDUCTIONS = {
    "slerp": Reduction(lambda job: (ctypes.c_double * 3)(), _add_dots, _slerp_apply),
    "ramplus_tl": Reduction(
        lambda job: (ctypes.c_int64 * (2 * (len(job.sources) - 1)))(), _add_counts, _ram_plus_apply
    ),
    **GRAM_REDUCTIONS,
}


def slerp(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """SLERP's dots pass and apply pass, as kernels.slerp runs them; where a dot is not finite,
    the torch reference (imported then) writes `out`."""
    if out.numel() and whole(REDUCTIONS["slerp"], job, inputs, out) is None:
        from ..methods.slerp import slerp as reference

        a, (b,), _ = split_base(inputs, job.base_index, job.model_params)
        t = float(job.global_params["t"])
        out.to_torch().copy_(reference(a.to_torch(), b.to_torch(), t, out_dtype=out.to_torch().dtype))
    return False  # SLERP proves nothing about its inputs but through a finite output


def ram_plus(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """RAM+'s counting pass, then RAM's elementwise pass with its factors (kernels/ram.py);
    whether every delta was finite."""
    return whole(REDUCTIONS["ramplus_tl"], job, inputs, out) if out.numel() else True
