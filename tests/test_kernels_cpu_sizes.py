"""The C++ selection paths by tensor size: single-threaded nth_element (<= 65536 elements),
the sampled window above that (with fewer than 8192 samples below 131072 elements): all
equal the reference."""

import pytest
import torch

from mergefast import kernels, methods


CASES = ([(n, torch.bfloat16) for n in (65_536, 65_537, 131_071, 300_001, (1 << 20) + 4099)]
         + [(n, dtype) for n in (131_071, 300_001) for dtype in (torch.float16, torch.float32)])


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
    assert torch.equal(kernels.task_arithmetic(base, xs, [0.5, 0.3, 0.2], densities=args[3], sparsify="magnitude"),
                       methods.task_arithmetic(base, xs, [0.5, 0.3, 0.2], densities=args[3], sparsify="magnitude"))
