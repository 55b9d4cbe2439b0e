"""The kernel suite's comparison rules (tests/kernel_cases.py), checked without a GPU.

The GPU suite compares in tolerance mode (EXACT False: GPU division may differ in the last
bit) and hands the kernel API only CUDA tensors. The C++ and interpreted suites compare bit
for bit on CPU tensors, so neither exercises that mode. `TestCpuExtToleranceMode` runs the
whole suite on the C++ kernels the GPU's way: NaN and inf outputs through the tolerance rule,
and every float64 reference computed with `methods` (the kernel API refuses it, as
MERGEFAST_BACKEND=triton refuses CPU tensors). The tests below pin `assert_same` itself.
"""

from __future__ import annotations

import pytest
import test_kernels_cpu
import torch
from kernel_cases import assert_same, generate

from mergefast.kernels import dispatch

pytest_generate_tests = generate

NAN, INF = float("nan"), float("inf")


class TestCpuExtToleranceMode(test_kernels_cpu.TestCpuExt):
    """Every suite case on the C++ kernels, compared as on the GPU."""

    EXACT = False

    @pytest.fixture(autouse=True)
    def _kernel_inputs_only(self, monkeypatch):
        """Inputs that only the reference takes (float64, autograd) raise, as a GPU run's CPU
        copies do: a suite case must compute its float64 reference with `methods`."""
        forced = dispatch._forced_cpu_ext

        def refuse_reference_only(device, reference_only):
            if reference_only:
                raise RuntimeError("the suite passed reference-only inputs to the kernel API")
            return forced(device, reference_only)

        monkeypatch.setattr(dispatch, "_forced_cpu_ext", refuse_reference_only)


@pytest.mark.parametrize("exact", [True, False])
def test_nan_and_inf_match_themselves(exact):
    ref = torch.tensor([1.0, NAN, INF, -INF, 0.0])
    kernel = ref.clone()
    kernel[1] = torch.tensor(0x7FC00123, dtype=torch.int32).view(torch.float32)  # another NaN payload
    assert_same(kernel, ref, exact=exact)
    assert_same(kernel, ref, exact=exact, ref64=ref.double())


def test_one_ulp_is_within_tolerance_only():
    ref = torch.tensor([1.0, 2.0, INF])
    kernel = torch.tensor([1.0, 2.0 + 2**-22, INF])  # one float32 ulp above 2
    assert_same(kernel, ref, exact=False)
    with pytest.raises(AssertionError):
        assert_same(kernel, ref, exact=True)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize(
    "kernel, ref",
    [
        ([NAN, 2.0, INF], [1.0, 2.0, INF]),
        ([1.0, 2.0, INF], [1.0, NAN, INF]),
        ([1.0, 2.0, -INF], [1.0, 2.0, INF]),
        ([1.0, 2.0, 3.0], [1.0, 2.0, INF]),
        ([1.0, 2.0, INF], [1.0, 2.0, 3.0]),
        ([1.0, 2.0 + 2**-19, INF], [1.0, 2.0, INF]),  # eight float32 ulps above 2
    ],
    ids=["nan-for-finite", "finite-for-nan", "inf-sign", "finite-for-inf", "inf-for-finite", "eight-ulps"],
)
def test_mismatches_fail(kernel, ref, exact):
    with pytest.raises(AssertionError):
        assert_same(torch.tensor(kernel), torch.tensor(ref), exact=exact)
