"""The output check of the C calls (mf_output_check, csrc/cpu/common.h OutputWatch): the
entry points whose every output element goes through store() report whether what they wrote
is finite, so the torch-free engine (host/merge.py `_output_finite`) skips its pass over the
output; every other call leaves the answer to that pass (-1)."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from mergefast import native

pytestmark = pytest.mark.skipif(
    os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0", reason="MERGEFAST_BUILD_EXT=0: no CPU kernel library"
)

CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ROWS, COLS = 3, 2048 * 5 + 7  # several C blocks and a tail; rows of their own for the per-row calls
N = ROWS * COLS


def _lib():
    lib, error = native.library()
    assert lib is not None, error
    return lib


def _ptrs(xs):
    return (ctypes.c_void_p * len(xs))(*(x.data_ptr() for x in xs)), (ctypes.c_int32 * len(xs))(
        *(CODES[x.dtype] for x in xs)
    )


def _linear(xs, out, threads):
    ptrs, codes = _ptrs(xs)
    w = native.doubles([1.0] * len(xs))
    return _lib().mf_linear(ptrs, codes, len(xs), N, w, 0, 1.0, out.data_ptr(), CODES[out.dtype], threads)


def _task_arithmetic(xs, out, threads, sparsify=native.SPARSIFY_NONE):
    base, models = xs[0], xs[1:]
    ptrs, codes = _ptrs(models)
    keep = (ctypes.c_int64 * len(models))(*([N // 2] * len(models)))
    finite = ctypes.c_int32(0)
    head = (base.data_ptr(), CODES[base.dtype], ptrs, codes, len(models), N, native.doubles([1.0] * len(models)))
    tail = (out.data_ptr(), CODES[out.dtype], -1, threads, ctypes.byref(finite))
    return _lib().mf_task_arithmetic(*head, keep, sparsify, 0, 0, 1.0, 1.0, *tail)


def _ties(xs, out, threads):
    return _task_arithmetic(xs, out, threads, native.SPARSIFY_MAGNITUDE)


def _ram(xs, out, threads):
    base, models = xs[0], xs[1:]
    ptrs, codes = _ptrs(models)
    finite = ctypes.c_int32(0)
    head = (base.data_ptr(), CODES[base.dtype], ptrs, codes, len(models), N, 1e-5, None)
    return _lib().mf_ram_apply(*head, out.data_ptr(), CODES[out.dtype], threads, ctypes.byref(finite))


def _two(xs):
    return [v for x in xs[:2] for v in (x.data_ptr(), CODES[x.dtype])]


def _nearswap(xs, out, threads):
    return _lib().mf_nearswap(*_two(xs), N, 0.5, out.data_ptr(), CODES[out.dtype], threads)


def _slerp_apply(xs, out, threads):
    return _lib().mf_slerp_apply(*_two(xs), N, 0.75, 0.5, out.data_ptr(), CODES[out.dtype], threads)


def _nuslerp(columns):
    def call(xs, out, threads):
        factors = torch.tensor([0.75, 0.5, 1.0] * (COLS if columns else ROWS), dtype=torch.float32)
        entry = _lib().mf_nuslerp_apply_columns if columns else _lib().mf_nuslerp_apply
        head = (*_two(xs), xs[2].data_ptr(), CODES[xs[2].dtype], ROWS, COLS, factors.data_ptr())  # base, x0, x1
        return entry(*head, out.data_ptr(), CODES[out.dtype], threads)

    return call


def _model_stock(xs, out, threads):
    base, models = xs[0], xs[1:]
    ptrs, codes = _ptrs(models)
    t = torch.full((ROWS,), 0.6, dtype=torch.float32)
    head = (base.data_ptr(), CODES[base.dtype], ptrs, codes, len(models), ROWS, COLS, t.data_ptr())
    return _lib().mf_model_stock_apply(*head, out.data_ptr(), CODES[out.dtype], threads)


WATCHED = {
    "linear": _linear,
    "task_arithmetic": _task_arithmetic,
    "ram_apply": _ram,
    "nearswap": _nearswap,
    "slerp_apply": _slerp_apply,
    "nuslerp_apply": _nuslerp(False),
    "nuslerp_apply_columns": _nuslerp(True),
    "model_stock_apply": _model_stock,
}


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, generator=g).mul_(0.02).to(dtype) for _ in range(4)]


def _checked(call, xs, out, threads) -> int:
    lib = _lib()
    lib.mf_output_check()  # a clean state
    native.check(lib, call(xs, out, threads))
    return lib.mf_output_check()


def _scan(out) -> bool:
    return native.all_finite(out.data_ptr(), {0: "float32", 1: "float16", 2: "bfloat16"}[CODES[out.dtype]], N)


@pytest.mark.parametrize("name", WATCHED)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_watched_calls_report_what_they_wrote(name, out_dtype):
    """Finite inputs: 0; a NaN or an inf at the first, a middle or the last element of an
    input, or values whose sum overflows the output dtype: 1, as the scan of the output says."""
    call = WATCHED[name]
    xs = _inputs(torch.bfloat16)
    for threads in (1, 3):
        out = torch.empty(N, dtype=out_dtype)
        assert _checked(call, xs, out, threads) == 0 and _scan(out), (name, threads)
    for position in (0, N // 2 + 1, N - 1):
        for value in (float("nan"), float("inf")):
            bad = [x.clone() for x in xs]
            for x in bad[:2]:  # base and first model: every call reads them
                x[position] = value
            out = torch.empty(N, dtype=out_dtype)
            assert _checked(call, bad, out, 3) == 1 and not _scan(out), (name, position, value)
    if out_dtype == torch.float16:  # finite inputs, an output past float16's largest value
        big = [x.clone() for x in xs]
        for x in big:
            x[7] = 6.0e4 if x is not big[0] else -6.0e4
        out = torch.empty(N, dtype=out_dtype)
        assert _checked(call, big, out, 3) == (0 if _scan(out) else 1), name
        if name == "linear":
            assert not _scan(out)  # 4 x 6e4 rounds to inf in float16


def test_other_calls_leave_the_check_to_a_scan():
    """TIES (its selection's paths do not all go through store()) and a watched call beside
    an unwatched one: -1; a check resets the state (nothing made since: -1)."""
    lib, xs = _lib(), _inputs(torch.bfloat16)
    out = torch.empty(N, dtype=torch.bfloat16)
    assert _checked(_ties, xs, out, 3) == -1
    lib.mf_output_check()
    native.check(lib, _linear(xs, out, 3))
    native.check(lib, _ties(xs, out, 3))
    assert lib.mf_output_check() == -1
    native.check(lib, _linear(xs, out, 3))
    assert lib.mf_output_check() == 0
    assert lib.mf_output_check() == -1
