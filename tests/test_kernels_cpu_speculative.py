"""The one-read TIES / magnitude task arithmetic of the C++ kernels (csrc/cpu/select/one_read.cpp),
taken by tensors of at least 2**20 elements: bit-equal to the two-pass scheme
(csrc/cpu/select/two_pass.cpp + the apply) and to the reference, whether the one read
finishes or falls back."""

from __future__ import annotations

import os

import pytest
import torch
from kernel_cases import plant_nans, sampled_positions

from mergefast import kernels, methods
from mergefast.kernels import SelectionOptions

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0", reason="MERGEFAST_BUILD_EXT=0: no CPU kernel library"
    ),
    pytest.mark.slow,
]  # 2M-element tensors and their reference merges

N = (1 << 21) + 4099  # above the one-read path's minimum, not a multiple of the block
TWO_PASSES = SelectionOptions(one_read=False)


@pytest.fixture(autouse=True)
def _cpu_ext(monkeypatch):
    monkeypatch.setenv("MERGEFAST_BACKEND", "cpu-ext")


def _counts() -> tuple[int, int]:
    from mergefast.kernels import cpu

    return cpu.one_read_counts()


def _both_paths(fn):
    """fn(selection) with the production options (the one read allowed), then with the two
    passes only; and how the first call went: 'finished' or 'fell back'."""
    before = _counts()
    fast = fn(None)
    after = _counts()
    slow = fn(TWO_PASSES)
    path = "finished" if after[0] > before[0] else "fell back" if after[1] > before[1] else "not taken"
    return fast, slow, path


def _spec_sample_positions(n: int) -> torch.Tensor:
    """The elements one_read.cpp samples: min(clamp(n // 128, 2**14, 2**15), n // 16)."""
    return sampled_positions(n, min(max(1 << 14, min(n // 128, 1 << 15)), n // 16))


def _deltas(kind: str, n: int, g: torch.Generator, base: torch.Tensor) -> torch.Tensor:
    if kind == "continuous":  # every key distinct: each threshold is a candidate
        return base.float() + 0.002 * torch.randn(n, generator=g)
    if kind == "coarse":  # 51 delta values, ~2 % each: thresholds at the window's ends, ties cut
        return base.float() + torch.randint(-25, 26, (n,), generator=g) / 512
    if kind == "few-values":  # 7 delta values: ~14 % of the keys on each
        return base.float() + torch.randint(-3, 4, (n,), generator=g) / 64
    return base.float() + (torch.rand(n, generator=g) < 0.15) * 0.01 * torch.randn(n, generator=g)


@pytest.mark.parametrize(
    "kind,dtype",
    [
        ("continuous", torch.bfloat16),
        ("continuous", torch.float16),
        ("continuous", torch.float32),
        ("coarse", torch.bfloat16),
        ("coarse", torch.float16),
    ],
)
def test_ties_speculates_and_equals_two_passes(kind, dtype):
    g = torch.Generator().manual_seed(7 if kind == "coarse" else 8)
    base = (0.02 * torch.randn(N, generator=g)).to(dtype)
    xs = [_deltas(kind, N, g, base).to(dtype) for _ in range(3)]
    for densities in ([0.5, 0.2, 0.93], [0.1, 0.7, 0.35]):
        args = (base, xs, [0.5, -0.3, 0.9], densities)
        fast, slow, path = _both_paths(lambda sel, args=args: kernels.ties(*args, selection=sel))
        assert path == "finished", densities
        assert torch.equal(fast, slow), densities


@pytest.mark.parametrize("kind", ["few-values", "mostly-unchanged"])
def test_keys_piled_on_the_window_take_the_two_passes(kind):
    """~14 % of the keys on each delta value, or 85 % of them 0: whatever the sample's
    window, most keys are on its ends, the records would not fit in an output's worth of
    memory, and the two passes run."""
    g = torch.Generator().manual_seed(9)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas(kind, N, g, base).bfloat16() for _ in range(2)]
    args = (base, xs, [0.5, 0.5], [0.5, 0.3])
    fast, slow, path = _both_paths(lambda sel: kernels.ties(*args, selection=sel))
    assert path == "fell back"
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("density", [0.6005, 0.601, 0.62, 0.749])
def test_ties_cut_at_either_end_of_the_window(density):
    """60 % of the keys large, 15 % on one value, the rest small: just past 0.6 the
    threshold is that value at the window's lower end (its upper end a large key), further
    on at both ends; its ties are cut, and ranked in flat order along the records."""
    g = torch.Generator().manual_seed(10)
    u = torch.rand(N, generator=g)
    large, small = 1 + torch.rand(N, generator=g), 0.4 * torch.rand(N, generator=g)
    x = torch.where(u < 0.6, large, torch.where(u < 0.75, torch.full((N,), 0.5), small)).bfloat16()
    base = torch.zeros(N).bfloat16()
    fast, slow, path = _both_paths(lambda sel: kernels.ties(base, [x], [1.0], [density], selection=sel))
    assert path == "finished"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, methods.ties(base, [x], [1.0], [density]))


def test_float32_inputs_speculate_with_a_float32_output():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(N, generator=g)
    xs = [base + 0.01 * torch.randn(N, generator=g) for _ in range(3)]
    args = (base, xs, [0.2, 0.3, 0.5], [0.3, 0.3, 0.6])
    fast, slow, path = _both_paths(lambda sel: kernels.ties(*args, out_dtype=torch.float32, selection=sel))
    assert path == "finished"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, methods.ties(*args, out_dtype=torch.float32))


@pytest.mark.parametrize("normalize,lambda_", [(False, 1.0), (True, 0.7)])
def test_task_arithmetic_with_magnitude_speculates(normalize, lambda_):
    g = torch.Generator().manual_seed(11)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas("coarse", N, g, base).bfloat16() for _ in range(2)]
    call = lambda sel: kernels.task_arithmetic(
        base,
        xs,
        [0.6, 0.4],
        densities=[0.3, 0.75],
        sparsify="magnitude",
        normalize=normalize,
        lambda_=lambda_,
        selection=sel,
    )  # noqa: E731
    fast, slow, path = _both_paths(call)
    assert path == "finished"
    assert torch.equal(fast, slow)
    assert torch.equal(
        fast,
        methods.task_arithmetic(
            base, xs, [0.6, 0.4], densities=[0.3, 0.75], sparsify="magnitude", normalize=normalize, lambda_=lambda_
        ),
    )


@pytest.mark.parametrize("densities", [[0.0, 0.5, 1.0], [1.0, 0.4, 0.0, 0.6, 0.05]])
def test_models_keeping_all_or_nothing_ride_along(densities):
    """Models with density 0 or 1 need no threshold; their deltas still enter every record
    and the consensus."""
    g = torch.Generator().manual_seed(len(densities))
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas("continuous", N, g, base).bfloat16() for _ in densities]
    weights = [0.1 * (i + 1) for i in range(len(densities))]
    fast, slow, path = _both_paths(lambda sel: kernels.ties(base, xs, weights, densities, selection=sel))
    assert path == "finished"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, methods.ties(base, xs, weights, densities))


def test_a_misleading_sample_falls_back():
    """The sampled elements carry the largest deltas: every window misses, and the two
    passes redo the whole output."""
    g = torch.Generator().manual_seed(2)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    x = (base.float() + 0.001 * torch.randn(N, generator=g)).bfloat16()
    idx = _spec_sample_positions(N)
    x[idx] = (base[idx].float() + 100.0).bfloat16()
    args = (base, [x, x], [0.5, 0.5], [0.3, 0.6])
    fast, slow, path = _both_paths(lambda sel: kernels.ties(*args, selection=sel))
    assert path == "fell back"
    assert torch.equal(fast, slow)
    assert torch.equal(fast, methods.ties(*args))


def test_records_overflowing_fall_back():
    """Half the deltas are one value the sample never sees, right at the threshold: the
    records outgrow their memory during the pass, and the two passes redo the output."""
    g = torch.Generator().manual_seed(3)
    base = torch.zeros(N).bfloat16()
    x = torch.where(torch.rand(N, generator=g) < 0.5, 0.5, torch.rand(N, generator=g))
    idx = _spec_sample_positions(N)
    x[idx] = torch.rand(len(idx), generator=g)
    x = x.bfloat16()
    args = (base, [x], [1.0], [0.5])
    fast, slow, path = _both_paths(lambda sel: kernels.ties(*args, selection=sel))
    assert path == "fell back"
    assert torch.equal(fast, slow)


def test_many_wide_models_take_the_two_passes():
    """Nine float32 models would need more record memory than the output's: the sample says
    so, and the two passes run without the one-read pass."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(N, generator=g)
    xs = [base + 0.01 * torch.randn(N, generator=g) for _ in range(9)]
    args = (base, xs, [0.1] * 9, [0.5] * 9)
    fast, slow, path = _both_paths(lambda sel: kernels.ties(*args, selection=sel))
    assert path == "fell back"
    assert torch.equal(fast, slow)


def test_non_finite_inputs_are_reported():
    """The pass proves its inputs finite as the apply does: one NaN and the proof fails."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(6)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas("continuous", N, g, base).bfloat16() for _ in range(2)]
    with cpu.finite_inputs() as proven:
        kernels.ties(base, xs, [0.5, 0.5], [0.5, 0.5])
    assert {t.data_ptr() for t in (base, *xs)} <= proven
    xs[1][N // 3] = float("nan")
    before = _counts()
    with cpu.finite_inputs() as proven:
        out = kernels.ties(base, xs, [0.5, 0.5], [0.5, 0.5])
    assert _counts()[0] == before[0] + 1
    assert not proven
    want = methods.ties(base, xs, [0.5, 0.5], [0.5, 0.5])
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("density", [0.01, 0.5])
def test_nan_payloads_rank_equal(density):
    """NaNs of mixed payloads rank equal in the one read as in the reference's stable sort:
    at density 0.01 the first two models' thresholds fall among their 2 % NaNs. (With many
    more NaNs the ties at the threshold would fill the records: the two passes run.)"""
    g = torch.Generator().manual_seed(8)
    base = (0.02 * torch.randn(N, generator=g)).bfloat16()
    xs = [_deltas("continuous", N, g, base).bfloat16() for _ in range(3)]
    plant_nans(base, xs, share=0.02)
    kw = dict(densities=[density, density / 2, 1 - density], sparsify="magnitude")
    fast, slow, path = _both_paths(lambda sel: kernels.task_arithmetic(base, xs, [0.3, 0.5, 0.2], selection=sel, **kw))
    assert path == "finished"
    want = methods.task_arithmetic(base, xs, [0.3, 0.5, 0.2], **kw)
    torch.testing.assert_close(fast, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(slow, want, rtol=0, atol=0, equal_nan=True)


def test_one_read_min_is_the_callers():
    """SelectionOptions.one_read_min moves the size from which the one read is tried: a
    300,001-element tensor takes it with one_read_min=2**17, not with the default 2**20."""
    g = torch.Generator().manual_seed(12)
    n = 300_001
    base = (0.02 * torch.randn(n, generator=g)).bfloat16()
    xs = [_deltas("continuous", n, g, base).bfloat16() for _ in range(2)]
    args = (base, xs, [0.5, 0.5], [0.5, 0.3])
    before = _counts()
    default = kernels.ties(*args)
    assert _counts() == before
    early = kernels.ties(*args, selection=SelectionOptions(one_read_min=1 << 17))
    assert _counts()[0] == before[0] + 1
    assert torch.equal(default, early) and torch.equal(early, methods.ties(*args))


@pytest.mark.parametrize("n", [2, 5, 15, 16, 40])
def test_tensors_too_small_to_sample_fall_back(n):
    """one_read_min=1 lets tensors of under 16 elements, which leave predict_windows no sample,
    try the one read: TIES falls back to the two passes (so does breadcrumbs_ties); a sample of
    one or two elements takes either path. The reference's bytes every time."""
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g).bfloat16()
    xs = [(base.float() + torch.randn(n, generator=g)).bfloat16() for _ in range(3)]
    early = SelectionOptions(one_read_min=1)
    args = (base, xs, [0.5, 0.3, 0.2], [0.5, 0.7, 0.3])
    before = _counts()
    assert torch.equal(kernels.ties(*args, selection=early), methods.ties(*args))
    assert n >= 16 or _counts()[1] == before[1] + 1
    crumbs = {"densities": [0.5, 0.7, 0.3], "gammas": [0.1] * 3, "sparsify": "magnitude_outliers", "consensus": "sum"}
    want = methods.task_arithmetic(base, xs, [0.5, 0.3, 0.2], **crumbs)
    before = _counts()
    got = kernels.task_arithmetic(base, xs, [0.5, 0.3, 0.2], selection=early, **crumbs)
    assert n >= 16 or _counts()[1] == before[1] + 1
    assert torch.equal(got, want)
