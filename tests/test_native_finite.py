"""`native.all_finite` (the C entry point mf_all_finite, csrc/cpu/finite.cpp) against
torch.isfinite, on every dtype, and torch-free in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mergefast import native

# Every install builds the library; only a deliberate MERGEFAST_BUILD_EXT=0 may skip it.
pytestmark = pytest.mark.skipif(
    os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0", reason="MERGEFAST_BUILD_EXT=0: no CPU kernel library"
)

DTYPES = ["float32", "float16", "bfloat16", "float64"]
# Largest finite values: all exponent bits but one set, so a test of too few bits fails here.
LARGEST = {"float32": 3.4e38, "float16": 65504.0, "bfloat16": 3.0e38, "float64": 1.7e308}
NONFINITE = [float("nan"), float("inf"), float("-inf")]


def _block() -> int:
    lib, error = native.library()
    assert lib is not None, error
    return lib.mf_block()


def _sizes() -> list[int]:
    block = _block()
    # 3 blocks and a tail; then one above the kernels' one-thread limit (2^15), so that
    # threads=3 really splits the blocks
    return [0, 1, 7, 3 * block + 5, 2**15 + 3 * block + 5]


def _tensor(name: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    t = torch.randn(n, generator=g, dtype=torch.float64).to(getattr(torch, name))
    if n:
        t[n // 3] = LARGEST[name]
        t[n // 2] = -LARGEST[name]
    return t


def _answers(t: torch.Tensor, name: str) -> set[bool]:
    return {native.all_finite(t.data_ptr(), name, t.numel(), threads) for threads in (None, 1, 3)}


@pytest.mark.parametrize("name", DTYPES)
def test_finite_tensors(name):
    for n in _sizes():
        t = _tensor(name, n)
        assert bool(torch.isfinite(t).all())
        assert _answers(t, name) == {True}, (name, n)


@pytest.mark.parametrize("name", DTYPES)
def test_one_nonfinite_anywhere(name):
    block = _block()
    for n in _sizes()[1:]:
        base = _tensor(name, n)
        # first, block edges, middle, last (in the tail block)
        positions = sorted({0, min(block - 1, n - 1), min(block, n - 1), n // 2, n - 1})
        for pos in positions:
            for value in NONFINITE:
                t = base.clone()
                t[pos] = value
                assert not bool(torch.isfinite(t).all())
                assert _answers(t, name) == {False}, (name, n, pos, value)


def test_a_slice_in_the_middle_of_a_buffer():
    t = torch.ones(100, dtype=torch.bfloat16)
    t[10] = float("nan")
    t[90] = float("inf")
    assert native.all_finite(t[11:90].data_ptr(), "bfloat16", 79)
    assert not native.all_finite(t[11:91].data_ptr(), "bfloat16", 80)


def test_bad_arguments():
    t = torch.ones(4)
    with pytest.raises(ValueError, match="int8"):
        native.all_finite(t.data_ptr(), "int8", 4)
    with pytest.raises(RuntimeError, match="all_finite: bad sizes"):
        native.all_finite(t.data_ptr(), "float32", -1)


def test_without_the_library(monkeypatch):
    monkeypatch.setattr(native, "_LOADED", (None, "pretend it was not built"))
    with pytest.raises(RuntimeError, match="pretend it was not built") as info:
        native.all_finite(torch.ones(1).data_ptr(), "float32", 1)
    assert native.FIX in str(info.value)


TORCH_FREE = """
import sys
import numpy as np
from mergefast import native
assert "torch" not in sys.modules, "mergefast.native imported torch"
ok = np.array([1.0, -2.5, 65504.0], dtype=np.float16)
bad = np.array([1, np.nan], dtype=np.float32)
print(native.all_finite(ok.ctypes.data, "float16", ok.size), native.all_finite(bad.ctypes.data, "float32", bad.size))
assert "torch" not in sys.modules, "native.all_finite imported torch"
"""


def test_torch_free_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
