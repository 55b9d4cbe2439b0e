"""The one-read breadcrumbs of the C++ kernels (csrc/cpu/select/one_read_band.cpp), taken by
tensors of at least 2**20 elements: bit-equal to the two-pass scheme (csrc/cpu/breadcrumbs.cpp)
and to the reference, whether the one read finishes or falls back."""

from __future__ import annotations

import pytest
import torch
from test_kernels_cpu_speculative import N, _both_paths, _deltas, _spec_sample_positions, pytestmark  # noqa: F401

from mergefast import kernels, methods
from mergefast.kernels import SelectionOptions


@pytest.fixture(autouse=True)
def _cpu_ext(monkeypatch):
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")


def _band(base, xs, weights, densities, gammas, consensus, selection=None, **kw):
    """breadcrumbs_ties (consensus "sum") or breadcrumbs (None) on the kernels."""
    return kernels.task_arithmetic(
        base,
        xs,
        weights,
        densities=densities,
        gammas=gammas,
        sparsify="magnitude_outliers",
        consensus=consensus,
        selection=selection,
        **kw,
    )


def _reference(base, xs, weights, densities, gammas, consensus, **kw):
    return methods.task_arithmetic(
        base, xs, weights, densities=densities, gammas=gammas, sparsify="magnitude_outliers", consensus=consensus, **kw
    )


@pytest.mark.parametrize(
    "kind,dtype,consensus",
    [
        ("continuous", torch.bfloat16, "sum"),
        ("continuous", torch.float32, None),
        ("coarse", torch.bfloat16, None),
        ("coarse", torch.float16, "sum"),
    ],
)
def test_breadcrumbs_speculate_and_equal_two_passes(kind, dtype, consensus):
    """Both cuts of every model from the one read: continuous keys (each threshold a
    candidate) and 51 delta values (thresholds on a window's ends, ties cut at both cuts)."""
    g = torch.Generator().manual_seed(21 if kind == "coarse" else 22)
    base = (0.02 * torch.randn(N, generator=g)).to(dtype)
    xs = [_deltas(kind, N, g, base).to(dtype) for _ in range(3)]
    args = (base, xs, [0.5, -0.3, 0.9], [0.5, 0.2, 0.9], [0.01, 0.1, 0.05], consensus)
    fast, slow, path = _both_paths(lambda sel: _band(*args, selection=sel))
    assert path == "finished"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, _reference(*args))


def test_cuts_known_without_a_threshold_ride_along():
    """density 1 (everything), gamma 0 (no upper cut), density 0 and a band emptied by gamma:
    the known cuts need no window, and their models still enter every record."""
    g = torch.Generator().manual_seed(23)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas("continuous", N, g, base).bfloat16() for _ in range(5)]
    args = (base, xs, [0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 0.4, 0.0, 0.7, 0.5], [0.0, 0.0, 0.01, 0.5, 0.02], "sum")
    fast, slow, path = _both_paths(lambda sel: _band(*args, selection=sel))
    assert path == "finished"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, _reference(*args))


def test_a_misleading_sample_falls_back():
    """The sampled elements carry the largest deltas: both windows of the model miss, and the
    two passes redo the whole output."""
    g = torch.Generator().manual_seed(24)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    x = (base.float() + 0.001 * torch.randn(N, generator=g)).bfloat16()
    idx = _spec_sample_positions(N)
    x[idx] = (base[idx].float() + 100.0).bfloat16()
    args = (base, [x], [1.0], [0.5], [0.01], None)
    fast, slow, path = _both_paths(lambda sel: _band(*args, selection=sel))
    assert path == "fell back"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, _reference(*args))


def test_non_finite_inputs_are_reported_and_rank_as_the_reference():
    """The pass proves its inputs finite as the apply does; NaNs (all ranked equal, above inf,
    lowest index first) sit inside the dropped top gamma."""
    from kernel_cases import plant_nans

    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(25)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas("continuous", N, g, base).bfloat16() for _ in range(2)]
    args = (base, xs, [0.5, 0.5], [0.5, 0.3], [0.05, 0.05], "sum")
    with cpu.finite_inputs() as proven:
        _band(*args)
    assert {t.data_ptr() for t in (base, *xs)} <= proven
    plant_nans(base, xs, share=0.02)
    fast, slow, path = _both_paths(lambda sel: _band(*args, selection=sel))
    assert path == "finished"
    with cpu.finite_inputs() as proven:
        _band(*args)
    assert not proven
    want = _reference(*args)
    torch.testing.assert_close(fast, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(slow, want, rtol=0, atol=0, equal_nan=True)


def test_one_read_min_is_the_callers():
    """SelectionOptions.one_read_min moves the size from which breadcrumbs try the one read."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(26)
    n = 300_001
    base = (0.02 * torch.randn(n, generator=g)).bfloat16()
    xs = [_deltas("continuous", n, g, base).bfloat16() for _ in range(2)]
    args = (base, xs, [0.5, 0.5], [0.5, 0.3], [0.01, 0.1], "sum")
    before = cpu.one_read_counts()
    default = _band(*args)
    assert cpu.one_read_counts() == before
    early = _band(*args, selection=SelectionOptions(one_read_min=1 << 17))
    assert cpu.one_read_counts()[0] == before[0] + 1
    assert torch.equal(default, early) and torch.equal(early, _reference(*args))
