"""Every Triton kernel compiles for a Hopper GPU (sm_90: H100/H200), here, without a GPU.

The interpreted suite (test_kernels_triton.py) checks the kernels' values, but it runs them as
numpy code, so it cannot see what only the compiler rejects (a type a loop may not carry, an
op with no GPU lowering). Triton's wheel ships ptxas, so the whole pipeline down to a cubin
runs on the CPU: these tests compile each kernel with the constexpr variants the host code
launches, and again with every integer argument at 1 (a launch turns such an argument into a
constant: a one-block tensor).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

PACKAGE = "mergefast.kernels.triton"
# Under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU) every
# `@triton.jit` kernel of this process is interpreted, and a copy imported with the variable
# unset does not compile reliably (Triton's language module is shared with the interpreted
# copies; on an empty Triton cache the histogram pass fails in code generation). So these
# tests run in a child process with TRITON_INTERPRET=0, started by the one test below.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
RUNNER = "test_every_kernel_compiles_in_a_process_without_the_interpreter"


@pytest.fixture(autouse=True)
def _compile_where_not_interpreted(request):
    if INTERPRETED and request.node.name != RUNNER:
        pytest.skip(f"compiled in a child process by {RUNNER}")


def start_compiling() -> subprocess.Popen:
    """The child pytest that compiles every kernel (output to temporary files, not pipes: a
    child that fills a pipe nobody reads yet would stop). tests/conftest.py starts it as soon as
    the suite has collected RUNNER, so that it compiles on the second core while the suite runs
    (84 s on an empty Triton cache on a 2-vCPU AMD EPYC VM; the suite is mostly one thread)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    log = tempfile.TemporaryFile()
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", __file__],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    child.log = log  # what it printed, read when it ends
    return child


@pytest.mark.slow  # a child pytest compiling every kernel: 5 s warm, 25-85 s on an empty Triton cache
def test_every_kernel_compiles_in_a_process_without_the_interpreter(request):
    if not INTERPRETED:
        pytest.skip("this process compiles the kernels itself")
    child = request.config.stash.get(COMPILING, None) or start_compiling()
    child.wait(timeout=900)
    child.log.seek(0)
    assert child.returncode == 0, child.log.read()[-8000:].decode(errors="replace")


COMPILING = pytest.StashKey[subprocess.Popen]()


def compiled(name: str):
    """`mergefast.kernels.triton.<name>`, its kernels compiled (JIT) functions in this process."""
    return importlib.import_module(f"{PACKAGE}.{name}")


BLOCK = 2048


def _compile(kernel, signature: dict, constants: dict, num_warps: int | None = None):
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this triton build ships no ptxas")
    # A launch specialises an integer argument equal to 1 into a constant (a Python int, with
    # no .to()): every kernel also compiles with its integer arguments at 1 (a single block).
    ones = {name: 1 for name, kind in signature.items() if kind in ("i32", "i64")}
    variants = [compile_for_sm90(kernel, signature, consts, num_warps) for consts in (constants, {**constants, **ones})]
    for variant in variants:
        assert variant.asm["cubin"], "no cubin"
    return variants[0]  # as declared


def compile_for_sm90(kernel, signature: dict, constants: dict, num_warps: int | None = None):
    """`kernel` compiled for sm_90 with these argument types and constexprs, no FMA contraction
    (also benchmarks/della_compile_times.py's)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mergefast.kernels.triton.utils import NUM_WARPS

    source = ASTSource(
        fn=kernel, signature={**signature, **{name: "constexpr" for name in constants}}, constexprs=constants
    )
    options = {"num_warps": num_warps or NUM_WARPS, "enable_fp_fusion": False}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


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
    "has_base,per_row,columns,ptr",
    [(True, False, False, "*i16"), (False, True, False, "*fp16"), (True, True, True, "*i16")],
)
def test_slerp_family(has_base, per_row, columns, ptr):
    fam = compiled("slerp_family")

    _compile(
        fam._gram_kernel,
        {"base_ptr": ptr, "xs": _models(3, ptr), "part_ptr": "*fp64", "cols": "i64", "per_row": "i64"},
        {"HAS_BASE": has_base, "BLOCK": BLOCK},
    )
    _compile(
        fam._gram_columns_kernel,
        {"base_ptr": ptr, "a_ptr": ptr, "b_ptr": ptr, "part_ptr": "*fp64", "rows": "i64", "cols": "i64"},
        {"HAS_BASE": has_base, "ROWS": 64, "BLOCK": BLOCK},
    )
    _compile(
        fam._nuslerp_kernel,
        {"base_ptr": ptr, "x0_ptr": ptr, "x1_ptr": ptr, "f_ptr": "*fp32", "out_ptr": ptr, "n": "i64", "cols": "i64"},
        {"HAS_BASE": has_base, "PER_ROW": per_row, "COLUMNS": columns, "BLOCK": BLOCK},
    )
    _compile(
        fam._model_stock_kernel,
        {"base_ptr": ptr, "xs": _models(3, ptr), "t_ptr": "*fp32", "out_ptr": ptr, "n": "i64", "cols": "i64"},
        {"PER_ROW": per_row, "BLOCK": BLOCK},
    )
    _compile(
        fam._nearswap_kernel,
        {"base_ptr": ptr, "x_ptr": ptr, "out_ptr": ptr, "n": "i64", "t": "fp32"},
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize(
    "tie_cut,consensus,normalize,scale,ptr",
    [
        (True, True, False, False, "*i16"),  # breadcrumbs_ties, ties split at a cut, bf16
        (False, False, True, True, "*fp16"),  # breadcrumbs, normalize, lambda, fp16
    ],
)
def test_breadcrumbs_passes(tie_cut, consensus, normalize, scale, ptr):
    ta, breadcrumbs = compiled("task_arithmetic"), compiled("breadcrumbs")

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
            "SPARSIFY": 2,
            "TIE_CUT": tie_cut,
            "CONSENSUS": consensus,
            "NORMALIZE": normalize,
            "SCALE": scale,
            "BLOCK": BLOCK,
        },
    )
    _compile(
        breadcrumbs._skip_kernel,
        {
            "base_ptr": ptr,
            "xs": _models(3, ptr),
            "thr_ptr": "*i64",
            "quota_ptr": "*i64",
            "eqb_ptr": "*i64",
            "skip_ptr": "*i64",
            "n": "i64",
            "nblocks": "i32",
        },
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize("ptr, chunk, stride", [("*i16", 1024, 1), ("*fp16", 16, 1), ("*fp32", 256, 2)])
def test_della_masks_pass(ptr, chunk, stride):
    della = compiled("della")
    _compile(della._della_masks_kernel, della_masks_signature(ptr), della_masks_constants(chunk, stride))


def della_masks_signature(ptr: str) -> dict:
    """The argument types of DELLA's masks pass for base + 3 models of pointer type `ptr`
    (also benchmarks/della_compile_times.py's)."""
    return {
        "base_ptr": ptr,
        "xs": _models(3, ptr),
        "pmins": ("fp32",) * 3,
        "spans": ("fp32",) * 3,
        "key_ptr": "*i64",
        "word_ptr": "*i16",
        "part_ptr": "*fp64",
        "open_ptr": "*i32",
        "flag_ptr": "*i32",
        "rows": "i32",
        "cols": "i32",
        "denom": "fp32",
    }


def della_masks_constants(chunk: int, stride: int = 1) -> dict:
    """The constexprs of DELLA's masks pass for `chunk` columns a step."""
    from mergefast.kernels.triton import della

    return {"STRIDE": stride, "CHUNK": chunk, "OPEN_CAP": della.OPEN_CAP}


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


@pytest.mark.parametrize("ptr,index", [("*i16", "i32"), ("*fp16", "i64")])
def test_arcee_fusion(ptr, index):
    arcee = compiled("arcee_fusion")

    _compile(arcee._kl_kernel, {"base_ptr": ptr, "x_ptr": ptr, "kl_ptr": "*fp32", "cols": index}, {"BLOCK": BLOCK})
    for shift, width in arcee.RADIX_DIGITS:
        _compile(
            arcee._digit_hist_kernel,
            {
                "base_ptr": ptr,
                "x_ptr": "*fp32",
                "kl_ptr": "*fp32",
                "prefix_ptr": "*i64",
                "hist_ptr": "*i32",
                "n": "i64",
                "cols": index,
                "nblocks": "i32",
                "nprog": "i32",
            },
            {"SHIFT": shift, "PREFIX_SHIFT": shift + width, "BLOCK": BLOCK},
        )
    _compile(
        arcee._apply_kernel,
        {
            "base_ptr": ptr,
            "x_ptr": ptr,
            "kl_ptr": "*fp32",
            "thr_ptr": "*fp32",
            "out_ptr": "*i16",
            "n": "i64",
            "cols": index,
        },
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize("plus,ptr,out", [(False, "*i16", "*i16"), (True, "*fp16", "*fp32")])
def test_ram_passes(plus, ptr, out):
    ram = compiled("ram")

    _compile(
        ram._ram_kernel,
        {"base_ptr": ptr, "xs": _models(3, ptr), "lambdas": ("fp32",) * 3, "out_ptr": out, "n": "i64", "eps": "fp32"},
        {"PLUS": plus, "BLOCK": BLOCK},
    )
    _compile(
        ram._count_kernel,
        {"base_ptr": ptr, "xs": _models(3, ptr), "part_ptr": "*i32", "n": "i64", "eps": "fp32"},
        {"BLOCK": BLOCK},
    )


@pytest.mark.parametrize("ptr", ["*i16", "*fp32"])
def test_sce_passes(ptr):
    sce = compiled("sce")

    _compile(
        sce._sce_var_kernel,
        {"base_ptr": ptr, "xs": _models(3, ptr), "var_ptr": "*fp32", "nz_ptr": "*i32", "n": "i64"},
        {"BLOCK": BLOCK},
    )
    rule = {"var_ptr": "*fp32", "thr_ptr": "*i64", "quota_ptr": "*i64", "eqb_ptr": "*i64"}
    for select, tie_cut in ((True, True), (True, False), (False, False)):
        flags = {"SELECT": select, "TIE_CUT": tie_cut, "BLOCK": BLOCK}
        _compile(
            sce._sce_energies_kernel,
            {"base_ptr": ptr, "xs": _models(3, ptr), **rule, "part_ptr": "*fp64", "n": "i64", "nblocks": "i32"},
            flags,
        )
        _compile(
            sce._sce_apply_kernel,
            {
                "base_ptr": ptr,
                "xs": _models(3, ptr),
                "ws": ("fp32",) * 3,
                **rule,
                "out_ptr": ptr,
                "n": "i64",
                "nblocks": "i32",
            },
            flags,
        )


def test_selection_without_a_base():
    """SCE ranks its float32 variances themselves: the selection's passes with base_ptr None."""
    window, histogram = compiled("select.window"), compiled("select.histogram")
    var = ("*fp32",)

    _compile(
        window._sample_keys_kernel,
        {"xs": var, "pos_ptr": "*i64", "keys_ptr": "*i32", "m": "i32"},
        {"base_ptr": None, "BLOCK": window.SAMPLE_BLOCK},
    )
    _compile(
        window._window_scan_kernel,
        {
            "xs": var,
            "lo_ptr": "*i32",
            "hi_ptr": "*i32",
            "count_ptr": "*i32",
            "slot_ptr": "*i32",
            "n": "i64",
            "nblocks": "i32",
        },
        {"base_ptr": None, "ACTIVE": 1, "CAP": 64, "BLOCK": BLOCK},
    )
    _compile(
        histogram._digit_hist_kernel,
        {"xs": var, "prefix_ptr": "*i32", "hist_ptr": "*i32", "n": "i64", "nblocks": "i32", "nprog": "i32"},
        {"base_ptr": None, "SHIFT": 23, "BINS": 256, "PREFIX_SHIFT": 31, "KB": 1, "BLOCK": BLOCK},
    )
    _compile(
        histogram._eq_count_kernel,
        {"xs": var, "thr_ptr": "*i32", "count_ptr": "*i32", "n": "i64", "nblocks": "i32"},
        {"base_ptr": None, "BLOCK": BLOCK},
    )
