"""The C++ CPU kernels (mergefast._C) against the references, and the kernel dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from kernel_cases import KernelSuite, generate
from mergefast import kernels, methods

pytest_generate_tests = generate

# CI installs with the extension built; only a deliberate MERGEFAST_BUILD_EXT=0 may skip it.
EXT_SKIPPED = os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0"
needs_ext = pytest.mark.skipif(EXT_SKIPPED, reason="MERGEFAST_BUILD_EXT=0: no mergefast._C")


@needs_ext
def test_cpu_backend_is_the_extension(monkeypatch):
    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    assert kernels.backend("cpu") == "cpu-ext", kernels.describe_backends()


@needs_ext
class TestCpuExt(KernelSuite):
    DEVICE = "cpu"
    BACKEND = "cpu-ext"
    EXACT = True


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


def test_missing_extension_falls_back_and_says_why(monkeypatch):
    from mergefast.kernels import cpu

    monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
    monkeypatch.setattr(cpu, "ERROR", "ImportError: pretend it was not built")
    assert kernels.backend("cpu") == "torch"
    assert any("cpu-ext not built: ImportError: pretend" in line
               for line in kernels.describe_backends())
    x = [torch.randn(10), torch.randn(10)]
    assert torch.equal(kernels.linear(x, [0.5, 0.5]), methods.linear(x, [0.5, 0.5]))


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


def test_import_is_lean():
    """Importing mergefast.kernels neither imports triton nor initialises CUDA."""
    code = ("import sys, torch, mergefast.kernels as k; k.backend('cpu'); k.describe_backends(); "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert not torch.cuda.is_initialized(), 'cuda initialised'")
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@needs_ext
@pytest.mark.parametrize("case", ["fp32", "bf16-finetune", "few-magnitudes", "misleading-sample"])
def test_large_selection_paths(monkeypatch, case):
    """Tensors above 2**20 elements take the sampled candidate-bucket path of the C++
    selection (or fall back to the full passes when the bucket overflows or the sample
    misleads): the kept set must still be the reference's."""
    from mergefast.kernels import cpu
    from mergefast.methods.numerics import keep_count

    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")
    n = (1 << 20) + 4099
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, generator=g).bfloat16()
    if case == "fp32":  # continuous deltas: the predicted bucket holds few candidates
        x = base.float() + 0.01 * torch.randn(n, generator=g)
    elif case == "bf16-finetune":  # like a real fine-tune: ~2 % of the deltas in one bucket
        base = (0.02 * torch.randn(n, generator=g)).bfloat16()
        x = (base.float() + 0.002 * torch.randn(n, generator=g)).bfloat16()
    elif case == "few-magnitudes":
        x = (base.float() + torch.randint(-3, 4, (n,), generator=g) * 0.25).bfloat16()
    else:  # the sampled positions (multiples of n // 65536) carry the largest deltas
        x = (base.float() + 0.001 * torch.randn(n, generator=g)).bfloat16()
        idx = torch.arange(0, n, n // 65536)
        x[idx] = (base[idx].float() + 100.0).bfloat16()
    delta = x.float() - base.float()
    for density in (0.3, 0.5, 0.93):
        want = methods.magnitude_mask(delta, density)
        got = cpu.magnitude_keep(base, x, keep_count(density, n))
        assert torch.equal(got, want), (case, density)
    out = kernels.ties(base, [x, base, x], [0.5, 0.3, 0.2], [0.5, 0.5, 0.1])
    ref = methods.ties(base, [x, base, x], [0.5, 0.3, 0.2], [0.5, 0.5, 0.1])
    assert torch.equal(out, ref)
