"""The SLERP family's Gram pass (csrc/cpu/gram.cpp) against an exact model of its summation
order: per block of 2048 elements of a row, 8 float64 lanes (element j in lane j % 8, summed in
index order), the lanes pairwise, then the blocks of the row in order; per column
(csrc/cpu/gram_columns.cpp), the rows in order within chunks of rows, then the chunks in order. Any change to how the
pass computes (vector width, fused multiply-add, staging) must keep every sum bit-identical."""

from __future__ import annotations

import os

import pytest
import torch

BLOCK, LANES = 2048, 8

pytestmark = pytest.mark.skipif(
    os.environ.get("MERGEFAST_BUILD_EXT", "1") == "0", reason="MERGEFAST_BUILD_EXT=0: no CPU kernel library"
)


def _row_sums(products: torch.Tensor) -> torch.Tensor:
    """Sums of one row's float64 products (cols, P) in the kernel's order: (P,)."""
    cols, pairs = products.shape
    total = torch.zeros(pairs, dtype=torch.float64)
    for start in range(0, cols, BLOCK):
        block = products[start : start + BLOCK]
        padded = torch.zeros((BLOCK, pairs), dtype=torch.float64)
        padded[: block.shape[0]] = block  # adding +0.0 to a lane sum changes nothing
        lanes = padded.reshape(BLOCK // LANES, LANES, pairs)
        acc = torch.zeros((LANES, pairs), dtype=torch.float64)
        for m in range(lanes.shape[0]):
            acc = acc + lanes[m]
        a = acc
        part = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
        total = total + part
    return total


def expected_gram(base, xs, rows: int, cols: int) -> torch.Tensor:
    """The Gram rows (rows, P) of the vectors d_i = x_i - base (float32), in the pass's order."""
    d = [x.float().reshape(rows, cols) - (base.float().reshape(rows, cols) if base is not None else 0) for x in xs]
    k = len(d)
    prods = torch.stack([d[i].double() * d[j].double() for i in range(k) for j in range(i, k)], dim=-1)
    return torch.stack([_row_sums(prods[r]) for r in range(rows)])


@pytest.mark.parametrize(
    "k, rows, cols, dtype, with_base",
    [
        (2, 1, 5003, torch.bfloat16, True),
        (3, 1, 2 * BLOCK + 13, torch.bfloat16, True),
        (4, 1, 3 * BLOCK, torch.bfloat16, False),
        (3, 5, 777, torch.float16, True),
        (4, 3, BLOCK + 7, torch.float32, False),
        (1, 2, 100, torch.float32, True),
        (5, 2, 1500, torch.bfloat16, True),
        (6, 2, 1031, torch.bfloat16, True),
        (7, 1, 999, torch.float16, False),
        (9, 1, BLOCK + 5, torch.bfloat16, False),
        (17, 1, 203, torch.float32, True),
    ],
)
def test_gram_sums_in_the_documented_order(k, rows, cols, dtype, with_base):
    """Every sum bit-identical to the model, for the unrolled input counts (1-4) and the
    row-by-row path beyond (8 pairs at a time, so 17 inputs take rows of 8, 8 and 1), odd
    row lengths, several rows, every input dtype."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(k * 1000 + cols)
    base = torch.randn(rows * cols, generator=g).to(dtype) if with_base else None
    xs = [(torch.randn(rows * cols, generator=g) * (1 + i)).to(dtype) for i in range(k)]
    got = cpu.gram(base, xs, rows, cols)
    assert torch.equal(got, expected_gram(base, xs, rows, cols))


COLUMN_ROWS = 256  # gram_columns.cpp's kColumnRows


@pytest.mark.parametrize(
    "k, rows, cols, dtype, with_base",
    [
        (2, 7, 2100, torch.bfloat16, True),
        (2, 600, 5, torch.float16, False),
        (3, 4, 1025, torch.float32, True),
        (1, 300, 64, torch.bfloat16, False),
    ],
)
def test_column_gram_sums_each_column_in_chunks_of_rows(k, rows, cols, dtype, with_base):
    """nuslerp's row_wise (gram_columns.cpp): per column of the rows x cols view, the float64
    products summed in row order from 0.0 within each chunk of 256 rows, then the chunks' sums
    in order, bit for bit; two vectors (one loop) and the pair-by-pair path, runs of 1024
    columns and a partial one, several chunks and a partial one."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(k * 100 + cols)
    base = torch.randn(rows * cols, generator=g).to(dtype) if with_base else None
    xs = [(torch.randn(rows * cols, generator=g) * (1 + i)).to(dtype) for i in range(k)]
    d = [x.float().reshape(rows, cols) - (base.float().reshape(rows, cols) if base is not None else 0) for x in xs]
    prods = torch.stack([d[i].double() * d[j].double() for i in range(k) for j in range(i, k)], dim=-1)
    want = torch.zeros(cols, k * (k + 1) // 2, dtype=torch.float64)
    for r0 in range(0, rows, COLUMN_ROWS):
        chunk = torch.zeros_like(want)
        for r in range(r0, min(rows, r0 + COLUMN_ROWS)):
            chunk = chunk + prods[r]
        want = want + chunk
    assert torch.equal(cpu.gram(base, xs, rows, cols, columns=True), want)


def test_gram_mixed_dtypes_and_specials():
    """Inputs of different dtypes in one call, and infinities and NaN propagate as in the model."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(7)
    n = BLOCK + 100
    base = torch.randn(n, generator=g).half()
    xs = [torch.randn(n, generator=g).bfloat16(), torch.randn(n, generator=g), torch.randn(n, generator=g).half()]
    xs[1][5] = float("inf")
    got = cpu.gram(base, xs, 1, n)
    want = expected_gram(base, xs, 1, n)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize(
    "bad, with_base",
    [(bad, True) for bad in (None, "nan in base", "inf in a model", "inf - inf", "-inf in a row")]
    + [(bad, False) for bad in (None, "inf in a model", "inf - inf", "-inf in a row")],
)
def test_gram_proves_its_inputs_finite(bad, with_base):
    """Finite norms of every d_i (every row) record base and inputs as proven finite (the
    executor then skips scanning them); one NaN or inf anywhere records nothing."""
    from mergefast.kernels import cpu

    g = torch.Generator().manual_seed(3)
    rows, cols = 4, 700
    base = torch.randn(rows * cols, generator=g).bfloat16() if with_base else None
    xs = [torch.randn(rows * cols, generator=g).bfloat16() for _ in range(3)]
    if bad == "nan in base":
        base[9] = float("nan")
    elif bad == "inf in a model":
        xs[2][rows * cols - 1] = float("inf")
    elif bad == "inf - inf":
        xs[1][100] = float("inf")
        if base is not None:
            base[100] = float("inf")
    elif bad == "-inf in a row":
        xs[0][cols + 3] = float("-inf")
    with cpu.finite_inputs() as proven:
        cpu.gram(base, xs, rows, cols)
    everything = {t.data_ptr() for t in (*xs, *([base] if base is not None else []))}
    assert proven == (everything if bad is None else set())
