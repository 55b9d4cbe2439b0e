"""The output check of the C calls (mf_output_check, csrc/cpu/common.h OutputWatch): every
entry point with an output reports whether the values it wrote are finite, so the torch-free
engine (host/merge.py `_output_finite`) skips its pass over the output where they are."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from mergefast import kernels, native
from mergefast.kernels import SelectionOptions

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


KERNELS = {
    "ties": lambda b, xs, o, sel: kernels.ties(
        b, xs, [1.0] * 3, [0.5] * 3, normalize=False, out_dtype=o, selection=sel
    ),
    "dare_ties": lambda b, xs, o, sel: kernels.task_arithmetic(
        b, xs, [1.0] * 3, densities=[0.5] * 3, sparsify="random", consensus="sum", rescale=True, out_dtype=o
    ),
    "breadcrumbs_ties": lambda b, xs, o, sel: kernels.task_arithmetic(
        b,
        xs,
        [1.0] * 3,
        densities=[0.5] * 3,
        gammas=[0.01] * 3,
        sparsify="magnitude_outliers",
        consensus="sum",
        out_dtype=o,
        selection=sel,
    ),
    "della": lambda b, xs, o, sel: kernels.task_arithmetic(
        b,
        xs,
        [1.0] * 3,
        densities=[0.5] * 3,
        epsilons=[0.15] * 3,
        sparsify="della",
        consensus="sum",
        rescale=True,
        out_dtype=o,
    ),
    "sce": lambda b, xs, o, sel: kernels.sce(b, xs, select_topk=0.5, out_dtype=o),
    "arcee_fusion": lambda b, xs, o, sel: kernels.arcee_fusion(b, xs[0], out_dtype=o),
    "linear": lambda b, xs, o, sel: kernels.linear(xs, [1.0] * 3, normalize=False, out_dtype=o),
    "model_stock": lambda b, xs, o, sel: kernels.model_stock(b, xs, out_dtype=o),
    "ramplus_tl": lambda b, xs, o, sel: kernels.ramplus_tl(b, xs, out_dtype=o),
}
ONE_READ = SelectionOptions(one_read_min=4096)  # the one read and its fix-up at this size


def _family(kind: str):
    """base + 3 bf16 models of ROWS x COLS: small deltas; `nan`: NaN in the base (every
    method's output there); `overflow`: deltas of 3.5e4 at one element, past float16's largest
    value once added (not for arcee_fusion, whose output there is a model's value)."""
    base, *xs = [x.view(ROWS, COLS) for x in _inputs(torch.bfloat16, seed=3)]
    if kind == "nan":
        base[0, 5] = base[2, COLS - 1] = float("nan")
    elif kind == "overflow":
        base[1, 9] = 3.0e4
        for x in xs:
            x[1, 9] = 6.5e4
    return base, xs


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("kind", ["finite", "nan", "overflow"])
def test_every_method_checks_its_output(name, kind, monkeypatch):
    """Through the kernel API on the C library: finite inputs give 0; an output with NaN or
    inf gives 1, never 0 (TIES and breadcrumbs also through the one read and its fix-up)."""
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    lib = _lib()
    base, xs = _family(kind)
    for selection in (None, ONE_READ):
        lib.mf_output_check()  # a clean state
        out = KERNELS[name](base, xs, torch.float16, selection)
        state, finite = lib.mf_output_check(), bool(torch.isfinite(out).all())
        assert state == (0 if finite else 1), (name, kind, state, finite)
        if kind == "finite":
            assert finite, name


def test_a_check_counts_the_calls_since_the_last():
    """Two outputs: 1 when either had a NaN or inf; a check resets the state (no call since:
    -1); the first pass of a two-call method (DELLA's masks) counts for nothing on its own."""
    lib, xs = _lib(), _inputs(torch.bfloat16)
    out, bad = torch.empty(N, dtype=torch.bfloat16), [x.clone() for x in xs]
    bad[0][3] = float("inf")
    lib.mf_output_check()
    native.check(lib, _linear(bad, out, 3))
    native.check(lib, _linear(xs, out, 3))
    assert lib.mf_output_check() == 1
    assert lib.mf_output_check() == -1
    native.check(lib, _linear(xs, out, 3))
    assert lib.mf_output_check() == 0
    base, models = xs[0], xs[1:]
    ptrs, codes = _ptrs(models)
    keys = (ctypes.c_uint64 * 3)(1, 2, 3)
    p = native.doubles([0.35] * 3)
    span = native.doubles([0.3] * 3)
    sums = (ctypes.c_double * 6)()
    head = (base.data_ptr(), CODES[base.dtype], ptrs, codes, 3, N, COLS, keys, p, span)
    native.check(lib, lib.mf_della_masks(*head, out.data_ptr(), CODES[out.dtype], 3, sums))
    assert lib.mf_output_check() == -1
