"""How far Model Stock's kernels and its float32 reference are from the float64 result where t
is ill-conditioned: filter_wise rows of a few elements (a conv kernel's taps) whose task vectors
are nearly opposite make t = N cos / (1 + (N - 1) cos) large.

Prints, over random rows of 3, 64 and 4096 elements (2 or 3 fine-tunes at 0.02 noise), the
summed absolute error of each against methods.model_stock in float64, and how many elements
the kernels have farther (beyond 1% and 1e-6 of the tensor's scale) than the reference.

    python benchmarks/model_stock_accuracy.py [--trials 20]
"""

from __future__ import annotations

import argparse

import torch

from mergefast import kernels, methods

CASES = ((3, 2, 4096), (3, 3, 4096), (64, 2, 4096), (4096, 3, 8))  # (row length, fine-tunes, rows)


def errors(base: torch.Tensor, xs: list[torch.Tensor]) -> tuple[float, float, int]:
    """(kernel error sum, reference error sum, elements where the kernel is farther)."""
    out = kernels.model_stock(base, xs, filter_wise=True)
    ref = methods.model_stock(base, xs, filter_wise=True)
    exact = methods.model_stock(base.double(), [x.double() for x in xs], filter_wise=True)
    scale = float(ref.abs().max())
    kernel_error, ref_error = (out.double() - exact).abs(), (ref.double() - exact).abs()
    farther = int((kernel_error > ref_error * 1.01 + 1e-6 * scale).sum())
    return float(kernel_error.sum()), float(ref_error.sum()), farther


def main() -> None:
    """Run the trials and print the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    trials = parser.parse_args().trials
    torch.manual_seed(0)
    totals, elements = [0.0, 0.0, 0], 0
    for _ in range(trials):
        for cols, k, rows in CASES:
            base = torch.randn(rows, cols)
            found = errors(base, [base + 0.02 * torch.randn(rows, cols) for _ in range(k)])
            totals = [a + b for a, b in zip(totals, found)]
            elements += rows * cols
    print(f"{elements} elements: summed error kernels {totals[0]:.3e}, float32 reference {totals[1]:.3e}")
    print(f"elements where the kernels are farther than the reference: {totals[2]}")


if __name__ == "__main__":
    main()
