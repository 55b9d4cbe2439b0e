"""One job of the torch-free engine: the C kernel calls with the scalars the torch binding
computes (kernels/__init__.py, kernels/dare.py), then the value checks of execute.merge_job.

Bit-exact with the torch engine because both call the same entry points with the same
scalars: the weights' float32 sum is sequential here (methods/scalars.py), as torch's `sum`
of at most 4 float32 values is (host/__init__.py refuses more); the counts, DARE's stream
keys and L1 scales come from the same torch-free functions.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import numpy as np

from .. import native
from ..errors import ConfigError, MergeError
from ..io.host_array import HostArray, host_array
from ..methods.random_keys import stream_key
from ..methods.registry import TASK_ARITHMETIC_FAMILY
from ..methods.scalars import f32_sum, keep_rule, l1_scales, outlier_bounds, slerp_coefficients_from_dots
from ..methods.spec import NONFINITE_REACHES_OUTPUT, ZERO_WEIGHT_SUM, keep_count
from ..plan import MergePlan, TensorJob

ONE_READ_DEFAULT = -1  # the C API's one_read_min: the library's default (SelectionOptions())


def merge_host_job(
    plan: MergePlan, job: TensorJob, inputs: list[HostArray], take: Callable[[int], np.ndarray], seed: int | None = None
):
    """Merge (or, for a copy job, check) one job's inputs; the output lives in `take(nbytes)`.
    `seed` is `--random-seed` (None means 0): with the output name it keys DARE's masks."""
    if job.copy:
        if not _finite(inputs[0]):
            _raise_nonfinite(job, inputs[0], ())
        return inputs[0]
    problem = plan.spec.input_error(len(inputs), job.base_index is not None)
    if problem:
        raise ConfigError(f"tensor {job.name}: {problem}")
    out = host_array(take(job.out_bytes), job.dtype_name, job.shape)
    if plan.spec.name == "linear":
        proven = _linear(plan, job, inputs, out)
    elif plan.spec.name == "slerp":
        proven = _slerp(job, inputs, out)
    else:
        proven = _task_arithmetic(plan.spec.name, job, inputs, out, 0 if seed is None else int(seed))
    output_finite = _finite(out)
    if not output_finite or plan.spec.name not in NONFINITE_REACHES_OUTPUT:
        _warn_nonfinite_inputs(job, inputs, proven)
    if not output_finite:
        _raise_nonfinite(job, out, inputs)
    return out


def _linear(plan: MergePlan, job: TensorJob, xs: list[HostArray], out: HostArray) -> bool:
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
        ptrs, codes = _arrays(xs)
        lib = _lib()
        optr, ocode = out.data_ptr(), _code(out)
        status = lib.mf_linear(ptrs, codes, len(xs), n, _doubles(weights), normalize, total, optr, ocode, _threads())
        native.check(lib, status)
    return False  # linear proves nothing about its inputs but through a finite output


def _slerp(job: TensorJob, inputs: list[HostArray], out: HostArray) -> bool:
    """SLERP's dots pass and apply pass, as kernels.slerp runs them; where a dot is not finite,
    the torch reference (imported then) writes `out`."""
    a = inputs[job.base_index]
    b = inputs[1 - job.base_index]
    t, n, lib = float(job.global_params["t"]), out.numel(), _lib()
    if n == 0:
        return False
    dots = (ctypes.c_double * 3)()
    native.check(lib, lib.mf_slerp_dots(a.data_ptr(), _code(a), b.data_ptr(), _code(b), n, _threads(), dots))
    coefficients = slerp_coefficients_from_dots(*dots, t)
    if coefficients is None:
        from ..methods.slerp import slerp

        out.to_torch().copy_(slerp(a.to_torch(), b.to_torch(), t, out_dtype=out.to_torch().dtype))
        return False
    c0, c1 = coefficients
    status = lib.mf_slerp_apply(
        a.data_ptr(), _code(a), b.data_ptr(), _code(b), n, c0, c1, out.data_ptr(), _code(out), _threads()
    )
    native.check(lib, status)
    return False  # SLERP proves nothing about its inputs but through a finite output


def _task_arithmetic(method: str, job: TensorJob, inputs: list[HostArray], out: HostArray, seed: int) -> bool:
    """The task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*, della*) into
    `out`; whether every delta x_i - base was finite."""
    sparsify, consensus = TASK_ARITHMETIC_FAMILY[method][:2]
    base = inputs[job.base_index]
    others = [i for i in range(len(inputs)) if i != job.base_index]
    xs, params = [inputs[i] for i in others], [job.model_params[i] for i in others]
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
    keys = [stream_key(seed, job.name, i) for i in range(len(xs))]
    if sparsify == "random":
        return _dare(base, xs, out, weights, densities, keys, tail, bool(g["rescale"]))
    if sparsify == "della":
        cols = base.shape[-1] if base.shape else 1
        rules = [keep_rule(d, float(p["epsilon"]), cols) for d, p in zip(densities, params)]
        return _della(base, xs, out, weights, rules, keys, cols, tail, bool(g["rescale"]))
    if sparsify == "magnitude_outliers":
        lo, hi = zip(*(outlier_bounds(d, float(p["gamma"]), n) for d, p in zip(densities, params)))
        cuts = ((ctypes.c_int64 * len(lo))(*lo), (ctypes.c_int64 * len(hi))(*hi))
        return _fused("mf_breadcrumbs", base, xs, out, (_doubles(weights), *cuts, *tail), (ONE_READ_DEFAULT,))
    keep = None if sparsify == "none" else [keep_count(d, n) for d in densities]
    counts = None if keep is None else (ctypes.c_int64 * len(keep))(*keep)
    mode = native.SPARSIFY_NONE if keep is None else native.SPARSIFY_MAGNITUDE
    params_ = (_doubles(weights), counts, mode, *tail)
    return _fused("mf_task_arithmetic", base, xs, out, params_, (ONE_READ_DEFAULT,))


def _dare(
    base: HostArray,
    xs: list[HostArray],
    out: HostArray,
    weights: list[float],
    densities: list[float],
    stream_keys: list[int],
    tail: tuple,
    rescale: bool,
) -> bool:
    """DARE's passes as kernels/dare.py runs them on the CPU: with `rescale`, the norms pass
    leaves the keep bits in `out` and DELLA's apply reads them; else one apply pass. `tail`:
    (consensus, normalize, divisor, lambda), the apply passes' last scalars."""
    keys = (ctypes.c_uint64 * len(xs))(*stream_keys)
    dens = _doubles(densities)
    if not rescale:
        return _fused("mf_dare", base, xs, out, (_doubles(weights), keys, dens, _doubles([1.0] * len(xs)), *tail))
    ptrs, codes = _arrays(xs)
    sums, lib = (ctypes.c_double * (2 * len(xs)))(), _lib()
    bptr, bcode, optr, ocode, n = base.data_ptr(), _code(base), out.data_ptr(), _code(out), out.numel()
    status = lib.mf_dare_norms(bptr, bcode, ptrs, codes, len(xs), n, keys, dens, optr, ocode, _threads(), sums)
    native.check(lib, status)
    return _fused("mf_della_apply", base, xs, out, (_doubles(weights), _doubles(l1_scales(list(sums))), *tail))


def _della(
    base: HostArray,
    xs: list[HostArray],
    out: HostArray,
    weights: list[float],
    rules: list[tuple[float, float]],
    stream_keys: list[int],
    cols: int,
    tail: tuple,
    rescale: bool,
) -> bool:
    """DELLA's two passes as kernels/della.py runs them: the masks pass leaves each element's
    keep bits in `out` (and the L1 norms), the apply pass reads them. `rules`: each model's
    (pmin, span) (`keep_rule`); `tail` as `_dare`'s."""
    k, n, lib = len(xs), out.numel(), _lib()
    ptrs, codes = _arrays(xs)
    sums = (ctypes.c_double * (2 * k))()
    keys = (ctypes.c_uint64 * k)(*stream_keys)
    pmins, spans = _doubles([r[0] for r in rules]), _doubles([r[1] for r in rules])
    bptr, bcode, optr, ocode = base.data_ptr(), _code(base), out.data_ptr(), _code(out)
    status = lib.mf_della_masks(bptr, bcode, ptrs, codes, k, n, cols, keys, pmins, spans, optr, ocode, _threads(), sums)
    native.check(lib, status)
    scales = l1_scales(list(sums)) if rescale else [1.0] * k
    return _fused("mf_della_apply", base, xs, out, (_doubles(weights), _doubles(scales), *tail))


def _fused(entry: str, base: HostArray, xs: list[HostArray], out: HostArray, params: tuple, tail: tuple = ()) -> bool:
    """The C `entry`(base, xs, k, n, *params, out, *tail, threads, &finite) that every fused
    task-arithmetic entry point shares (kernels/cpu.py's `_fused_apply`); whether every delta
    was finite."""
    ptrs, codes = _arrays(xs)
    finite, lib = ctypes.c_int32(), _lib()
    fn = getattr(lib, entry)
    status = fn(
        base.data_ptr(), _code(base), ptrs, codes, len(xs), out.numel(), *params,
        out.data_ptr(), _code(out), *tail, _threads(), ctypes.byref(finite),
    )  # fmt: skip
    native.check(lib, status)
    return bool(finite.value)


def _code(array: HostArray) -> int:
    return native.DTYPE_CODES[array.dtype]


def _lib():
    lib, error = native.library()
    if lib is None:
        raise RuntimeError(f"the mergefast CPU kernels are unavailable: {error}; {native.FIX}")
    return lib


def _threads() -> int:
    return native.default_threads()


def _arrays(xs: Sequence[HostArray]):
    """The C arrays of the data pointers and dtype codes of `xs`."""
    return (
        (ctypes.c_void_p * len(xs))(*(x.data_ptr() for x in xs)),
        (ctypes.c_int32 * len(xs))(*(_code(x) for x in xs)),
    )


def _doubles(values: Sequence[float]):
    return (ctypes.c_double * len(values))(*values)


def _finite(array: HostArray) -> bool:
    """No NaN or inf in `array` (integer arrays always: copy jobs of integer buffers)."""
    if array.dtype not in native.DTYPE_CODES or array.numel() == 0:
        return True
    return native.all_finite(array.data_ptr(), array.dtype, array.numel(), _threads())


def _warn_nonfinite_inputs(job: TensorJob, inputs: list[HostArray], proven: bool) -> None:
    """checks.warn_nonfinite_inputs for the inputs the kernel did not prove finite: torch
    is imported only when one of them holds NaN or inf, for the message."""
    if proven:
        return
    bad = [i for i, x in enumerate(inputs) if not _finite(x)]
    if bad:
        from ..checks import warn_nonfinite_inputs

        warn_nonfinite_inputs(job.name, [job.sources[i] for i in bad], [inputs[i].to_torch() for i in bad])


def _raise_nonfinite(job: TensorJob, out: HostArray, inputs: Sequence[HostArray]) -> None:
    """checks.check_output_finite's MergeError for a non-finite output (imports torch)."""
    from ..checks import check_output_finite

    check_output_finite(job.name, out.to_torch(), job.sources, [x.to_torch() for x in inputs])
    raise MergeError(f"tensor {job.name}: the output has NaN or inf; refusing to write a broken model")
