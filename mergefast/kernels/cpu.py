"""ctypes binding of the CPU kernels to torch tensors: the C library `libmergefast_cpu` next
to this file (sources in `csrc/`, its C ABI in `csrc/mergefast.h`), built by setup.py without
torch and loaded by `mergefast/native.py` (which the torch-free engine, host/, uses directly).

`ERROR` is None when the library loaded, else why it did not; `FIX` then says how to get it.
Nothing here raises at import. The functions take inputs that `mergefast/kernels/__init__.py`
validated, and the scalar constants computed as the references compute them; they check what
the C library cannot see (device, layout, element counts) and pass raw data pointers, dtype
codes, element counts and `torch.get_num_threads()`.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..native import (  # noqa: F401 - the library's constants, re-exported for tests and benchmarks
    _ERR_MEMORY,
    _OK,
    ABI_VERSION,
    DTYPE_CODES,
    FIX,
    LIBRARY,
    SPARSIFY_MAGNITUDE,
    SPARSIFY_NONE,
    fused_call,
    unavailable,
)
from ..native import doubles as _doubles
from ..native import load as _load
from .selection import DEFAULT, SelectionOptions

_DTYPES = {getattr(torch, name): code for name, code in DTYPE_CODES.items()}

_LIB, ERROR = _load()
BLOCK = _LIB.mf_block() if _LIB is not None else 2048


def threads() -> int:
    """OpenMP threads the kernels use (torch's intra-op thread count)."""
    return torch.get_num_threads()


def _path_counts(fn_name: str) -> tuple[int, int]:
    """The two counters a C API function fills: calls that took a fast path, and that fell back."""
    took, fell_back = ctypes.c_int64(), ctypes.c_int64()
    getattr(_lib(), fn_name)(ctypes.byref(took), ctypes.byref(fell_back))
    return took.value, fell_back.value


def one_read_counts() -> tuple[int, int]:
    """Calls since the library was loaded that the one-read scheme finished, and that fell
    back to the two passes."""
    return _path_counts("mf_one_read_counts")


def sce_window_counts() -> tuple[int, int]:
    """SCE selections since the library was loaded whose energies came from the keys pass's
    window (csrc/cpu/sce_window.h), and that had a window but took the energies' own pass."""
    return _path_counts("mf_sce_window_counts")


# ----------------------------------------------------------------------------- per-thread state

_thread = threading.local()  # per merge thread: the output allocator, the proven-finite set


@contextmanager
def output_buffers(take: Callable[[int], torch.Tensor]) -> Iterator[None]:
    """In this block, this thread's kernel outputs live in `take(nbytes)`, a uint8 CPU tensor
    of at least `nbytes` bytes, instead of fresh memory.

    Fresh memory costs its page faults on every tensor: filling a fresh 65 MB tensor takes
    23 ms (16,000 faults) on a 2-vCPU AMD EPYC VM, a recycled one 2 ms. The pipeline hands out
    recycled buffers here (staging/host.py): TIES of the 0.3B family, 5 runs alternated,
    45,000 fewer faults and 5.03 s of CPU per run instead of 5.20 s."""
    previous = getattr(_thread, "take", None)
    _thread.take = take
    try:
        yield
    finally:
        _thread.take = previous


@contextmanager
def finite_inputs() -> Iterator[set[int]]:
    """In this block, the data pointers of the inputs that this thread's kernels proved
    finite collect in the yielded set.

    The task-arithmetic kernel computes every delta x_i - base anyway, and a finite delta
    means finite operands: a TIES merge then needs no separate NaN/inf scan of its inputs.
    Measured on a 2-vCPU AMD EPYC VM: the scan takes 0.13 s of a 4.3 s TIES merge of the 0.3B
    family (12 runs alternated); the check in the apply pass costs it 2-3% (48-49 ms on a 7B
    layer with it, 47 ms without)."""
    previous = getattr(_thread, "finite", None)
    _thread.finite = proven = set()
    try:
        yield proven
    finally:
        _thread.finite = previous


def _empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    take = getattr(_thread, "take", None)
    if take is None or like.device.type != "cpu":
        return torch.empty(like.shape, dtype=dtype, device=like.device)
    nbytes = like.numel() * dtype.itemsize
    return take(nbytes)[:nbytes].view(dtype).view(like.shape)


# ----------------------------------------------------------------------------- calls


_BUILDS: dict[Path, ctypes.CDLL] = {}  # library_build's loaded builds, by path


@contextmanager
def library_build(path: Path) -> Iterator[None]:
    """In this block the kernels call the build of the library at `path` (another build of
    this ABI: benchmarks/ab_libs.py compares two builds call by call in one process, where
    runs of separate processes drown a 10% change in this VM's noise). Not thread-safe: for
    benchmarks only. The file is loaded once per path; copy a build to a new path to reload it."""
    global _LIB
    path = Path(path)
    if path not in _BUILDS:
        lib, error = _load(path)
        if lib is None:
            raise RuntimeError(error)
        _BUILDS[path] = lib
    previous, _LIB = _LIB, _BUILDS[path]
    try:
        yield
    finally:
        _LIB = previous


def _lib() -> ctypes.CDLL:
    if _LIB is None:
        raise unavailable(ERROR)
    return _LIB


def _check(status: int) -> None:
    """Raise for a failed call: MemoryError when an allocation failed, else RuntimeError."""
    if status != _OK:
        message = _lib().mf_last_error().decode(errors="replace")
        raise (MemoryError if status == _ERR_MEMORY else RuntimeError)(message)


def _view(t: torch.Tensor, n: int, op: str) -> tuple[int, int]:
    """(data pointer, dtype code) of a contiguous CPU tensor of n elements."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise RuntimeError(f"{op}: expected contiguous CPU tensors")
    if t.numel() != n:
        raise RuntimeError(f"{op}: inputs have different sizes")
    code = _DTYPES.get(t.dtype)
    if code is None:
        raise RuntimeError(f"{op}: unsupported dtype {t.dtype}")
    return t.data_ptr(), code


def _views(ts: Sequence[torch.Tensor], n: int, op: str):
    """The C arrays of the data pointers and dtype codes of inputs `ts`."""
    views = [_view(t, n, op) for t in ts]
    return (
        (ctypes.c_void_p * len(views))(*(p for p, _ in views)),
        (ctypes.c_int32 * len(views))(*(c for _, c in views)),
    )


def linear(
    xs: Sequence[torch.Tensor], weights: Sequence[float], divide: bool, total: float, out_dtype: torch.dtype
) -> torch.Tensor:
    out = _empty(xs[0], out_dtype)
    n = out.numel()
    ptrs, codes = _views(xs, n, "linear")
    optr, ocode = _view(out, n, "linear")
    _check(_lib().mf_linear(ptrs, codes, len(xs), n, _doubles(weights), divide, total, optr, ocode, threads()))
    return out


def _fused_apply(entry: str, base, xs, out: torch.Tensor, params: tuple, tail: tuple = ()) -> bool:
    """Call the C apply `entry`(base, xs, k, n, *params, out, *tail, threads, &finite), the
    layout every fused merge entry point shares; whether every delta x_i - base was finite."""
    n, op = out.numel(), entry.removeprefix("mf_")  # the op its errors name
    head = (*_view(base, n, op), *_views(xs, n, op), len(xs), n)
    return fused_call(_lib(), entry, head, params, _view(out, n, op), tail, threads())


def _record_finite(finite: bool, base: torch.Tensor, xs: Sequence[torch.Tensor]) -> None:
    """Inside `finite_inputs()`: a merge that saw only finite deltas proves its inputs finite."""
    proven = getattr(_thread, "finite", None)
    if finite and proven is not None:
        proven.update(t.data_ptr() for t in (base, *xs))


def task_arithmetic_into(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    keep: Sequence[int] | None,
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out: torch.Tensor,
    selection: SelectionOptions = DEFAULT,
) -> bool:
    """task_arithmetic into `out` (which must not overlap an input: the selection uses it as
    scratch); returns whether every delta x_i - base was finite."""
    counts = None if keep is None else (ctypes.c_int64 * len(keep))(*keep)
    sparsify = SPARSIFY_NONE if keep is None else SPARSIFY_MAGNITUDE
    params = (_doubles(weights), counts, sparsify, consensus, normalize, divisor, lambda_)
    return _fused_apply("mf_task_arithmetic", base, xs, out, params, tail=(_one_read_min(selection),))


def _one_read_min(selection: SelectionOptions) -> int:
    """The C API's one_read_min for `selection`: 0 never, -1 the library's default."""
    if not selection.one_read:
        return 0
    return -1 if selection.one_read_min is None else selection.one_read_min


def task_arithmetic(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    keep: Sequence[int] | None,
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
    selection: SelectionOptions = DEFAULT,
) -> torch.Tensor:
    out = _empty(base, out_dtype)
    finite = task_arithmetic_into(base, xs, weights, keep, consensus, normalize, divisor, lambda_, out, selection)
    _record_finite(finite, base, xs)
    return out


def _keys(keys: Sequence[int]):
    return (ctypes.c_uint64 * len(keys))(*keys)


def dare_norms(
    base: torch.Tensor, xs: Sequence[torch.Tensor], keys: Sequence[int], densities: Sequence[float]
) -> list[float]:
    """DARE's L1 norms: [sum |d_0|, sum |kept d_0|, sum |d_1|, ...] (float64, fixed order)."""
    return _dare_norms(base, xs, keys, densities, None)


def dare_masks(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    keys: Sequence[int],
    densities: Sequence[float],
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, list[float]]:
    """DARE's norms pass that also leaves each element's keep bits in a new output (at most 16
    models), for `della_apply`: (that output, the norms of `dare_norms`)."""
    out = _empty(base, out_dtype)
    return out, _dare_norms(base, xs, keys, densities, out)


def _dare_norms(base, xs, keys, densities, out: torch.Tensor | None) -> list[float]:
    n, op = base.numel(), "dare_norms"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op) if out is not None else (None, 0)
    sums = (ctypes.c_double * (2 * len(xs)))()
    keys_, dens = _keys(keys), _doubles(densities)
    _check(_lib().mf_dare_norms(bptr, bcode, ptrs, codes, len(xs), n, keys_, dens, optr, ocode, threads(), sums))
    return list(sums)


def dare(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    keys: Sequence[int],
    densities: Sequence[float],
    scales: Sequence[float],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """DARE's apply pass (dare_linear / dare_ties with consensus) into a new tensor."""
    out = _empty(base, out_dtype)
    finite = _fused_apply(
        "mf_dare",
        base,
        xs,
        out,
        (_doubles(weights), _keys(keys), _doubles(densities), _doubles(scales), consensus, normalize, divisor, lambda_),
    )
    _record_finite(finite, base, xs)
    return out


def magnitude_keep_into(base: torch.Tensor, x: torch.Tensor, keep: int, mask: torch.Tensor) -> None:
    """The keep-mask of x - base into the bool tensor `mask` (not overlapping an input)."""
    n, op = x.numel(), "magnitude_keep"
    bptr, bcode = _view(base, n, op)
    xptr, xcode = _view(x, n, op)
    if mask.dtype != torch.bool or mask.numel() != n or not mask.is_contiguous():
        raise RuntimeError(f"{op}: bad mask tensor")
    _check(_lib().mf_magnitude_keep(bptr, bcode, xptr, xcode, n, keep, mask.data_ptr(), threads()))


def magnitude_keep(base: torch.Tensor, x: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep-mask of x - base (the selection the kernels apply); for tests."""
    mask = torch.empty(x.shape, dtype=torch.bool)
    magnitude_keep_into(base.contiguous(), x.contiguous(), keep, mask)
    return mask


def slerp_dots(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    n = a.numel()
    aptr, acode = _view(a, n, "slerp")
    bptr, bcode = _view(b, n, "slerp")
    dots = (ctypes.c_double * 3)()
    _check(_lib().mf_slerp_dots(aptr, acode, bptr, bcode, n, threads(), dots))
    return dots[0], dots[1], dots[2]


def slerp_apply(a: torch.Tensor, b: torch.Tensor, c0: float, c1: float, out_dtype: torch.dtype) -> torch.Tensor:
    out = _empty(a, out_dtype)
    n = out.numel()
    aptr, acode = _view(a, n, "slerp")
    bptr, bcode = _view(b, n, "slerp")
    optr, ocode = _view(out, n, "slerp")
    _check(_lib().mf_slerp_apply(aptr, acode, bptr, bcode, n, c0, c1, optr, ocode, threads()))
    return out


# ----------------------------------------------------------------------------- SLERP family


def _optional(base: torch.Tensor | None, n: int, op: str) -> tuple[int | None, int]:
    """(data pointer, dtype code) of an optional input; (None, 0) without one."""
    return (None, 0) if base is None else _view(base, n, op)


def _f32_array(values: torch.Tensor, count: int, op: str) -> int:
    """Data pointer of `count` contiguous float32 values on the CPU."""
    if values.dtype != torch.float32 or values.device.type != "cpu" or not values.is_contiguous():
        raise RuntimeError(f"{op}: expected contiguous float32 CPU scalars")
    if values.numel() != count:
        raise RuntimeError(f"{op}: expected {count} scalars, got {values.numel()}")
    return values.data_ptr()


def gram(
    base: torch.Tensor | None, xs: Sequence[torch.Tensor], rows: int, cols: int, *, columns: bool = False
) -> torch.Tensor:
    """Per row, <d_i, d_j> for i <= j in float64 (d_i = x_i - base, or x_i): (rows, P); with
    `columns`, per column of the rows x cols view: (cols, P)."""
    n, op, k = rows * cols, "gram", len(xs)
    bptr, bcode = _optional(base, n, op)
    ptrs, codes = _views(xs, n, op)
    out = torch.zeros((cols if columns else rows, k * (k + 1) // 2), dtype=torch.float64)  # the C call adds to it
    call = _lib().mf_slerpfam_gram_columns if columns else _lib().mf_slerpfam_gram
    _check(call(bptr, bcode, ptrs, codes, k, rows, cols, threads(), out.data_ptr()))
    _record_gram_finite(out, base, xs)
    return out


def _record_gram_finite(gram: torch.Tensor, base: torch.Tensor | None, xs: Sequence[torch.Tensor]) -> None:
    """Inside `finite_inputs()`: finite norms |d_i|^2 (float64 sums of squares, which no NaN or
    inf leaves finite) prove every d_i = x_i - base, hence x_i and the base, finite; the
    executor then skips its NaN/inf scan of them (model_stock and karcher, whose elementwise
    passes do not check: ~14 ms per 45M bf16 elements per input on a 2-vCPU AMD EPYC VM)."""
    if getattr(_thread, "finite", None) is None:
        return
    k = len(xs)
    diagonal = [i * k - i * (i - 1) // 2 for i in range(k)]  # columns of <d_i, d_i>
    if bool(torch.isfinite(gram[:, diagonal]).all()):
        proven = _thread.finite
        proven.update(t.data_ptr() for t in xs)
        if base is not None:
            proven.add(base.data_ptr())


def nuslerp_apply(
    base: torch.Tensor | None,
    x0: torch.Tensor,
    x1: torch.Tensor,
    rows: int,
    cols: int,
    factors: torch.Tensor,
    out_dtype: torch.dtype,
    *,
    columns: bool = False,
) -> torch.Tensor:
    """out = base + (c0 (x0 - base) + c1 (x1 - base)) / dv per row (factors: rows x 3 float32),
    or per column of the rows x cols view (`columns`, factors: cols x 3)."""
    out = _empty(x0, out_dtype)
    n, op = out.numel(), "nuslerp"
    bptr, bcode = _optional(base, n, op)
    (p0, c0), (p1, c1) = _view(x0, n, op), _view(x1, n, op)
    optr, ocode = _view(out, n, op)
    fptr = _f32_array(factors, 3 * (cols if columns else rows), op)
    call = _lib().mf_nuslerp_apply_columns if columns else _lib().mf_nuslerp_apply
    _check(call(bptr, bcode, p0, c0, p1, c1, rows, cols, fptr, optr, ocode, threads()))
    return out


def model_stock_apply(
    base: torch.Tensor, xs: Sequence[torch.Tensor], rows: int, cols: int, t: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """out = t m + (1 - t) base per row (t: rows float32), m the mean of xs."""
    out = _empty(base, out_dtype)
    n, op = out.numel(), "model_stock"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    tptr = _f32_array(t, rows, op)
    _check(_lib().mf_model_stock_apply(bptr, bcode, ptrs, codes, len(xs), rows, cols, tptr, optr, ocode, threads()))
    return out


def nearswap(base: torch.Tensor, x: torch.Tensor, t: float, out_dtype: torch.dtype) -> torch.Tensor:
    """w = clamp(t / max(|base - x|, 1e-6), 0, 1); out = w x + (1 - w) base."""
    out = _empty(base, out_dtype)
    n, op = out.numel(), "nearswap"
    bptr, bcode = _view(base, n, op)
    xptr, xcode = _view(x, n, op)
    optr, ocode = _view(out, n, op)
    _check(_lib().mf_nearswap(bptr, bcode, xptr, xcode, n, t, optr, ocode, threads()))
    return out


def sce_select(base: torch.Tensor, xs: Sequence[torch.Tensor], select_topk: float, out_dtype: torch.dtype):
    """SCE's variance selection and energies: (rule, [sum of squared kept deltas per model]),
    the rule (threshold key, tie quota, running tie counts per block or None, the output) for
    `sce_apply`. The output is allocated here: until the apply fills it, its slots hold the
    top bits of every variance key (csrc/cpu/sce.h), so no other n-sized memory is taken."""
    out = _empty(base, out_dtype)
    n, op = base.numel(), "sce_select"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    thr, quota, cut = ctypes.c_uint32(), ctypes.c_int64(), ctypes.c_int32()
    eq_prefix = (ctypes.c_int64 * (-(-n // BLOCK) + 1))()
    energies = (ctypes.c_double * len(xs))()
    _check(
        _lib().mf_sce_select(
            bptr,
            bcode,
            ptrs,
            codes,
            len(xs),
            n,
            float(select_topk),
            threads(),
            ctypes.byref(thr),
            ctypes.byref(quota),
            ctypes.byref(cut),
            eq_prefix,
            energies,
            optr,
            ocode,
        )
    )
    rule = (thr.value, quota.value, eq_prefix if cut.value else None, out)
    return rule, list(energies)


def sce_apply(
    base: torch.Tensor, xs: Sequence[torch.Tensor], rule, omega: Sequence[float], out_dtype: torch.dtype
) -> torch.Tensor:
    """SCE's apply pass with `sce_select`'s rule and the weights omega, into the output that
    `sce_select` allocated (of dtype out_dtype)."""
    thr, quota, eq_prefix, out = rule
    n, op = out.numel(), "sce_apply"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    cut = eq_prefix is not None
    _check(
        _lib().mf_sce_apply(
            bptr,
            bcode,
            ptrs,
            codes,
            len(xs),
            n,
            thr,
            quota,
            cut,
            eq_prefix,
            _doubles(omega),
            optr,
            ocode,
            threads(),
        )
    )
    return out


def breadcrumbs(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    lo: Sequence[int],
    hi: Sequence[int],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out_dtype: torch.dtype,
    selection: SelectionOptions = DEFAULT,
) -> torch.Tensor:
    """Breadcrumbs (breadcrumbs / breadcrumbs_ties with consensus) into a new tensor: model i
    keeps the deltas at positions [lo[i], hi[i]) of its ascending stable |delta| order. The
    cuts are found as task_arithmetic's selection, the one read included (`selection`)."""
    out = _empty(base, out_dtype)
    finite = _fused_apply(
        "mf_breadcrumbs",
        base,
        xs,
        out,
        (
            _doubles(weights),
            (ctypes.c_int64 * len(lo))(*lo),
            (ctypes.c_int64 * len(hi))(*hi),
            consensus,
            normalize,
            divisor,
            lambda_,
        ),
        tail=(_one_read_min(selection),),
    )
    _record_finite(finite, base, xs)
    return out


def della_masks(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    keys: Sequence[int],
    pmin: Sequence[float],
    span: Sequence[float],
    cols: int,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, list[float]]:
    """DELLA's first pass: a new output holding each element's keep bits (for
    `della_apply`), and [sum |d_0|, sum |kept d_0|, sum |d_1|, ...] (float64, fixed order)."""
    out = _empty(base, out_dtype)
    n, op = out.numel(), "della_masks"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    sums = (ctypes.c_double * (2 * len(xs)))()
    _check(
        _lib().mf_della_masks(
            bptr,
            bcode,
            ptrs,
            codes,
            len(xs),
            n,
            cols,
            _keys(keys),
            _doubles(pmin),
            _doubles(span),
            optr,
            ocode,
            threads(),
            sums,
        )
    )
    return out, list(sums)


def della_apply(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    weights: Sequence[float],
    scales: Sequence[float],
    consensus: bool,
    normalize: bool,
    divisor: float,
    lambda_: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """DELLA's apply pass into `out` (which holds della_masks' keep bits); returns `out`."""
    finite = _fused_apply(
        "mf_della_apply", base, xs, out, (_doubles(weights), _doubles(scales), consensus, normalize, divisor, lambda_)
    )
    _record_finite(finite, base, xs)
    return out


# ----------------------------------------------------------------------------- arcee_fusion


def arcee_select(
    base: torch.Tensor, other: torch.Tensor, rows: int, cols: int, ranks: Sequence[int], out_dtype
) -> tuple[torch.Tensor, list[float], torch.Tensor]:
    """arcee_fusion's selection: (the float32 KL of every row, [the values of the three 0-based
    ascending ranks of the importance |other - base| * KL], a new output tensor of `out_dtype`
    for arcee_apply, which holds the keys' top bits meanwhile)."""
    n, op = rows * cols, "arcee_select"
    out = _empty(base, out_dtype)
    bptr, bcode = _view(base, n, op)
    xptr, xcode = _view(other, n, op)
    optr, ocode = _view(out, n, op)
    kl = torch.empty(rows, dtype=torch.float32)
    values = (ctypes.c_float * 3)()
    ks = (ctypes.c_int64 * 3)(*ranks)
    head = (bptr, bcode, xptr, xcode, rows, cols)
    _check(_lib().mf_arcee_select(*head, ks, threads(), kl.data_ptr(), values, optr, ocode))
    return kl, list(values), out


def arcee_apply(
    base: torch.Tensor, other: torch.Tensor, rows: int, cols: int, kl: torch.Tensor, threshold: float, out: torch.Tensor
) -> torch.Tensor:
    """out = base + (|other - base| * kl[row] >= threshold ? other - base : 0), into `out`;
    inside `finite_inputs()`, base and other are proven finite when every delta was."""
    n, op = out.numel(), "arcee_apply"
    bptr, bcode = _view(base, n, op)
    xptr, xcode = _view(other, n, op)
    optr, ocode = _view(out, n, op)
    kptr = _f32_array(kl, rows, op)
    finite = ctypes.c_int32()
    _check(
        _lib().mf_arcee_apply(
            bptr, bcode, xptr, xcode, rows, cols, kptr, threshold, optr, ocode, threads(), ctypes.byref(finite)
        )
    )
    _record_finite(bool(finite.value), base, [other])
    return out


# ----------------------------------------------------------------------------- RAM


def ram_counts(base: torch.Tensor, xs: Sequence[torch.Tensor], epsilon: float) -> tuple[list[int], list[int]]:
    """Per model, #(active and count > 1) and #(active and count == 1) (RAM+'s lambda)."""
    n, op = base.numel(), "ram_counts"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    counts = (ctypes.c_int64 * (2 * len(xs)))()
    _check(_lib().mf_ram_counts(bptr, bcode, ptrs, codes, len(xs), n, epsilon, threads(), counts))
    return list(counts[0::2]), list(counts[1::2])


def ram_apply(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    epsilon: float,
    lambdas: Sequence[float] | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """RAM's elementwise pass (RAM+ with per-model `lambdas`) into a new tensor; inside
    `finite_inputs()`, the inputs are proven finite when every delta was."""
    out = _empty(base, out_dtype)
    lam = None if lambdas is None else _doubles(lambdas)
    _record_finite(_fused_apply("mf_ram_apply", base, xs, out, (epsilon, lam)), base, xs)
    return out
