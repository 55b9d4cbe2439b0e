"""The methods in execute.NONFINITE_REACHES_OUTPUT skip the NaN/inf scan of their inputs when
their output is finite. That is only sound if any NaN or inf anywhere in any input leaves a
NaN or inf in the output, on every CPU backend: checked here, planted at random positions."""

import os

import pytest
import torch

from mergefast import kernels
from mergefast.execute import NONFINITE_REACHES_OUTPUT

needs_ext = pytest.mark.skipif(os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0", reason="no CPU kernel library")

N = 3 * 1024 + 7  # a few kernel blocks and a ragged tail


def _merge(method: str, inputs: list[torch.Tensor]) -> torch.Tensor:
    base, xs = inputs[0], inputs[1:]
    if method == "linear":
        return kernels.linear(inputs, [0.2, 0.3, 0.0, 0.5])
    if method == "slerp":
        return kernels.slerp(base, xs[0], 0.3)
    if method == "nearswap":
        return kernels.nearswap(base, xs[0], 0.001)
    if method == "sce":
        return kernels.sce(base, xs, select_topk=0.1)
    raise AssertionError(f"no case for {method}: add one when adding it to NONFINITE_REACHES_OUTPUT")


@pytest.mark.parametrize("backend", [pytest.param("cpu-ext", marks=needs_ext), "torch"])
@pytest.mark.parametrize("method", sorted(NONFINITE_REACHES_OUTPUT))
def test_any_nonfinite_input_reaches_the_output(monkeypatch, method, backend):
    monkeypatch.setenv("MERGEFAST_BACKEND", backend)
    g = torch.Generator().manual_seed(0)
    used = 2 if method in ("slerp", "nearswap") else 4
    for trial in range(24):
        dtype = (torch.float32, torch.bfloat16, torch.float16)[trial % 3]
        inputs = [(torch.randn(N, generator=g) * 0.05).to(dtype) for _ in range(4)]
        which = trial % used
        at = int(torch.randint(N, (1,), generator=g))
        value = (float("nan"), float("inf"), float("-inf"))[(trial // 3) % 3]
        inputs[which][at] = value
        out = _merge(method, inputs)
        assert not bool(torch.isfinite(out.float()).all()), (method, backend, dtype, which, at, value)
