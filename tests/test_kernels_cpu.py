"""The C++ CPU kernels (libmergefast_cpu, loaded by mergefast/kernels/cpu.py) against the
references, and the kernel dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from kernel_cases import KernelSuite, assert_della_keeps, generate, make_inputs, sampled_positions

from mergefast import kernels, methods

pytest_generate_tests = generate

# Every install builds the library; only a deliberate MERGEFAST_BUILD_EXT=0 may skip it.
EXT_SKIPPED = os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0"
needs_ext = pytest.mark.skipif(EXT_SKIPPED, reason="MERGEFAST_BUILD_EXT=0: no CPU kernel library")


@needs_ext
def test_cpu_backend_is_the_extension(monkeypatch):
    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    assert kernels.backend("cpu") == "cpu-ext", kernels.describe_backends()


@needs_ext
class TestCpuExt(KernelSuite):
    DEVICE = "cpu"
    BACKEND = "cpu-ext"
    EXACT = True
    SLOW_TESTS = {"test_dare_same_on_any_thread_count"}  # `slow` (tests/conftest.py)


def test_forced_torch_backend(monkeypatch):
    monkeypatch.setenv("MERGEFAST_BACKEND", "torch")
    assert kernels.backend("cpu") == "torch"
    x = [torch.randn(10), torch.randn(10)]
    assert torch.equal(kernels.linear(x, [0.5, 0.5]), methods.linear(x, [0.5, 0.5]))


def test_bad_backend_name(monkeypatch):
    monkeypatch.setenv("MERGEFAST_BACKEND", "gpu")
    with pytest.raises(ValueError, match="MERGEFAST_BACKEND"):
        kernels.backend("cpu")


def test_forced_backend_failure_raises(monkeypatch):
    from mergefast.kernels import cpu

    monkeypatch.setattr(cpu, "ERROR", "ImportError: pretend it was not built")
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    with pytest.raises(RuntimeError, match="pretend"):
        kernels.linear([torch.randn(4)], [1.0])
    monkeypatch.setenv("MERGEFAST_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.linear([torch.randn(4)], [1.0])


def test_missing_extension_falls_back_and_says_why(monkeypatch, caplog):
    """Without the library, CPU merges run on the reference; `mergefast env` and the one
    warning line of every merge say why and how to fix it."""
    from mergefast.kernels import cpu

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    monkeypatch.setattr(cpu, "ERROR", "pretend it was not built")
    assert kernels.backend("cpu") == "torch"
    env = [line for line in kernels.describe_backends() if line.startswith("cpu:")]
    assert len(env) == 1 and "cpu-ext unavailable: pretend it was not built" in env[0]
    assert cpu.FIX in env[0]
    line = kernels.missing_kernels("cpu")
    assert "\n" not in line and "pretend it was not built" in line and cpu.FIX in line
    assert "torch reference path" in line
    with caplog.at_level("WARNING", logger="mergefast"):
        assert kernels.warn_missing_kernels("cpu") == line
    assert [r.getMessage() for r in caplog.records] == [line]
    assert kernels.missing_kernels("cuda") is None  # the CPU library's line only
    monkeypatch.setenv("MERGEFAST_BACKEND", "torch")
    assert kernels.missing_kernels("cpu") is None  # asked for: nothing to warn about
    monkeypatch.delenv("MERGEFAST_BACKEND")
    x = [torch.randn(10), torch.randn(10)]
    assert torch.equal(kernels.linear(x, [0.5, 0.5]), methods.linear(x, [0.5, 0.5]))
    monkeypatch.setattr(cpu, "_LIB", None)
    with pytest.raises(RuntimeError, match="pretend"):  # called anyway: the reason and the fix
        cpu.linear(x, [0.5, 0.5], False, 1.0, torch.float32)


@needs_ext
def test_no_warning_with_the_kernels(monkeypatch, caplog):
    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    with caplog.at_level("WARNING", logger="mergefast"):
        assert kernels.warn_missing_kernels("cpu") is None
    assert not caplog.records


def test_kernels_launch_on_the_inputs_device(monkeypatch):
    """Triton launches on the thread's current CUDA device: the dispatch makes it the inputs'
    (the merge thread would otherwise launch `--device cuda:1` work on cuda:0)."""
    from contextlib import nullcontext

    from mergefast.kernels import dispatch

    guard = dispatch.device_guard(torch.device("cuda", 1))  # built without touching CUDA
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(dispatch.device_guard(torch.device("cpu")), nullcontext)
    seen = []
    monkeypatch.setattr(dispatch, "device_guard", lambda device: seen.append(device) or nullcontext())
    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    kernels.linear([torch.randn(4), torch.randn(4)], [0.5, 0.5])
    assert seen == ([] if kernels.backend("cpu") == "torch" else [torch.device("cpu")])


@needs_ext
@pytest.mark.parametrize(
    "case",
    [
        "finite",
        "nan in base",
        "inf in a model",
        "nan in a density-0 model",
        "nan in the tie block",
        "no sparsification",
    ],
)
def test_task_arithmetic_proves_its_inputs_finite(monkeypatch, case):
    """The C++ apply pass reports whether every delta was finite; only then are base and the
    models recorded as proven finite (execute.merge_job then skips scanning them)."""
    from mergefast.kernels import cpu

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    n = 3 * cpu.BLOCK + 77
    base = torch.zeros(n, dtype=torch.bfloat16)
    signs = torch.randint(0, 2, (3, n), generator=torch.Generator().manual_seed(1)) * 2 - 1
    xs = [(base.float() + 0.5 * s).bfloat16() for s in signs]  # |delta| all equal: ties
    densities = [0.5, 0.5, 0.0 if "density-0" in case else 0.5]
    bad = {
        "nan in base": (base, 5),
        "inf in a model": (xs[1], n - 1),
        "nan in a density-0 model": (xs[2], 7),
        "nan in the tie block": (xs[0], n // 2),
    }
    if case in bad:
        tensor, at = bad[case]
        tensor[at] = float("nan") if "nan" in case else float("inf")
    with cpu.finite_inputs() as proven:
        if case == "no sparsification":
            kernels.task_arithmetic(base, xs, [0.3, 0.3, 0.3])
        else:
            kernels.ties(base, xs, [1.0, 1.0, 1.0], densities)
    finite = case in ("finite", "no sparsification")
    assert proven == ({t.data_ptr() for t in (base, *xs)} if finite else set())


@needs_ext
@pytest.mark.parametrize("method", ["ram", "ramplus_tl", "arcee_fusion"])
@pytest.mark.parametrize("case", ["finite", "nan in base", "inf in a model", "-inf in the last model"])
def test_ram_and_arcee_prove_their_inputs_finite(monkeypatch, method, case):
    """RAM's and arcee_fusion's apply passes report whether every delta was finite, so a
    finite merge's inputs are not scanned again (execute.merge_job); one NaN or inf anywhere,
    though inactive in the merge, leaves them unproven and scanned."""
    from mergefast.kernels import cpu

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    g = torch.Generator().manual_seed(2)
    rows, cols = 3, cpu.BLOCK + 13
    base, *xs = [(torch.randn(rows, cols, generator=g) * 0.05).bfloat16() for _ in range(4)]
    if method == "arcee_fusion":
        xs = xs[:1]
    bad = {"nan in base": (base, float("nan")), "inf in a model": (xs[0], float("inf"))}
    bad["-inf in the last model"] = (xs[-1], float("-inf"))
    if case in bad:
        tensor, value = bad[case]
        tensor.view(-1)[rows * cols - 5] = value
    with cpu.finite_inputs() as proven:
        if method == "arcee_fusion":
            kernels.arcee_fusion(base, xs[0])
        else:
            getattr(kernels, method)(base, xs)
    assert proven == ({t.data_ptr() for t in (base, *xs)} if case == "finite" else set())


@needs_ext
def test_auto_backend_failure_falls_back_once_with_warning(monkeypatch):
    from mergefast.kernels import cpu

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    monkeypatch.setattr(kernels, "_broken", {})
    monkeypatch.setattr(kernels, "_warned", set())

    def boom(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(cpu, "linear", boom)
    x = [torch.randn(10), torch.randn(10)]
    with pytest.warns(RuntimeWarning, match="kernel exploded"):
        out = kernels.linear(x, [0.5, 0.5])
    assert torch.equal(out, methods.linear(x, [0.5, 0.5]))
    assert kernels.backend("cpu") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.linear(x, [0.5, 0.5])  # no second warning


def test_float64_uses_the_reference(monkeypatch):
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    x = [torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)]
    assert torch.equal(kernels.linear(x, [0.2, 0.8]), methods.linear(x, [0.2, 0.8]))
    b = torch.randn(100, dtype=torch.float64)
    assert torch.equal(kernels.ties(b, x, [1, 1], [0.5, 0.5]), methods.ties(b, x, [1, 1], [0.5, 0.5]))


def test_passthrough_is_the_reference():
    x = torch.randn(7, 3).bfloat16()
    assert torch.equal(kernels.passthrough(x, 0.5), methods.passthrough(x, 0.5))
    assert torch.equal(kernels.passthrough(x, out_dtype=torch.float32), x.float())


@pytest.mark.slow  # a subprocess
def test_import_is_lean():
    """Importing mergefast.kernels neither imports triton nor initialises CUDA."""
    code = (
        "import sys, torch, mergefast.kernels as k; k.backend('cpu'); k.describe_backends(); "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert not torch.cuda.is_initialized(), 'cuda initialised'"
    )
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _sampled_positions(n: int) -> torch.Tensor:
    """The elements the two-pass selection samples (csrc/cpu/select/window.cpp): min(2**13,
    n // 16) of them."""
    return sampled_positions(n, min(1 << 13, n // 16))


@needs_ext
@pytest.mark.slow  # 2**20-element tensors and the reference's sorts
@pytest.mark.parametrize(
    "case", ["fp32", "bf16-finetune", "few-magnitudes", "mostly-zero", "misleading-sample", "overflowing-window"]
)
def test_large_selection_paths(monkeypatch, case):
    """Tensors above 2**16 elements take the sampled-window path of the C++ selection (the
    threshold is the window's upper end, its lower end or one of the candidates inside) or,
    when the sample misleads, the full histogram passes (csrc/cpu/select/): the kept set must
    always be the reference's."""
    from mergefast.kernels import cpu
    from mergefast.methods.numerics import keep_count

    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    n = (1 << 20) + 4099
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, generator=g).bfloat16()
    if case == "fp32":  # continuous deltas: every key distinct, the threshold is a candidate
        x = base.float() + 0.01 * torch.randn(n, generator=g)
    elif case == "bf16-finetune":  # like a real fine-tune: a few delta values hold most keys
        base = (0.02 * torch.randn(n, generator=g)).bfloat16()
        x = (base.float() + 0.002 * torch.randn(n, generator=g)).bfloat16()
    elif case == "few-magnitudes":  # 4 magnitudes: the threshold is an end of the window
        x = (base.float() + torch.randint(-3, 4, (n,), generator=g) * 0.25).bfloat16()
    elif case == "mostly-zero":  # 90 % unchanged weights: the window collapses onto 0
        x = base.clone()
        changed = torch.rand(n, generator=g) < 0.1
        x[changed] = (base[changed].float() + 0.5 * torch.randn(int(changed.sum()), generator=g)).bfloat16()
    elif case == "overflowing-window":  # half the deltas are one value the sample never sees
        base = torch.zeros(n)
        x = torch.where(torch.rand(n, generator=g) < 0.5, 0.5, torch.rand(n, generator=g))
        idx = _sampled_positions(n)
        x[idx] = torch.rand(len(idx), generator=g)
    else:  # the sampled positions carry the largest deltas: the window misses
        x = (base.float() + 0.001 * torch.randn(n, generator=g)).bfloat16()
        idx = _sampled_positions(n)
        x[idx] = (base[idx].float() + 100.0).bfloat16()
    delta = x.float() - base.float()
    for density in (0.03, 0.105, 0.3, 0.5, 0.93):  # 0.105, "mostly-zero": the lower end
        want = methods.magnitude_mask(delta, density)
        got = cpu.magnitude_keep(base, x, keep_count(density, n))
        assert torch.equal(got, want), (case, density)
    out = kernels.ties(base, [x, base, x], [0.5, 0.3, 0.2], [0.5, 0.5, 0.1])
    ref = methods.ties(base, [x, base, x], [0.5, 0.3, 0.2], [0.5, 0.5, 0.1])
    assert torch.equal(out, ref)


@needs_ext
@pytest.mark.slow
def test_many_models_select_without_room_in_the_output(monkeypatch):
    """The selection keeps its candidate lists in the output tensor; with 9 bf16 models the
    output is too small for them and the selection allocates its own: same result."""
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    n, g = 200_003, torch.Generator().manual_seed(3)
    base = torch.randn(n, generator=g).bfloat16()
    xs = [(base.float() + 0.05 * torch.randn(n, generator=g)).bfloat16() for _ in range(9)]
    weights, densities = [0.1 * (i + 1) for i in range(9)], [0.2 + 0.07 * i for i in range(9)]
    assert torch.equal(kernels.ties(base, xs, weights, densities), methods.ties(base, xs, weights, densities))


@needs_ext
def test_an_output_overlapping_an_input_is_refused():
    """The C++ selection uses the output as scratch: an output aliasing an input would
    corrupt the merge, so the library refuses it."""
    from mergefast.kernels import cpu

    base, x = torch.randn(100_000), torch.randn(100_000)
    with pytest.raises(RuntimeError, match="overlaps an input"):
        cpu.task_arithmetic_into(base, [x], [1.0], [50_000], True, True, 1.0, 1.0, base)
    with pytest.raises(RuntimeError, match="overlaps an input"):
        cpu.magnitude_keep_into(base, x, 50_000, x.view(torch.bool)[:100_000])
    kl, values, ranks = torch.empty(100), (cpu.ctypes.c_float * 3)(), (cpu.ctypes.c_int64 * 3)(0, 1, 2)
    with pytest.raises(RuntimeError, match="overlaps an input"):  # arcee_fusion keeps its keys in the output
        cpu._check(
            cpu._lib().mf_arcee_select(
                base.data_ptr(), 0, x.data_ptr(), 0, 100, 1000, ranks, 1, kl.data_ptr(), values, x.data_ptr(), 0
            )
        )


@needs_ext
def test_library_errors_become_python_errors():
    """A call the library refuses raises RuntimeError with the library's message; tensors it
    cannot take (not CPU, not contiguous, other sizes) are refused before the call."""
    from mergefast.kernels import cpu

    a, b = torch.randn(100), torch.randn(100)
    with pytest.raises(RuntimeError, match="inputs have different sizes"):
        cpu.slerp_dots(a, torch.randn(99))
    with pytest.raises(RuntimeError, match="contiguous CPU"):
        cpu.slerp_dots(a, torch.randn(200)[::2])
    with pytest.raises(RuntimeError, match="unsupported dtype code 3"):
        cpu.slerp_dots(a.double(), b)
    out = torch.empty(100)
    with pytest.raises(RuntimeError, match="sparsify mode 2 is not implemented"):
        cpu._check(
            cpu._lib().mf_task_arithmetic(
                a.data_ptr(),
                0,
                (cpu.ctypes.c_void_p * 1)(b.data_ptr()),
                (cpu.ctypes.c_int32 * 1)(0),
                1,
                100,
                (cpu.ctypes.c_double * 1)(1.0),
                None,
                2,
                1,
                1,
                1.0,
                1.0,
                out.data_ptr(),
                0,
                -1,
                1,
                cpu.ctypes.byref(cpu.ctypes.c_int32()),
            )
        )


@needs_ext
@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_runs_fused_from_the_method_table(monkeypatch, method):
    """The executor's table sends della / della_linear to the kernel with the YAML's epsilons,
    seed and tensor name (the reference's masks: bit-identical without the rescale); a density
    +- epsilon outside (0, 1) is the reference's ConfigError naming the model."""
    from mergefast.errors import ConfigError
    from mergefast.kernels import fused
    from mergefast.methods.registry import METHODS

    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    calls = []
    real = kernels.task_arithmetic
    monkeypatch.setattr(kernels, "task_arithmetic", lambda *a, **k: calls.append(k) or real(*a, **k))
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(33, 300, generator=g).bfloat16() for _ in range(3)]
    spec = METHODS[method]
    gp = {p.name: p.default for p in spec.global_params} | {"rescale": False}
    mp = [{}, {"weight": 0.6, "density": 0.4, "epsilon": 0.2}, {"weight": 0.5, "density": 0.7, "epsilon": 0.1}]
    args = (spec, tensors, 0, gp, mp, torch.bfloat16)
    out = fused.merge_group(*args, seed=9, tensor_name="model.layers.1.mlp.up_proj.weight")
    ref = spec.merge(
        tensors, 0, gp, mp, torch.bfloat16, methods.registry.MergeContext(9, "model.layers.1.mlp.up_proj.weight")
    )
    assert torch.equal(out, ref)
    assert calls and calls[0]["epsilons"] == [0.2, 0.1] and calls[0]["seed"] == 9
    mp[2]["epsilon"] = 0.3
    with pytest.raises(ConfigError, match="non-base model 1"):
        fused.merge_group(*args, seed=9, tensor_name="t")


@needs_ext
@pytest.mark.parametrize("k", [1, 3, 16, 17])
def test_dare_rescale_keeps_its_draws_in_the_output(monkeypatch, k):
    """With the L1 rescale, DARE's norms pass leaves the keep bits in the output's slots and
    DELLA's apply reads them (up to 16 models; past that the apply draws again): the same
    masks, the reference's output, the same bits as drawing twice, any output dtype."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(k)
    base = torch.randn(19, 67, generator=g).bfloat16()
    xs = [(base.float() + 0.05 * torch.randn(19, 67, generator=g)).bfloat16() for _ in range(k)]
    xs[0][3, 5] = base[3, 5]  # a zero delta
    weights, dens = [0.2 + 0.05 * i for i in range(k)], [0.3 + 0.6 * i / k for i in range(k)]
    calls = []
    real = cpu.dare_masks
    monkeypatch.setattr(cpu, "dare_masks", lambda *a: calls.append(len(a[1])) or real(*a))

    def run(dtype=None):
        return kernels.task_arithmetic(
            base, xs, weights, densities=dens, sparsify="random", consensus="sum", rescale=True, out_dtype=dtype
        )

    for dtype in (None, torch.float32, torch.float16):
        want = methods.task_arithmetic(
            base, xs, weights, densities=dens, sparsify="random", consensus="sum", rescale=True, out_dtype=dtype
        )
        torch.testing.assert_close(run(dtype), want)  # the L1 scale's last bit: kernels/dare.py
    assert calls == ([k] * 3 if k <= 16 else [])
    kept_words = run()
    monkeypatch.delattr(cpu, "dare_masks")  # the norms pass, then the apply draws again
    assert torch.equal(run(), kept_words)


@needs_ext
@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_fused_entries(method, monkeypatch):
    """The executor's table runs the breadcrumbs kernel with each model's gamma (equal to the
    method's reference), and declines `rescale`: the reference runs then."""
    from mergefast.kernels import cpu
    from mergefast.kernels.fused import FUSED, merge_group
    from mergefast.methods.registry import METHODS, MergeContext

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    calls = []
    kernel = cpu.breadcrumbs
    monkeypatch.setattr(cpu, "breadcrumbs", lambda *a: calls.append(a[3:5]) or kernel(*a))
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(40, 50, generator=g).bfloat16() for _ in range(3)]
    models = [{}, {"weight": 0.6, "density": 0.5, "gamma": 0.1}, {"weight": 0.4, "density": 0.3, "gamma": 0.2}]
    spec = METHODS[method]
    for rescale in (False, True):
        params = {"normalize": True, "lambda": 0.9, "int8_mask": False, "rescale": rescale}
        args = (tensors, 0, params, models, torch.bfloat16)
        out = merge_group(spec, *args, tensor_name="t")
        ref = spec.merge(*args, MergeContext(seed=0, tensor_name="t"))
        assert torch.equal(out, ref), rescale
    assert method in FUSED
    assert calls == [([2000 - 1000 - 200, 2000 - 600 - 400], [2000 - 200, 2000 - 400])]


@needs_ext
def test_gram_same_on_any_thread_count():
    """The SLERP family's reductions sum in a fixed order: the same on 1, 2 and 3 threads."""
    from mergefast.kernels import cpu

    base, xs = make_inputs((45_000,), torch.bfloat16)
    before = torch.get_num_threads()
    try:
        sums = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            sums.append(cpu.gram(base, xs, 1, base.numel()))
            sums.append(cpu.gram(base, xs, 9, base.numel() // 9))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(sums[i], sums[i + 2]) for i in range(4))


@needs_ext
def test_slerp_dots_same_on_any_thread_count():
    """SLERP's three dots add their blocks in order: the same float64 sums on 1, 2, 3 and 5
    threads, also where blocks' magnitudes lie 2^60 apart (the float64 additions round)."""
    from mergefast.kernels import cpu

    gen = torch.Generator().manual_seed(3)
    scales = torch.exp2(torch.randint(-30, 30, (200, 1), generator=gen).float())
    a = (torch.randn(200, cpu.BLOCK, generator=gen) * scales).reshape(-1)
    b = (torch.randn(200, cpu.BLOCK, generator=gen) * scales).reshape(-1)
    before = torch.get_num_threads()
    try:
        dots = []
        for t in (1, 2, 3, 5):
            torch.set_num_threads(t)
            dots.append(cpu.slerp_dots(a, b))
    finally:
        torch.set_num_threads(before)
    assert dots[1:] == dots[:1] * 3


@needs_ext
@pytest.mark.parametrize("method", ["ram", "ramplus_tl", "multislerp", "karcher"])
def test_spherical_and_ram_fused_entries(method, monkeypatch):
    """The executor's table runs these methods on their kernels (ram, ramplus_tl: equal to the
    reference; multislerp, karcher: within a few float32 units of it), and multislerp's
    antipodal inputs raise the reference's MergeError naming the tensor."""
    from mergefast.errors import MergeError
    from mergefast.kernels import cpu
    from mergefast.kernels.fused import FUSED, merge_group
    from mergefast.methods.registry import METHODS, MergeContext

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    calls = []
    for name in ("gram", "ram_apply"):
        kernel = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 50, generator=g)
    tensors = [base.bfloat16()] + [(base + 0.1 * torch.randn(40, 50, generator=g)).bfloat16() for _ in range(2)]
    spec = METHODS[method]
    params = {p.name: p.default for p in spec.global_params}
    models = [{"weight": 0.3}, {"weight": 0.6}, {"weight": 0.4}]
    args = (tensors, 0, params, models, torch.bfloat16)
    out = merge_group(spec, *args, tensor_name="t")
    ref = spec.merge(*args, MergeContext(seed=0, tensor_name="t"))
    assert method in FUSED and calls == (["ram_apply"] if method.startswith("ram") else ["gram"])
    if method.startswith("ram"):
        assert torch.equal(out, ref)
    else:
        assert (out.float() - ref.float()).abs().max() <= 4 * torch.finfo(torch.bfloat16).eps * ref.abs().max()
    if method == "multislerp":  # base 0 and x, -x, 0: the weighted mean direction is exactly 0
        x, zero = tensors[1].float(), torch.zeros(40, 50)
        weights = [{}, {"weight": 0.5}, {"weight": 0.5}, {"weight": 0.3}]
        with pytest.raises(MergeError, match="tensor t: multislerp: the inputs are antipodal"):
            merge_group(spec, [zero, x, -x, zero], 0, params, weights, torch.float32, tensor_name="t")


def _della_rank_rows(cols: int, g: torch.Generator) -> torch.Tensor:
    """Rows of deltas for every way the CPU kernel decides a keep bit: both row-rank methods
    (csrc/cpu/della_rank.h) and the three of the rank bounds (csrc/cpu/della_keep.h: a scan
    per open element, the bucket members, all ranks). bf16 magnitudes (one bucket per key), a
    fraction of float32 ones on both sides of the 1/8 cut, zeros (in a row of mostly zeros
    too, with keys far below the bucket window), keys far below the bucket window, 40 distinct
    magnitudes (many open elements), an outlier, NaN / inf."""

    def bf16(t):
        return t.bfloat16().float()

    rows = []
    for odd in (0.0, 0.05, 0.12, 0.13, 0.3):
        r = bf16(torch.randn(cols, generator=g) * 2e-3)
        pick = torch.rand(cols, generator=g) < odd
        pick[-3:] = odd > 0  # in the tail past the last multiple of 8
        rows.append(torch.where(pick, torch.randn(cols, generator=g) * 2e-3, r))
    r = bf16(torch.randn(cols, generator=g) * 2e-3)
    rows.append(torch.where(torch.rand(cols, generator=g) < 0.4, 0.0, r))
    rows.append(torch.where(torch.rand(cols, generator=g) < 0.05, bf16(r * 1e-30), r))
    tiny = torch.where(torch.rand(cols, generator=g) < 0.05, bf16(r * 1e-30), r)
    rows.append(torch.where(torch.rand(cols, generator=g) < 0.6, 0.0, tiny))
    rows.append(torch.cat([r[:-1], torch.tensor([1e30])]))
    rows.append(torch.randint(-40, 41, (cols,), generator=g) * 2.0**-10)
    rows.append(
        torch.where(torch.rand(cols, generator=g) < 0.05, float("nan"), torch.where(r > 3e-3, -float("inf"), r))
    )
    return torch.stack(rows)


@needs_ext
@pytest.mark.parametrize("cols", [300, 1003, 4096, 7000])
def test_della_masks_on_every_keep_method(cols):
    """The keep bits are della_mask's on rows of every keep method: rank bounds (float32 rows
    of 256 or more, the 7000-wide rows' models too) and the full ranks (7000-wide rows of bf16
    deltas: tie counting, and its radix sort where a row's base lies binades below its deltas),
    with an epsilon < 0 (p falls with the rank): row lengths not a multiple of 8, odd keys below
    and above the 1/8 cut, keys below the window, zeros, many ties, NaN and inf."""
    from mergefast.kernels import cpu
    from mergefast.kernels.della import keep_rule, stream_keys
    from mergefast.methods.task_arithmetic import della_mask

    g = torch.Generator().manual_seed(3)
    xs = [_della_rank_rows(cols, g) for _ in range(3)]
    base = torch.zeros_like(xs[0])
    if cols > 6144:  # della_keep.h's kBoundMaxCols: past it bf16 deltas take the full ranks
        scale = 2.0 ** -(2.0 * torch.arange(base.shape[0]))[:, None]  # base 0 to 20 binades below 1
        base = (torch.randn(base.shape, generator=g) * scale).bfloat16()
        xs = [(base.float() + x).bfloat16() for x in xs[:2]] + [xs[2]]
    for density, epsilon in ((0.5, 0.45), (0.2, 0.1), (0.5, -0.3)):
        rules = [keep_rule(density, epsilon, cols)] * 3
        keys = stream_keys(4, "t", 3)
        out, _ = cpu.della_masks(base, xs, keys, [r[0] for r in rules], [r[1] for r in rules], cols, torch.float32)
        for i, x in enumerate(xs):
            delta = x.float() - base.float()  # as the kernel and the method take it
            want = della_mask(delta, density, epsilon, seed=4, tensor_name="t", model_index=i)
            assert_della_keeps(out, i, delta, want, density, epsilon, i)


@needs_ext
@pytest.mark.parametrize("ties", ["few", "past-the-cap"])
def test_sce_tie_counts_from_recorded_keys_or_a_rescan(monkeypatch, ties):
    """The tie counts per block of SCE's selection come from the exact keys the low histogram
    recorded (csrc/cpu/sce.cpp, BucketKeys), or from a rescan when more than ~n / 32 of the keys
    fall in the threshold's bucket: 500 elements tied at the cut, and a quarter of them."""
    import kernel_cases

    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    n, g = 70_000, torch.Generator().manual_seed(5)
    a = torch.rand(n, generator=g)
    if ties == "few":
        at_cut = a.sort(descending=True).values[6_800]
        a[torch.randperm(n, generator=g)[:500]] = at_cut
    else:
        a = torch.randint(1, 5, (n,), generator=g) * 0.25
    base = torch.zeros(n)
    xs = [a, -a, torch.zeros(n)]  # variance 2 a^2 / 3: the ties of a are ties of the keys
    out = kernels.sce(base, xs, select_topk=0.1)
    monkeypatch.setattr(kernel_cases._SCE_MODULE, "energy_weights", kernel_cases._energy_weights_f64)
    assert torch.equal(out, methods.sce(base, xs, select_topk=0.1))


def _sce_window_inputs(K, dtype, seed=7):
    """base + K fine-tunes of 1030 x 1024 (past the 2^20 elements from which SCE's keys pass
    gathers the energies, csrc/cpu/sce_window.h): rows of different scales, 2% zero deltas."""
    g = torch.Generator().manual_seed(seed)
    shape = (1030, 1024)
    base = 0.02 * torch.randn(shape, generator=g)
    xs = []
    for _ in range(K):
        noise = 0.002 * torch.randn(shape, generator=g) * (1 + torch.rand(shape[0], 1, generator=g))
        noise[torch.rand(shape, generator=g) < 0.02] = 0
        xs.append((base + noise).to(dtype))
    return base.to(dtype), xs


def _sce_against_reference(monkeypatch, base, xs, topk):
    """kernels.sce bit for bit against the reference with float64 energies; returns the
    selection's window counts (taken, fell back) of the call."""
    import kernel_cases

    from mergefast.kernels import cpu

    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    before = cpu.sce_window_counts()
    out = kernels.sce(base, xs, select_topk=topk)
    after = cpu.sce_window_counts()
    with monkeypatch.context() as m:
        m.setattr(kernel_cases._SCE_MODULE, "energy_weights", kernel_cases._energy_weights_f64)
        want = methods.sce(base, xs, select_topk=topk)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    assert torch.equal(out[~torch.isnan(out)], want[~torch.isnan(want)])
    return after[0] - before[0], after[1] - before[1]


@needs_ext
@pytest.mark.parametrize(
    ("K", "topk", "dtype"),
    [(2, 0.1, torch.bfloat16), (3, 0.1, torch.bfloat16), (3, 0.5, torch.float32), (4, 0.02, torch.float16)],
)
def test_sce_energies_from_the_window(monkeypatch, K, topk, dtype):
    """Past 2^20 elements SCE's energies come from its keys pass (csrc/cpu/sce_window.h): the
    output is the reference's bit for bit, the sums the same on one thread and on two, and equal
    to the energies' own pass (MERGEFAST_SCE_NO_WINDOW=1) to float64 rounding."""
    from mergefast.kernels import cpu

    base, xs = _sce_window_inputs(K, dtype)
    assert _sce_against_reference(monkeypatch, base, xs, topk) == (1, 0)
    before = torch.get_num_threads()
    sums = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            sums[t] = cpu.sce_select(base, xs, topk, dtype)[1]
    finally:
        torch.set_num_threads(before)
    assert sums[1] == sums[2]
    monkeypatch.setenv("MERGEFAST_SCE_NO_WINDOW", "1")
    assert _sce_against_reference(monkeypatch, base, xs, topk) == (0, 0)
    assert cpu.sce_select(base, xs, topk, dtype)[1] == pytest.approx(sums[2], rel=1e-12)


def _sce_sampled_starts(n):
    """The first elements of the groups of 8 that csrc/cpu/sce_window.cpp samples (its
    group_starts in Python; random.h's mix64 is methods.random's mix64_int)."""
    from mergefast.methods.random import mix64_int

    nb = -(-n // 2048)
    per_block = max(1, -(-2048 // nb))
    starts = []
    for blk in range(nb):
        off, size = blk * 2048, min(2048, n - blk * 2048)
        if size >= 8:
            starts += [off + mix64_int(blk * per_block + g) % (size - 7) for g in range(per_block)]
    return starts


@needs_ext
def test_sce_window_falls_back_where_the_sample_misleads(monkeypatch):
    """Where the sampled elements are unlike the rest (their deltas 1000x smaller), the window
    misses the threshold's bucket: the selection and energies take their own passes, and the
    output is the reference's bit for bit."""
    n = 1 << 20
    g = torch.Generator().manual_seed(11)
    a = 1 + torch.rand(n, generator=g)
    for s in _sce_sampled_starts(n):
        a[s : s + 8] *= 1e-3
    xs = [a, -a, torch.zeros(n)]
    assert _sce_against_reference(monkeypatch, torch.zeros(n), xs, 0.1) == (0, 1)


@needs_ext
@pytest.mark.parametrize("case", ["four-values", "nan-and-inf"])
def test_sce_window_ties_and_nonfinite(monkeypatch, case):
    """Variances of four values only (the sample finds too many keys inside any window: no
    window), and NaN and inf deltas past 2^20 elements (their variance is NaN, the top key:
    kept, and their energies NaN / inf as the reference's): the reference's output."""
    n, g = (1 << 20) + 77, torch.Generator().manual_seed(13)
    if case == "four-values":
        a = torch.randint(1, 5, (n,), generator=g) * 0.25
        assert _sce_against_reference(monkeypatch, torch.zeros(n), [a, -a, torch.zeros(n)], 0.1) == (0, 0)
        return
    base, xs = _sce_window_inputs(3, torch.float32, seed=13)
    xs[1].view(-1)[[5, 70_000, 900_000]] = float("nan")
    xs[2].view(-1)[[6, 500_000]] = float("inf")
    assert _sce_against_reference(monkeypatch, base, xs, 0.1) == (1, 0)


@needs_ext
def test_sce_window_records_a_short_last_block(monkeypatch):
    """The window's records reach the last elements of a tensor whose last block is not a
    multiple of 8 long (the AVX2 scan's tail): kept elements just above the threshold, inside
    the window, whose energies only the records add; and ties at the threshold split by the
    tie quota elsewhere, as in the reference."""
    n, g = (1 << 20) + 77, torch.Generator().manual_seed(17)
    a = 1 + torch.rand(n, generator=g)
    at_cut = a.sort(descending=True).values[int(n * 0.1)]
    a[torch.randperm(n - 8, generator=g)[:40]] = at_cut
    a[-7:] = at_cut * (1 + 2.0**-12 * torch.arange(1, 8))
    xs = [a, -a, torch.zeros(n)]
    assert _sce_against_reference(monkeypatch, torch.zeros(n), xs, 0.1) == (1, 0)
