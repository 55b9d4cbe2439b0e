"""Whole merges on the C++ kernels equal whole merges on the torch references, for every method.

The kernel suite (tests/kernel_cases.py) checks each kernel call against its reference on the
arguments it chooses; this runs every call of a real merge on both backends: each tensor's own
parameters (gradients over the layers, filters), 1-D norms beside matrices, the random methods'
stream keys from the seed and tensor names, float32 in and out. A mistake in the kernels' host
code (kernels/*.py) would move whole deltas (~1e-2 here); the backends' legitimate differences
are rounding (float64 norms and dot products in the kernels: ~1e-7 relative). Both backends
get the executor's arguments alike, so the executor itself is checked elsewhere (the
end-to-end and mergekit comparison tests). One CLI run per backend and method, tiny Llamas; the
Triton kernels under the interpreter without a GPU (tests/conftest.py), on the GPU with one.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import method_yaml, run_cli
from safetensors.torch import load_file

from mergefast import kernels

FT = ("ft-a", "ft-b", "ft-c")
# per-model parameters: a gradient over the layers and a filter, so tensors get different values
WEIGHT = "weight: [{filter: mlp, value: 0.6}, {value: 0.4}]"
DENSITY = "density: [0.3, 0.8]"
# method -> (uses base_model, fine-tunes, per-model parameters, global parameters)
CASES = {
    "linear": (False, FT, WEIGHT, "normalize: true"),
    "task_arithmetic": (True, FT, WEIGHT, "lambda: 0.8"),
    "ties": (True, FT, f"{WEIGHT}, {DENSITY}", ""),
    "dare_ties": (True, FT, f"{WEIGHT}, {DENSITY}", ""),
    "dare_linear": (True, FT, f"{WEIGHT}, {DENSITY}", ""),
    "breadcrumbs": (True, FT, f"{WEIGHT}, {DENSITY}, gamma: 0.05", ""),
    "breadcrumbs_ties": (True, FT, f"{WEIGHT}, {DENSITY}, gamma: 0.05", ""),
    "della": (True, FT, f"{WEIGHT}, {DENSITY}, epsilon: 0.1", ""),
    "della_linear": (True, FT, f"{WEIGHT}, {DENSITY}, epsilon: [0.05, 0.15]", ""),
    "sce": (True, FT, "", "select_topk: [0.2, 0.6]"),
    "slerp": (True, FT[:1], "", "t: [0.2, 0.7]"),
    "nearswap": (True, FT[:1], "", "t: 0.01"),
    "nuslerp": (True, FT[:2], WEIGHT, ""),
    "multislerp": (True, FT, WEIGHT, ""),
    "karcher": (False, FT, "", "max_iter: 5"),
    "model_stock": (True, FT, "", ""),
    "ram": (True, FT, "", ""),
    "ramplus_tl": (True, FT, "", "r: 0.2"),
    "arcee_fusion": (True, FT[:1], "", ""),
}
# more of each method's options (C++ only): case -> (method, then as CASES)
VARIANTS = {
    "ties-lambda-no-normalize": ("ties", True, FT, f"{WEIGHT}, {DENSITY}", "normalize: false, lambda: 0.5"),
    "dare_ties-no-rescale": ("dare_ties", True, FT, f"{WEIGHT}, {DENSITY}", "rescale: false"),
    "della-no-rescale-normalize": ("della_linear", True, FT, f"{WEIGHT}, {DENSITY}", "rescale: false, normalize: true"),
    "breadcrumbs-gamma-0": ("breadcrumbs_ties", True, FT, f"{WEIGHT}, {DENSITY}, gamma: 0.0", "int8_mask: true"),
    "sce-weights-ignored": ("sce", True, FT, WEIGHT, "select_topk: 0.3"),
    "nuslerp-no-base": ("nuslerp", False, FT[:2], WEIGHT, "nuslerp_flatten: false"),
    "nuslerp-row-wise": ("nuslerp", True, FT[:2], WEIGHT, "nuslerp_flatten: false, nuslerp_row_wise: true"),
    "multislerp-no-base": ("multislerp", False, FT, WEIGHT, "normalize_weights: false"),
    "karcher-base-as-input": ("karcher", True, FT[:2], "", ""),
    "model_stock-filter-wise": ("model_stock", True, FT, "", "filter_wise: true"),
    "ram-epsilon": ("ram", True, FT, "", "epsilon: 0.01"),
    "slerp-filtered-t": ("slerp", True, FT[:1], "", "t: [{filter: self_attn, value: 0.9}, {value: [0.1, 0.5]}]"),
}
# arcee_fusion: the kernels' float64 KL and the reference's float32 KL may keep or drop a
# different element at a row's importance threshold (docs/methods.md): a whole delta, rarely
THRESHOLD_FLIPS = {"arcee_fusion": 2}
# Triton (interpreted without a GPU: ~3 s a merge) for one method of each host module of kernels/
# but DELLA's, breadcrumbs' and arcee_fusion's (which the CPU cases run): interpreted, their
# selection passes took 28, 11 and 15 s a merge (2-vCPU AMD EPYC VM); the kernel suite checks
# their Triton kernels against the references (tests/kernel_cases.py)
TRITON = ("dare_ties", "ties", "sce", "model_stock", "multislerp", "ramplus_tl", "slerp")
NEEDS_EXT = pytest.mark.skipif(kernels.backend("cpu") != "cpu-ext", reason="no C++ kernel library")
NEEDS_TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def config(case: str, family) -> str:
    """The YAML of a case of CASES or VARIANTS over `family`, float32 throughout."""
    method, uses_base, models, per_model, global_params = VARIANTS.get(case) or (case, *CASES[case])
    return method_yaml(method, family, base=uses_base, models=models, model_params=per_model, params=global_params)


def merged(case: str, family, tmp_path, backend: str) -> dict[str, torch.Tensor]:
    """The output tensors of one CLI merge of `case` with MERGEFAST_BACKEND=`backend`."""
    path = tmp_path / f"{case}.yml"
    path.write_text(config(case, family))
    out = tmp_path / backend
    device = ("--cuda",) if backend == "triton" and torch.cuda.is_available() else ()
    result = run_cli("yaml", path, out, "--quiet", *device, env={"MERGEFAST_BACKEND": backend})
    assert result.exit_code == 0, result.output
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize(
    "backend, case",
    [pytest.param("cpu-ext", m, marks=NEEDS_EXT) for m in sorted(CASES) + sorted(VARIANTS)]
    + [pytest.param("triton", m, marks=NEEDS_TRITON) for m in TRITON],
)
def test_kernels_merge_as_the_references(backend, case, f32_family, tmp_path):
    assert_agree(case, merged(case, f32_family, tmp_path, backend), merged(case, f32_family, tmp_path, "torch"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", sorted(CASES))
def test_cuda_merges_as_the_references(method, f32_family, tmp_path):
    """Every method with --cuda (the Triton kernels) against the references on the CPU."""
    assert_agree(method, merged(method, f32_family, tmp_path, "triton"), merged(method, f32_family, tmp_path, "torch"))


def assert_agree(case: str, fused: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Every tensor within rounding of the reference's (THRESHOLD_FLIPS whole elements apart)."""
    method = VARIANTS.get(case, (case,))[0]
    assert fused.keys() == reference.keys()
    for name, ref in reference.items():
        got = fused[name]
        assert got.dtype == ref.dtype == torch.float32, name
        off = ~torch.isclose(got, ref, rtol=1e-5, atol=1e-7, equal_nan=True)
        assert int(off.sum()) <= THRESHOLD_FLIPS.get(method, 0), (
            f"{name}: {int(off.sum())} of {ref.numel()} elements differ, max {(got - ref).abs().max().item():.3g}"
        )
