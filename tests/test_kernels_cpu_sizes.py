"""The C++ selection paths by tensor size: single-threaded nth_element (<= 65536 elements),
the sampled window above that (with fewer than 8192 samples below 131072 elements): all
equal the reference."""

import pytest
import torch

from mergefast import kernels, methods


def _case(n, dtype):
    """Sizes from 300001 elements up, and the other dtypes, are `slow` (their reference merges
    take a second)."""
    return pytest.param(n, dtype, marks=[pytest.mark.slow] if n >= 300_001 or dtype != torch.bfloat16 else [])


CASES = [_case(n, torch.bfloat16) for n in (65_536, 65_537, 131_071, 300_001, (1 << 20) + 4099)] + [
    _case(n, dtype) for n in (131_071, 300_001) for dtype in (torch.float16, torch.float32)
]


@pytest.mark.parametrize("n,dtype", CASES)
@pytest.mark.parametrize("density", [0.05, 0.5, 0.97])
def test_ties_selection_paths_equal_the_reference(n, dtype, density):
    if kernels.backend("cpu") != "cpu-ext":
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g).to(dtype)
    # coarse deltas: many equal magnitudes at every threshold
    xs = [(base.float() + torch.randint(-3, 4, (n,), generator=g) / 64).to(dtype) for _ in range(3)]
    args = (base, xs, [0.5, -0.3, 0.9], [density, density / 2, 1 - density / 3])
    assert torch.equal(kernels.ties(*args), methods.ties(*args))
    assert torch.equal(
        kernels.task_arithmetic(base, xs, [0.5, 0.3, 0.2], densities=args[3], sparsify="magnitude"),
        methods.task_arithmetic(base, xs, [0.5, 0.3, 0.2], densities=args[3], sparsify="magnitude"),
    )


@pytest.mark.parametrize("seed", [pytest.param(s, marks=[pytest.mark.slow] if s >= 8 else []) for s in range(24)])
def test_window_selection_on_random_tensors(seed):
    """Random sizes just above the small-tensor path, random densities, dtypes and delta
    shapes (continuous, coarse, mostly unchanged): the kept set is the reference's."""
    from mergefast.kernels import cpu
    from mergefast.methods.numerics import keep_count

    if kernels.backend("cpu") != "cpu-ext":
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(65_537, 400_000, (1,), generator=g))
    dtype = (torch.bfloat16, torch.float16, torch.float32)[seed % 3]
    base = (0.02 * torch.randn(n, generator=g)).to(dtype)
    kind = seed % 4
    if kind == 0:  # continuous small deltas
        x = base.float() + 0.002 * torch.randn(n, generator=g)
    elif kind == 1:  # a handful of delta values
        x = base.float() + torch.randint(-2, 3, (n,), generator=g) * 0.001
    elif kind == 2:  # most weights unchanged
        x = base.float() + (torch.rand(n, generator=g) < 0.2) * 0.01 * torch.randn(n, generator=g)
    else:  # heavy tails
        x = base.float() + 0.001 * torch.randn(n, generator=g) ** 3
    x = x.to(dtype)
    density = float(torch.rand(1, generator=g))
    want = methods.magnitude_mask(x.float() - base.float(), density)
    assert torch.equal(cpu.magnitude_keep(base, x, keep_count(density, n)), want), (n, dtype, kind, density)


@pytest.mark.parametrize("n", [65_537])
@pytest.mark.parametrize("density,gamma", [(0.05, 0.01), (0.5, 0.3), (0.9, 0.2)])
def test_breadcrumbs_selection_paths_equal_the_reference(n, density, gamma):
    """Both cut points through the sampled window (above the small-tensor path), with many ties
    at each: breadcrumbs and breadcrumbs_ties equal the reference."""
    if kernels.backend("cpu") != "cpu-ext":
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g).to(torch.bfloat16)
    xs = [(base.float() + torch.randint(-3, 4, (n,), generator=g) / 64).to(torch.bfloat16) for _ in range(3)]
    for consensus in (None, "sum"):
        kw = dict(
            densities=[density, density / 2, 1 - density / 3],
            gammas=[gamma, 0.0, gamma / 2],
            sparsify="magnitude_outliers",
            consensus=consensus,
        )
        args = (base, xs, [0.5, -0.3, 0.9])
        assert torch.equal(kernels.task_arithmetic(*args, **kw), methods.task_arithmetic(*args, **kw))
