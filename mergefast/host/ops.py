"""The torch-free engine's C calls (host/merge.py dispatches to them): the ctypes helpers,
and linear, nearswap, SCE, RAM and arcee_fusion with the scalars their torch binding computes
(kernels/__init__.py, kernels/slerp_family.py, kernels/sce.py, kernels/ram.py,
kernels/arcee_fusion.py). The task-arithmetic family is in host/task_arithmetic.py; SLERP,
RAM+ and Model Stock, whose statistic adds up part by part, in host/reducing.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Sequence

from .. import native
from ..errors import MergeError
from ..io.host_array import HostArray, loaded_torch
from ..methods.scalars import arcee_ranks, arcee_threshold, f32_sum, rows_cols, sce_weights
from ..methods.spec import ZERO_WEIGHT_SUM, split_base
from ..plan import MergePlan, TensorJob


def linear(plan: MergePlan, job: TensorJob, xs: list[HostArray], out: HostArray, seed: int) -> bool:
    """linear into `out`; proves nothing about its inputs (but through a finite output)."""
    weights = [float(p["weight"]) for p in job.model_params]
    normalize = bool(job.global_params["normalize"])
    total = f32_sum(weights)
    if normalize and abs(total) < ZERO_WEIGHT_SUM:
        raise MergeError(
            f"{plan.source}: tensor {job.name}: linear weights {weights} sum to zero with normalize: true; "
            "change the weights or set normalize: false"
        )
    n = out.numel()
    if n:
        ptrs, codes = arrays(xs)
        lib = library()
        optr, ocode = out.data_ptr(), code(out)
        status = lib.mf_linear(ptrs, codes, len(xs), n, doubles(weights), normalize, total, optr, ocode, threads())
        native.check(lib, status)
    return False


def nearswap(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """nearswap's one elementwise pass (kernels/slerp_family.py)."""
    b, (x,), _ = split_base(inputs, job.base_index, job.model_params)
    n, lib = out.numel(), library()
    if n:
        t = float(job.global_params["t"])
        status = lib.mf_nearswap(
            b.data_ptr(), code(b), x.data_ptr(), code(x), n, t, out.data_ptr(), code(out), threads()
        )
        native.check(lib, status)
    return False


def sce(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """SCE's selection pass (the variance top-k and the energies, its rule left in `out`), the
    weights from the energies (methods/scalars.py), then the apply pass (kernels/sce.py)."""
    base, xs, _ = split_base(inputs, job.base_index, job.model_params)
    k, n, lib = len(xs), out.numel(), library()
    if n == 0:
        return False
    ptrs, codes = arrays(xs)
    thr, quota, cut = ctypes.c_uint32(), ctypes.c_int64(), ctypes.c_int32()
    eq_prefix = (ctypes.c_int64 * (-(-n // lib.mf_block()) + 1))()
    energies = (ctypes.c_double * k)()
    head = (base.data_ptr(), code(base), ptrs, codes, k, n)
    topk = float(job.global_params["select_topk"])
    rule = (ctypes.byref(thr), ctypes.byref(quota), ctypes.byref(cut), eq_prefix, energies)
    native.check(lib, lib.mf_sce_select(*head, topk, threads(), *rule, out.data_ptr(), code(out)))
    omega = doubles(sce_weights(list(energies), n))
    prefix = eq_prefix if cut.value else None
    tail = (out.data_ptr(), code(out), threads())
    native.check(lib, lib.mf_sce_apply(*head, thr.value, quota.value, bool(cut.value), prefix, omega, *tail))
    return False


def ram(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """RAM's elementwise pass (kernels/ram.py; RAM+ is host/reducing.py's); whether every
    delta was finite."""
    base, xs, _ = split_base(inputs, job.base_index, job.model_params)
    if out.numel() == 0:
        return True
    return fused("mf_ram_apply", base, xs, out, (float(job.global_params["epsilon"]), None))


def arcee_fusion(plan: MergePlan, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """arcee_fusion's selection call (per-row KL, the importance's exact quartiles), then its
    elementwise pass (kernels/arcee_fusion.py); whether every delta was finite. An empty
    tensor goes to the torch reference, whose error it is (no quantile of nothing)."""
    b, (x,), _ = split_base(inputs, job.base_index, job.model_params)
    n, lib = out.numel(), library()
    if n == 0:
        from ..methods.arcee_fusion import arcee_fusion as reference

        reference(b.to_torch(), x.to_torch())
        return False
    rows, cols = rows_cols(b.shape)
    kl = (ctypes.c_float * rows)()
    values, ranks = (ctypes.c_float * 3)(), (ctypes.c_int64 * 3)(*arcee_ranks(n))
    head = (b.data_ptr(), code(b), x.data_ptr(), code(x), rows, cols)
    native.check(lib, lib.mf_arcee_select(*head, ranks, threads(), kl, values, out.data_ptr(), code(out)))
    finite, tail = ctypes.c_int32(), (out.data_ptr(), code(out), threads())
    threshold = arcee_threshold(list(values))
    native.check(lib, lib.mf_arcee_apply(*head, kl, threshold, *tail, ctypes.byref(finite)))
    return bool(finite.value)


def fused(entry: str, base: HostArray, xs: list[HostArray], out: HostArray, params: tuple, tail: tuple = ()) -> bool:
    """`native.fused_call` of `entry` on HostArrays (kernels/cpu.py's `_fused_apply` makes the
    same call on torch tensors); whether every delta was finite."""
    head = (base.data_ptr(), code(base), *arrays(xs), len(xs), out.numel())
    return native.fused_call(library(), entry, head, params, (out.data_ptr(), code(out)), tail, threads())


def code(array: HostArray) -> int:
    """The C dtype code of `array`."""
    return native.DTYPE_CODES[array.dtype]


library = native.require  # the loaded C library, or a RuntimeError saying how to build it
doubles = native.doubles


_TEAM = threading.local()  # the calling thread's team size, set by `team`


@contextlib.contextmanager
def team(size: int | None):
    """Within the block, the calling thread's C calls use `size` OpenMP threads (None: the
    default, `threads`): host/side_by_side.py's merges side by side."""
    before = getattr(_TEAM, "size", None)
    _TEAM.size = size
    try:
        yield
    finally:
        _TEAM.size = before


def threads() -> int:
    """The OpenMP team size: the calling thread's `team`, else torch's intra-op thread count in
    a process that has torch (as the kernel API's), else native.default_threads."""
    size = getattr(_TEAM, "size", None)
    if size:
        return size
    torch = loaded_torch()
    return torch.get_num_threads() if torch is not None else native.default_threads()


def arrays(xs: Sequence[HostArray]):
    """The C arrays of the data pointers and dtype codes of `xs`."""
    return (
        (ctypes.c_void_p * len(xs))(*(x.data_ptr() for x in xs)),
        (ctypes.c_int32 * len(xs))(*(code(x) for x in xs)),
    )
