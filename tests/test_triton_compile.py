"""Every Triton kernel compiles for a Hopper GPU (sm_90: H100/H200), here, without a GPU.

The interpreted suite (test_kernels_triton.py) checks the kernels' values, but it runs them as
numpy code, so it cannot see what only the compiler rejects (a type a loop may not carry, an
op with no GPU lowering). Triton's wheel ships ptxas, so the whole pipeline down to a cubin
runs on the CPU: these tests compile each kernel with the constexpr variants the host code
launches.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

PACKAGE = "mergefast.kernels.triton"


def compiled(name: str):
    """`mergefast.kernels.triton.<name>` with its kernels as compiled (JIT) functions."""
    return _compiled_modules()[f"{PACKAGE}.{name}"]


@functools.cache
def _compiled_modules() -> dict:
    """The modules of mergefast.kernels.triton, their kernels compiled (JIT) functions.

    Triton decides at `@triton.jit` time whether a kernel is compiled or interpreted, and this
    process may run the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU).
    Then the package is imported afresh with the variable unset, for these tests alone, and
    the interpreted modules are put back for every other test."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    ours = lambda key: key == PACKAGE or key.startswith(PACKAGE + ".")  # noqa: E731
    saved = {key: module for key, module in sys.modules.items() if ours(key)}
    parent = importlib.import_module("mergefast.kernels")
    saved_attr = parent.__dict__.get("triton")
    if interpreted:
        for key in saved:
            del sys.modules[key]
        del os.environ["TRITON_INTERPRET"]
    try:
        package = importlib.import_module(PACKAGE)
        for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
            importlib.import_module(info.name)
        return {key: module for key, module in sys.modules.items() if ours(key)}
    finally:
        if interpreted:
            os.environ["TRITON_INTERPRET"] = "1"
            for key in [key for key in sys.modules if ours(key)]:
                del sys.modules[key]
            sys.modules.update(saved)
            if saved_attr is None:
                parent.__dict__.pop("triton", None)
            else:
                parent.triton = saved_attr


BLOCK = 2048


def _compile(kernel, signature: dict, constants: dict, num_warps: int | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mergefast.kernels.triton.utils import NUM_WARPS

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this triton build ships no ptxas")
    signature = {**signature, **{name: "constexpr" for name in constants}}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps or NUM_WARPS, "enable_fp_fusion": False},
    )
    assert compiled.asm["cubin"], "no cubin"
    return compiled


def _models(k: int, ptr: str = "*i16") -> tuple:
    return tuple([ptr] * k)


@pytest.mark.parametrize("models", [1, 3])
@pytest.mark.parametrize("digit", [0, 1, 2, 3])
def test_selection_histogram_pass(models, digit):
    import triton

    histogram = compiled("select.histogram")

    shift, width = histogram.RADIX_DIGITS[digit]
    _compile(
        histogram._digit_hist_kernel,
        {
            "base_ptr": "*i16",
            "xs": _models(models),
            "prefix_ptr": "*i32",
            "hist_ptr": "*i32",
            "n": "i64",
            "nblocks": "i32",
            "nprog": "i32",
        },
        {
            "SHIFT": shift,
            "BINS": 1 << width,
            "PREFIX_SHIFT": shift + width,
            "KB": triton.next_power_of_2(models),
            "BLOCK": BLOCK,
        },
    )


def test_tie_count_pass():
    histogram = compiled("select.histogram")

    _compile(
        histogram._eq_count_kernel,
        {
            "base_ptr": "*fp32",
            "xs": _models(3, "*fp32"),
            "thr_ptr": "*i32",
            "count_ptr": "*i32",
            "n": "i64",
            "nblocks": "i32",
        },
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize("models,active,cap", [(1, 1, 16), (3, 0b101, 128), (9, 0x1FF, 256)])
def test_window_scan_pass(models, active, cap):
    window = compiled("select.window")

    _compile(
        window._window_scan_kernel,
        {
            "base_ptr": "*i16",
            "xs": _models(models),
            "lo_ptr": "*i32",
            "hi_ptr": "*i32",
            "count_ptr": "*i32",
            "slot_ptr": "*i32",
            "n": "i64",
            "nblocks": "i32",
        },
        {"ACTIVE": active, "CAP": cap, "BLOCK": BLOCK},
    )


@pytest.mark.parametrize(
    "sparsify,tie_cut,consensus,normalize,scale,ptr",
    [
        (1, True, True, True, False, "*i16"),  # TIES, ties at the threshold split, bf16
        (1, False, True, False, True, "*fp16"),  # TIES without normalising, lambda, fp16
        (0, False, False, True, True, "*fp32"),  # task arithmetic, fp32
    ],
)
def test_task_arithmetic_apply(sparsify, tie_cut, consensus, normalize, scale, ptr):
    ta = compiled("task_arithmetic")

    _compile(
        ta._task_arithmetic_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(3, ptr),
            "ws": ("fp32",) * 3,
            "thr_ptr": "*i64",
            "quota_ptr": "*i64",
            "eqb_ptr": "*i64",
            "out_ptr": ptr,
            "n": "i64",
            "nblocks": "i32",
            "divisor": "fp32",
            "lam": "fp32",
        },
        {
            "SPARSIFY": sparsify,
            "TIE_CUT": tie_cut,
            "CONSENSUS": consensus,
            "NORMALIZE": normalize,
            "SCALE": scale,
            "BLOCK": BLOCK,
        },
    )


@pytest.mark.parametrize("tie_cut", [False, True])
def test_keep_mask(tie_cut):
    ta = compiled("task_arithmetic")

    _compile(
        ta._keep_mask_kernel,
        {
            "base_ptr": "*i16",
            "x_ptr": "*i16",
            "thr_ptr": "*i64",
            "quota_ptr": "*i64",
            "eqb_ptr": "*i64",
            "mask_ptr": "*i8",
            "n": "i64",
            "nblocks": "i32",
        },
        {"TIE_CUT": tie_cut, "BLOCK": BLOCK},
    )


@pytest.mark.parametrize("divide,ptr,out", [(True, "*i16", "*i16"), (False, "*fp32", "*fp16")])
def test_linear(divide, ptr, out):
    linear = compiled("linear")

    _compile(
        linear._linear_kernel,
        {"xs": _models(3, ptr), "ws": ("fp32",) * 3, "out_ptr": out, "n": "i64", "total": "fp32"},
        {"DIVIDE": divide, "BLOCK": BLOCK},
    )


def test_slerp():
    slerp = compiled("slerp")

    _compile(
        slerp._slerp_dots_kernel,
        {"a_ptr": "*i16", "b_ptr": "*i16", "part_ptr": "*fp32", "n": "i64", "nblocks": "i32"},
        {"BLOCK": BLOCK},
    )
    _compile(
        slerp._slerp_apply_kernel,
        {"a_ptr": "*i16", "b_ptr": "*i16", "out_ptr": "*i16", "n": "i64", "c0": "fp32", "c1": "fp32"},
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize(
    "models,cap,consensus,ptr",
    [
        (3, 64, True, "*i16"),  # TIES, bf16
        (1, 16, False, "*fp32"),  # task arithmetic with magnitude, fp32
        (9, 128, True, "*fp16"),  # many models, fp16
    ],
)
def test_one_read_pass(models, cap, consensus, ptr):
    one_read = compiled("select.one_read")

    _compile(
        one_read._one_read_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(models, ptr),
            "ws": ("fp32",) * models,
            "lo_ptr": "*i32",
            "hi_ptr": "*i32",
            "thr_ptr": "*i64",
            "count_ptr": "*i32",
            "slot_ptr": "*i32",
            "used_ptr": "*i32",
            "first_ptr": "*i32",
            "rcount_ptr": "*i32",
            "roff_ptr": "*i16",
            "rbase_ptr": ptr,
            "rxs": _models(models, ptr),
            "rcap": "i64",
            "out_ptr": ptr,
            "n": "i64",
            "nblocks": "i32",
            "divisor": "fp32",
            "lam": "fp32",
        },
        {"CAP": cap, "CONSENSUS": consensus, "NORMALIZE": True, "SCALE": not consensus, "BLOCK": BLOCK},
    )


@pytest.mark.parametrize("tie_cut,consensus,tile", [(True, True, 256), (False, False, 16), (True, True, 2048)])
def test_one_read_fix_up(tie_cut, consensus, tile):
    fix_up = compiled("select.fix_up")

    _compile(
        fix_up._fix_up_kernel,
        {
            "roff_ptr": "*i16",
            "rbase_ptr": "*i16",
            "rxs": _models(3),
            "first_ptr": "*i32",
            "rcount_ptr": "*i32",
            "ws": ("fp32",) * 3,
            "thr_ptr": "*i64",
            "quota_ptr": "*i64",
            "eqb_ptr": "*i64",
            "out_ptr": "*i16",
            "nblocks": "i32",
            "divisor": "fp32",
            "lam": "fp32",
        },
        {"TIE_CUT": tie_cut, "CONSENSUS": consensus, "NORMALIZE": True, "SCALE": False, "TILE": tile, "BLOCK": BLOCK},
    )


def test_window_and_rules_kernels():
    rules, window = compiled("select.rules"), compiled("select.window")

    _compile(
        window._sample_keys_kernel,
        {"base_ptr": "*i16", "xs": _models(3), "pos_ptr": "*i64", "keys_ptr": "*i32", "m": "i32"},
        {"BLOCK": window.SAMPLE_BLOCK},
    )
    _compile(
        window._ends_kernel,
        {
            "ranked_ptr": "*i32",
            "m": "i32",
            "rows": ("fp32",) * 3,
            "tops_hi": ("fp32",) * 3,
            "tops_lo": ("fp32",) * 3,
            "lo_ptr": "*i32",
            "hi_ptr": "*i32",
            "thr_ptr": "*i64",
        },
        {},
    )
    _compile(
        rules._rules_kernel,
        {
            "cases_ptr": "*i64",
            "lo_ptr": "*i32",
            "hi_ptr": "*i32",
            "tval_ptr": "*i64",
            "count_ptr": "*i32",
            "slot_ptr": "*i32",
            "eqgt_ptr": "*i64",
            "nblocks": "i32",
        },
        {"K": 3, "CAP": 64},
    )
    _compile(
        rules._finalize_kernel,
        {
            "cases_ptr": "*i64",
            "lo_ptr": "*i32",
            "hi_ptr": "*i32",
            "tval_ptr": "*i64",
            "eqgt_ptr": "*i64",
            "cum_ptr": "*i64",
            "thr_ptr": "*i64",
            "quota_ptr": "*i64",
            "eqb_ptr": "*i64",
            "nblocks": "i32",
        },
        {"K": 3, "BLOCKS": rules.FINALIZE_BLOCKS},
    )


@pytest.mark.parametrize("shift", [22, 0])
def test_candidate_select_kernels(shift):
    candidates = compiled("select.candidates")

    bits = candidates.DIGIT_BITS
    _compile(
        candidates._slot_hist_kernel,
        {
            "cases_ptr": "*i64",
            "lo_ptr": "*i32",
            "prefix_ptr": "*i64",
            "count_ptr": "*i32",
            "slot_ptr": "*i32",
            "hist_ptr": "*i32",
            "nblocks": "i32",
            "ntiles": "i32",
            "nprog": "i32",
        },
        {"SHIFT": shift, "PREFIX_SHIFT": shift + bits, "BINS": 1 << bits, "CAP": 64, "TILE": candidates.SLOT_TILE},
    )
    _compile(
        candidates._slot_pick_kernel,
        {
            "cases_ptr": "*i64",
            "lo_ptr": "*i32",
            "prefix_ptr": "*i64",
            "need_ptr": "*i64",
            "hist_ptr": "*i32",
            "tval_ptr": "*i64",
        },
        {"BITS": bits, "LAST": shift == 0},
    )


@pytest.mark.parametrize(
    "consensus,normalize,scale,ptr",
    [
        (True, True, False, "*i16"),  # dare_ties, bf16
        (False, False, True, "*fp16"),  # dare_linear, lambda, fp16
    ],
)
def test_dare_passes(consensus, normalize, scale, ptr):
    dare = compiled("dare")

    _compile(
        dare._dare_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(3, ptr),
            "ws": ("fp32",) * 3,
            "ps": ("fp32",) * 3,
            "ss": ("fp32",) * 3,
            "key_ptr": "*i64",
            "out_ptr": ptr,
            "n": "i64",
            "divisor": "fp32",
            "lam": "fp32",
        },
        {"CONSENSUS": consensus, "NORMALIZE": normalize, "SCALE": scale, "BLOCK": BLOCK},
    )
    _compile(
        dare._dare_norms_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(3, ptr),
            "ps": ("fp32",) * 3,
            "key_ptr": "*i64",
            "part_ptr": "*fp64",
            "n": "i64",
        },
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize(
    "ptr, row_block",
    [
        # bf16; a 7B model's 4096-column rows compile too, in ~2 min on a shared 2-vCPU VM
        ("*i16", 512),
        ("*fp16", 128),
    ],
)
def test_della_masks_pass(ptr, row_block):
    della = compiled("della")

    _compile(
        della._della_masks_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(3, ptr),
            "pmins": ("fp32",) * 3,
            "spans": ("fp32",) * 3,
            "key_ptr": "*i64",
            "word_ptr": "*i16",
            "part_ptr": "*fp64",
            "cols": "i32",
            "denom": "fp32",
        },
        {"STRIDE": 1, "ROW_BLOCK": row_block, "PAIRWISE": False},
        num_warps=della.row_warps(row_block),
    )


@pytest.mark.parametrize(
    "consensus, normalize, scale, ptr, stride",
    [
        (True, True, False, "*i16", 1),  # della, bf16
        (False, False, True, "*fp32", 2),  # della_linear, lambda, fp32
    ],
)
def test_della_apply_pass(consensus, normalize, scale, ptr, stride):
    della = compiled("della")

    _compile(
        della._della_apply_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(3, ptr),
            "ws": ("fp32",) * 3,
            "ss": ("fp32",) * 3,
            "word_ptr": "*i16",
            "out_ptr": ptr,
            "n": "i64",
            "divisor": "fp32",
            "lam": "fp32",
        },
        {"STRIDE": stride, "CONSENSUS": consensus, "NORMALIZE": normalize, "SCALE": scale, "BLOCK": BLOCK},
    )
