"""The C library of the CPU kernels, `libmergefast_cpu` next to mergefast/kernels/ (sources
in `csrc/`, its C ABI in `csrc/mergefast.h`): its path, its ABI version and the ctypes
signatures of its entry points. Imports no torch: the torch-free CPU engine (host/) calls the
library through this module, and kernels/cpu.py binds it to torch tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

ABI_VERSION = 15  # MF_ABI_VERSION of csrc/mergefast.h
LIBRARY = Path(__file__).parent / "kernels" / ("libmergefast_cpu" + (".dll" if sys.platform == "win32" else ".so"))
FIX = (
    "install a C++17 compiler with OpenMP, e.g. `apt install g++`, then reinstall mergefast: "
    "`pip install -e .` in a checkout, else `pip install --force-reinstall --no-deps mergefast`"
)

# status codes and constants of csrc/mergefast.h
_OK, _ERR_MEMORY = 0, 2
SPARSIFY_NONE = 0
SPARSIFY_MAGNITUDE = 1
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3}  # by mergefast/dtypes.py name
# The most models each kind of pass takes (the C library's checks; the Triton kernels share
# them): past them the kernel API runs the torch references, and the torch-free engine leaves
# the merge to the torch engine.
MASK_WORD_MODELS = 16  # keep bits, one per model, in a 16-bit word per element (DARE, DELLA)
GRAM_MAX_INPUTS = 64  # the Gram pass's vectors (csrc/cpu/kernels.h kGramMaxInputs)
RAM_MAX_MODELS = 255  # RAM's counting pass keeps each element's count in a byte

_p, _i32, _i64, _f64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "mf_abi_version": (_i32, []),
    "mf_simd_level": (_i32, []),
    "mf_block": (_i64, []),
    "mf_last_error": (ctypes.c_char_p, []),
    "mf_output_check": (_i32, []),
    "mf_all_finite": (_i32, [_p, _i32, _i64, _i32, _p]),
    "mf_linear": (_i32, [_p, _p, _i32, _i64, _p, _i32, _f64, _p, _i32, _i32]),
    "mf_task_arithmetic": (
        _i32,
        [_p, _i32, _p, _p, _i32, _i64, _p, _p, _i32, _i32, _i32, _f64, _f64, _p, _i32, _i64, _i32, _p],
    ),
    "mf_dare_norms": (_i32, [_p, _i32, _p, _p, _i32, _i64, _p, _p, _p, _i32, _i32, _p]),
    "mf_dare": (_i32, [_p, _i32, _p, _p, _i32, _i64, _p, _p, _p, _p, _i32, _i32, _f64, _f64, _p, _i32, _i32, _p]),
    "mf_magnitude_keep": (_i32, [_p, _i32, _p, _i32, _i64, _i64, _p, _i32]),
    "mf_slerp_dots": (_i32, [_p, _i32, _p, _i32, _i64, _i32, _p]),
    "mf_slerp_apply": (_i32, [_p, _i32, _p, _i32, _i64, _f64, _f64, _p, _i32, _i32]),
    "mf_one_read_counts": (None, [_p, _p]),
    "mf_sce_window_counts": (None, [_p, _p]),
    "mf_della_masks": (_i32, [_p, _i32, _p, _p, _i32, _i64, _i64, _p, _p, _p, _p, _i32, _i32, _p]),
    "mf_della_apply": (_i32, [_p, _i32, _p, _p, _i32, _i64, _p, _p, _i32, _i32, _f64, _f64, _p, _i32, _i32, _p]),
    "mf_breadcrumbs": (
        _i32,
        [_p, _i32, _p, _p, _i32, _i64, _p, _p, _p, _i32, _i32, _f64, _f64, _p, _i32, _i64, _i32, _p],
    ),
    "mf_slerpfam_gram": (_i32, [_p, _i32, _p, _p, _i32, _i64, _i64, _i32, _p]),
    "mf_slerpfam_gram_columns": (_i32, [_p, _i32, _p, _p, _i32, _i64, _i64, _i32, _p]),
    "mf_nuslerp_apply": (_i32, [_p, _i32, _p, _i32, _p, _i32, _i64, _i64, _p, _p, _i32, _i32]),
    "mf_nuslerp_apply_columns": (_i32, [_p, _i32, _p, _i32, _p, _i32, _i64, _i64, _p, _p, _i32, _i32]),
    "mf_model_stock_apply": (_i32, [_p, _i32, _p, _p, _i32, _i64, _i64, _p, _p, _i32, _i32]),
    "mf_nearswap": (_i32, [_p, _i32, _p, _i32, _i64, _f64, _p, _i32, _i32]),
    "mf_sce_select": (_i32, [_p, _i32, _p, _p, _i32, _i64, _f64, _i32, _p, _p, _p, _p, _p, _p, _i32]),
    "mf_sce_apply": (_i32, [_p, _i32, _p, _p, _i32, _i64, ctypes.c_uint32, _i64, _i32, _p, _p, _p, _i32, _i32]),
    "mf_arcee_select": (_i32, [_p, _i32, _p, _i32, _i64, _i64, _p, _i32, _p, _p, _p, _i32]),
    "mf_arcee_apply": (_i32, [_p, _i32, _p, _i32, _i64, _i64, _p, _f64, _p, _i32, _i32, _p]),
    "mf_ram_counts": (_i32, [_p, _i32, _p, _p, _i32, _i64, _f64, _i32, _p]),
    "mf_ram_apply": (_i32, [_p, _i32, _p, _p, _i32, _i64, _f64, _p, _p, _i32, _i32, _p]),
}


def load(path: Path = LIBRARY) -> tuple[ctypes.CDLL | None, str | None]:
    """The library at `path` with its signatures declared, or None and why it is unusable."""
    if not path.exists():
        return None, (
            f"{path.name} was not built when mergefast was installed (no C++ "
            "compiler with OpenMP was found, or MERGEFAST_BUILD_EXT=0)"
        )
    try:
        lib = ctypes.CDLL(str(path))  # with torch loaded first, its OpenMP runtime is shared
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        return None, f"{path} does not load ({exc})"
    if lib.mf_abi_version() != ABI_VERSION:
        return None, (
            f"{path} is from another mergefast version (C ABI {lib.mf_abi_version()}, this one needs {ABI_VERSION})"
        )
    return lib, None


_LOADED: tuple[ctypes.CDLL | None, str | None] | None = None


def library() -> tuple[ctypes.CDLL | None, str | None]:
    """The library at LIBRARY, loaded once per process (`load`): (library, None) or (None, why)."""
    global _LOADED
    if _LOADED is None:
        _LOADED = load()
    return _LOADED


def unavailable(error: str | None) -> RuntimeError:
    """The error of a kernel call without the library: why it is missing, and FIX."""
    return RuntimeError(f"the mergefast CPU kernels are unavailable: {error}; {FIX}")


def require() -> ctypes.CDLL:
    """The loaded library (`library`), or `unavailable`'s RuntimeError."""
    lib, error = library()
    if lib is None:
        raise unavailable(error)
    return lib


SIMD_LEVELS = ("portable loops", "AVX2 clones", "AVX-512 clones")  # by mf_simd_level()


def simd_paths(lib: ctypes.CDLL) -> str:
    """Which clones of the hot loops the library runs in this process (csrc/README.md)."""
    return SIMD_LEVELS[lib.mf_simd_level()]


def check(lib: ctypes.CDLL, status: int) -> None:
    """Raise for a failed call: MemoryError when an allocation failed, else RuntimeError."""
    if status != _OK:
        message = lib.mf_last_error().decode(errors="replace")
        raise (MemoryError if status == _ERR_MEMORY else RuntimeError)(message)


def doubles(values) -> ctypes.Array:
    """A C array of doubles."""
    return (ctypes.c_double * len(values))(*values)


def fused_call(lib: ctypes.CDLL, entry: str, head: tuple, params: tuple, out: tuple, tail: tuple, threads: int) -> bool:
    """Call the C `entry`(*head, *params, *out, *tail, threads, &finite), the layout every fused
    merge entry point shares: head = (base pointer, its dtype code, input pointers, their
    dtype codes, k, n), out = (output pointer, its dtype code). Whether every delta was finite."""
    finite = ctypes.c_int32()
    check(lib, getattr(lib, entry)(*head, *params, *out, *tail, threads, ctypes.byref(finite)))
    return bool(finite.value)


def default_threads() -> int:
    """The OpenMP team size without torch: OMP_NUM_THREADS when set, else the CPUs this process
    may run on (torch's own default counts the same CPUs on a machine without SMT)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def thread_count(count: int | None):
    """Within the block, merges use `count` CPU threads (`-j/--num-threads`, as mergekit's
    torch.set_num_threads): the kernels' OpenMP teams (default_threads, or torch's count in a
    process that has torch) and torch's own ops, set now when torch is loaded, else through
    OMP_NUM_THREADS, which torch reads when the merge imports it. None changes nothing.
    Afterwards the environment is restored, and torch's count too (a torch first imported in
    the block gets default_threads())."""
    if count is None:
        yield
        return
    saved_env = os.environ.get("OMP_NUM_THREADS")
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    os.environ["OMP_NUM_THREADS"] = str(count)
    if torch is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(saved_torch or default_threads())


def all_finite(address: int, dtype: str, count: int, threads: int | None = None) -> bool:
    """Whether none of the `count` contiguous elements at `address` is NaN or +-inf.

    `dtype` is a name of DTYPE_CODES ("float32", "float16", "bfloat16", "float64"); the test is
    exact (on the bits) and the answer the same on any thread count (`threads`: the OpenMP team
    size, default_threads() when None). Raises ValueError for another dtype name, and RuntimeError
    when the library is unavailable (with FIX) or the call fails.
    """
    lib = require()
    if dtype not in DTYPE_CODES:
        raise ValueError(f"all_finite: unsupported dtype {dtype!r} (expected one of {sorted(DTYPE_CODES)})")
    finite = ctypes.c_int32(0)
    nthreads = default_threads() if threads is None else threads
    check(lib, lib.mf_all_finite(address, DTYPE_CODES[dtype], count, nthreads, ctypes.byref(finite)))
    return finite.value == 1
