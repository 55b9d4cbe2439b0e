"""The Triton kernels against the references.

On a machine with a CUDA GPU and triton, the suite runs for real on the GPU (TestTritonCuda).
Everywhere else it runs under TRITON_INTERPRET=1 on small CPU tensors (TestTritonInterpret):
the variable must be set before triton is imported, so `test_triton_interpreted` re-runs this
module in a subprocess with it set, unless this process already has it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_cases import KernelSuite, generate

pytest_generate_tests = generate

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_CUDA = HAVE_TRITON and not INTERPRET and torch.cuda.is_available()


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
@pytest.mark.skipif(INTERPRET, reason="already interpreted")
def test_triton_interpreted():
    """Runs TestTritonInterpret in a fresh interpreter with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("MERGEFAST_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "-p", "no:randomly", f"{Path(__file__).name}::TestTritonInterpret"],
        cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail, tail


# The suites are defined only where they can run (no screens of skips elsewhere).
class _Interpreted(KernelSuite):
    """Interpreted Triton on CPU tensors: small sizes (the interpreter runs numpy per
    program); the kernels use 256-element blocks there, so these still span several blocks."""

    DEVICE = "cpu"
    BACKEND = "triton"
    EXACT = True
    SHAPES = [(1,), (3,), (0,), (13, 61)]
    TIE_N = 1100
    TIES_CASES = KernelSuite.TIES_CASES[:4]
    TIE_DENSITIES = [0.0, 0.37, 0.9999, 1.0]


class _Cuda(KernelSuite):
    """Real Triton on the GPU, larger sizes."""

    DEVICE = "cuda"
    BACKEND = "triton"
    EXACT = False  # no FMA contraction, but GPU division may differ in the last bit
    SHAPES = [(1,), (2,), (3,), (0,), (4097,), (37, 129), (1000, 1003)]
    TIE_N = 200_000

    def test_backend_is_triton(self, monkeypatch):
        from mergefast import kernels

        monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
        assert kernels.backend("cuda") == "triton"


if INTERPRET:
    TestTritonInterpret = _Interpreted
if HAVE_CUDA:
    TestTritonCuda = _Cuda
