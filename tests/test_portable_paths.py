"""The C kernels' portable paths (no AVX2: another architecture, an older x86-64) and their
AVX2 clones (no AVX-512) give the bits of the clones this CPU runs. `MERGEFAST_NO_AVX2=1`
makes the library take the portable paths on this machine, `MERGEFAST_NO_AVX512=1` the AVX2
clones (csrc/cpu/common.h); a child process computes every method with one of them, and each
output must equal this process's, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergefast import kernels, native

pytestmark = pytest.mark.skipif(native.library()[0] is None, reason="the CPU kernels are not built")

W3, D3 = [0.5, 0.3, 0.2], [0.5, 0.6, 0.4]
# Shapes: rows of 1024 (DELLA's rank bounds, with elements left open), odd lengths (every
# loop's tail), rows past DELLA's bound length (its full ranks).
SHAPES = [(48, 1024), (37, 301), (3, 7001)]


def _inputs(shape, dtype):
    """base and three fine-tunes with small deltas, 2% of them exactly zero."""
    g = torch.Generator().manual_seed(sum(shape))
    base = 0.02 * torch.randn(shape, generator=g)
    xs = []
    for _ in range(3):
        noise = 0.002 * torch.randn(shape, generator=g)
        noise[torch.rand(shape, generator=g) < 0.02] = 0
        xs.append((base + noise).to(dtype))
    return base.to(dtype), xs


def _ta(sparsify, **kw):
    return lambda b, xs: kernels.task_arithmetic(b, xs, W3, densities=D3, sparsify=sparsify, **kw)


METHODS = {
    "linear": lambda b, xs: kernels.linear([b, *xs], [0.1, *W3]),
    "ties": lambda b, xs: kernels.ties(b, xs, W3, D3),
    "dare_ties": _ta("random", consensus="sum", rescale=True, tensor_name="t"),
    "dare_linear": _ta("random", rescale=True, tensor_name="t"),
    "breadcrumbs_ties": _ta("magnitude_outliers", consensus="sum", gammas=[0.01] * 3),
    "della": _ta("della", consensus="sum", normalize=True, epsilons=[0.15] * 3, rescale=True, tensor_name="t"),
    "sce": lambda b, xs: kernels.sce(b, xs, select_topk=0.3),
    "slerp": lambda b, xs: kernels.slerp(b, xs[0], 0.4),
    "nearswap": lambda b, xs: kernels.nearswap(b, xs[0], 0.001),
    "ram": lambda b, xs: kernels.ram(b, xs),
    "ramplus_tl": lambda b, xs: kernels.ramplus_tl(b, xs),
    "model_stock": lambda b, xs: kernels.model_stock(b, xs),
    "nuslerp_row_wise": lambda b, xs: kernels.nuslerp(xs[:2], [0.3, 0.7], b, flatten=False, row_wise=True),
    "multislerp": lambda b, xs: kernels.multislerp(xs, W3, b),
    "karcher": lambda b, xs: kernels.karcher(xs),
    "arcee_fusion": lambda b, xs: kernels.arcee_fusion(b, xs[0]),
}
CASES = [(shape, dtype) for shape in SHAPES for dtype in (torch.bfloat16, torch.float32)]
# Past 2^20 elements SCE's keys pass records the elements of its window (csrc/cpu/sce_window.h).
SCE_WINDOW_SHAPE = (1025, 1031)  # a last block of 7 elements: the AVX2 scan's tail


def outputs() -> dict[str, torch.Tensor]:
    """Every method on every case, keyed `method shape dtype`, and SCE past 2^20 elements."""
    out = {}
    for shape, dtype in CASES:
        base, xs = _inputs(shape, dtype)
        for name, fn in METHODS.items():
            out[f"{name} {shape} {dtype}"] = fn(base, xs)
    base, xs = _inputs(SCE_WINDOW_SHAPE, torch.bfloat16)
    out[f"sce {SCE_WINDOW_SHAPE}"] = kernels.sce(base, xs, select_topk=0.1)
    return out


@pytest.fixture(scope="module")
def here() -> dict[str, torch.Tensor]:
    """The outputs of this process, on the widest clones this CPU runs."""
    return outputs()


@pytest.mark.parametrize("flag", ["MERGEFAST_NO_AVX2", "MERGEFAST_NO_AVX512"])
def test_narrower_paths_give_the_same_bits(here, flag, tmp_path):
    path = tmp_path / "out.pt"
    code = f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    code += f"import test_portable_paths as t; torch.save(t.outputs(), {str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, flag: "1"}, timeout=600)
    narrower = torch.load(path, weights_only=True)
    assert here.keys() == narrower.keys()
    differ = [k for k in here if not torch.equal(here[k].view(torch.uint8), narrower[k].view(torch.uint8))]
    assert not differ, differ


@pytest.mark.parametrize(("flag", "most"), [("MERGEFAST_NO_AVX2", 0), ("MERGEFAST_NO_AVX512", 1), (None, 2)])
def test_env_names_the_paths_the_flags_leave(flag, most):
    code = "from mergefast import native; lib = native.require(); print(lib.mf_simd_level(), native.simd_paths(lib))"
    env = {**os.environ, flag: "1"} if flag else os.environ
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True).stdout
    level, paths = out.split(maxsplit=1)
    assert 0 <= int(level) <= most and paths.strip() == native.SIMD_LEVELS[int(level)]
    if flag is None:  # as this process, whose paths `mergefast env` names
        assert int(level) == native.require().mf_simd_level()
        line = next(line for line in kernels.describe_backends() if line.startswith("cpu:"))
        assert line.endswith(f"{native.SIMD_LEVELS[int(level)]})")
