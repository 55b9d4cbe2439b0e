"""ctypes binding of the CPU kernels: the C library `libmergefast_cpu` next to this file
(sources in `csrc/`, its C ABI in `csrc/mergefast.h`), built by setup.py without torch.

`ERROR` is None when the library loaded, else why it did not; `FIX` then says how to get it.
Nothing here raises at import. The functions take inputs that `mergefast/kernels/__init__.py`
validated, and the scalar constants computed as the references compute them; they check what
the C library cannot see (device, layout, element counts) and pass raw data pointers, dtype
codes, element counts and `torch.get_num_threads()`.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from .selection import DEFAULT, SelectionOptions

ABI_VERSION = 2  # MF_ABI_VERSION of csrc/mergefast.h
LIBRARY = Path(__file__).with_name("libmergefast_cpu" + (".dll" if sys.platform == "win32" else ".so"))
FIX = (
    "install a C++17 compiler with OpenMP, e.g. `apt install g++`, then reinstall mergefast: "
    "`pip install -e .` in a checkout, else `pip install --force-reinstall --no-deps mergefast`"
)

# status codes and constants of csrc/mergefast.h
_OK, _ERR_MEMORY = 0, 2
SPARSIFY_NONE = 0
SPARSIFY_MAGNITUDE = 1
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

_p, _i32, _i64, _f64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "mf_abi_version": (_i32, []),
    "mf_block": (_i64, []),
    "mf_last_error": (ctypes.c_char_p, []),
    "mf_linear": (_i32, [_p, _p, _i32, _i64, _p, _i32, _f64, _p, _i32, _i32]),
    "mf_task_arithmetic": (
        _i32,
        [_p, _i32, _p, _p, _i32, _i64, _p, _p, _i32, _i32, _i32, _f64, _f64, _p, _i32, _i64, _i32, _p],
    ),
    "mf_dare_norms": (_i32, [_p, _i32, _p, _p, _i32, _i64, _p, _p, _i32, _p]),
    "mf_dare": (_i32, [_p, _i32, _p, _p, _i32, _i64, _p, _p, _p, _p, _i32, _i32, _f64, _f64, _p, _i32, _i32, _p]),
    "mf_magnitude_keep": (_i32, [_p, _i32, _p, _i32, _i64, _i64, _p, _i32]),
    "mf_slerp_dots": (_i32, [_p, _i32, _p, _i32, _i64, _i32, _p]),
    "mf_slerp_apply": (_i32, [_p, _i32, _p, _i32, _i64, _f64, _f64, _p, _i32, _i32]),
    "mf_one_read_counts": (None, [_p, _p]),
    "mf_della_masks": (_i32, [_p, _i32, _p, _p, _i32, _i64, _i64, _p, _p, _p, _p, _i32, _i32, _p]),
    "mf_della_apply": (_i32, [_p, _i32, _p, _p, _i32, _i64, _p, _p, _i32, _i32, _f64, _f64, _p, _i32, _i32, _p]),
}


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """The library with its signatures declared, or None and why it is unusable."""
    if not LIBRARY.exists():
        return None, (
            f"{LIBRARY.name} was not built when mergefast was installed (no C++ "
            "compiler with OpenMP was found, or MERGEFAST_BUILD_EXT=0)"
        )
    try:
        lib = ctypes.CDLL(str(LIBRARY))  # torch is imported: its OpenMP runtime is shared
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        return None, f"{LIBRARY} does not load ({exc})"
    if lib.mf_abi_version() != ABI_VERSION:
        return None, (
            f"{LIBRARY} is from another mergefast version (C ABI {lib.mf_abi_version()}, this one needs {ABI_VERSION})"
        )
    return lib, None


_LIB, ERROR = _load()
BLOCK = _LIB.mf_block() if _LIB is not None else 2048


def threads() -> int:
    """OpenMP threads the kernels use (torch's intra-op thread count)."""
    return torch.get_num_threads()


def one_read_counts() -> tuple[int, int]:
    """Calls since the library was loaded that the one-read scheme finished, and that fell
    back to the two passes."""
    finished, fell_back = ctypes.c_int64(), ctypes.c_int64()
    _lib().mf_one_read_counts(ctypes.byref(finished), ctypes.byref(fell_back))
    return finished.value, fell_back.value


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


def _lib() -> ctypes.CDLL:
    if _LIB is None:
        raise RuntimeError(f"the mergefast CPU kernels are unavailable: {ERROR}; {FIX}")
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


def _doubles(values: Sequence[float]):
    return (ctypes.c_double * len(values))(*values)


def linear(
    xs: Sequence[torch.Tensor], weights: Sequence[float], divide: bool, total: float, out_dtype: torch.dtype
) -> torch.Tensor:
    out = _empty(xs[0], out_dtype)
    n = out.numel()
    ptrs, codes = _views(xs, n, "linear")
    optr, ocode = _view(out, n, "linear")
    _check(_lib().mf_linear(ptrs, codes, len(xs), n, _doubles(weights), divide, total, optr, ocode, threads()))
    return out


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
    n, op = out.numel(), "task_arithmetic"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    counts = None if keep is None else (ctypes.c_int64 * len(keep))(*keep)
    one_read_min = 0 if not selection.one_read else -1 if selection.one_read_min is None else selection.one_read_min
    finite = ctypes.c_int32()
    _check(
        _lib().mf_task_arithmetic(
            bptr,
            bcode,
            ptrs,
            codes,
            len(xs),
            n,
            _doubles(weights),
            counts,
            SPARSIFY_NONE if keep is None else SPARSIFY_MAGNITUDE,
            consensus,
            normalize,
            divisor,
            lambda_,
            optr,
            ocode,
            one_read_min,
            threads(),
            ctypes.byref(finite),
        )
    )
    return bool(finite.value)


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
    proven = getattr(_thread, "finite", None)
    if finite and proven is not None:
        proven.update(t.data_ptr() for t in (base, *xs))
    return out


def _keys(keys: Sequence[int]):
    return (ctypes.c_uint64 * len(keys))(*keys)


def dare_norms(
    base: torch.Tensor, xs: Sequence[torch.Tensor], keys: Sequence[int], densities: Sequence[float]
) -> list[float]:
    """DARE's L1 norms: [sum |d_0|, sum |kept d_0|, sum |d_1|, ...] (float64, fixed order)."""
    n, op = base.numel(), "dare_norms"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    sums = (ctypes.c_double * (2 * len(xs)))()
    _check(
        _lib().mf_dare_norms(bptr, bcode, ptrs, codes, len(xs), n, _keys(keys), _doubles(densities), threads(), sums)
    )
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
    n, op = out.numel(), "dare"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    finite = ctypes.c_int32()
    _check(
        _lib().mf_dare(
            bptr,
            bcode,
            ptrs,
            codes,
            len(xs),
            n,
            _doubles(weights),
            _keys(keys),
            _doubles(densities),
            _doubles(scales),
            consensus,
            normalize,
            divisor,
            lambda_,
            optr,
            ocode,
            threads(),
            ctypes.byref(finite),
        )
    )
    proven = getattr(_thread, "finite", None)
    if finite.value and proven is not None:
        proven.update(t.data_ptr() for t in (base, *xs))
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
    n, op = out.numel(), "della_apply"
    bptr, bcode = _view(base, n, op)
    ptrs, codes = _views(xs, n, op)
    optr, ocode = _view(out, n, op)
    finite = ctypes.c_int32()
    _check(
        _lib().mf_della_apply(
            bptr,
            bcode,
            ptrs,
            codes,
            len(xs),
            n,
            _doubles(weights),
            _doubles(scales),
            consensus,
            normalize,
            divisor,
            lambda_,
            optr,
            ocode,
            threads(),
            ctypes.byref(finite),
        )
    )
    proven = getattr(_thread, "finite", None)
    if finite.value and proven is not None:
        proven.update(t.data_ptr() for t in (base, *xs))
    return out
