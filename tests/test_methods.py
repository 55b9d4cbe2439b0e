"""Tests of the torch reference merge methods against hand-computed values.

Every expected value is a literal worked out by hand (derivation in the comment next to
it); none is computed with the function under test or a re-implementation of it.
Semantics: docs/design.md "Numerics contract" and mergekit 0.1.5's documented behaviour
sections 2.0, 2.1, 2.2, 2.6 and 2.7.

bf16 facts used below: bf16 keeps 8 significant bits, so in [1, 2) the spacing is
2**-7 = 0.0078125 and in [0.5, 1) it is 2**-8 = 0.00390625; ties round to even.
"""

from __future__ import annotations

import pytest
import torch

from mergefast.methods import (
    ZeroWeightSumError,
    linear,
    magnitude_mask,
    passthrough,
    slerp,
    task_arithmetic,
    ties,
)
from mergefast.methods.numerics import keep_count

BF16, F32, F64 = torch.bfloat16, torch.float32, torch.float64


def T(values, dtype=F32):
    return torch.tensor(values, dtype=dtype)


def assert_exact(actual: torch.Tensor, expected, dtype=F32):
    """Same dtype, same shape, bit-identical values."""
    expected = T(expected, dtype)
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    assert torch.equal(actual, expected), f"{actual.tolist()} != {expected.tolist()}"


def assert_close(actual: torch.Tensor, expected, dtype=F32, rtol=1e-6, atol=1e-7):
    expected = T(expected, F64)
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.to(F64), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- linear

A3 = [1.0, 2.0, 3.0]
B3 = [3.0, 6.0, 9.0]


@pytest.mark.parametrize(
    "weights, normalize, expected",
    [
        # 1*a + 3*b = [1+9, 2+18, 3+27] = [10, 20, 30]; / (1+3) = [2.5, 5, 7.5]
        ([1.0, 3.0], True, [2.5, 5.0, 7.5]),
        ([1.0, 3.0], False, [10.0, 20.0, 30.0]),
        # 0.5*a + 0.5*b = [2, 4, 6]; weights already sum to 1
        ([0.5, 0.5], True, [2.0, 4.0, 6.0]),
        # unnormalised weights need not sum to 1: 0.5*a + 0.25*b = [1.25, 2.5, 3.75]
        ([0.5, 0.25], False, [1.25, 2.5, 3.75]),
        # negative weight: 5*a - b = [5-3, 10-6, 15-9] = [2, 4, 6]; / (5-1) = [0.5, 1, 1.5]
        ([5.0, -1.0], True, [0.5, 1.0, 1.5]),
        ([5.0, -1.0], False, [2.0, 4.0, 6.0]),
        # both negative: (-1*a - 1*b) / -2 = [4, 8, 12] / 2 = [2, 4, 6]
        ([-1.0, -1.0], True, [2.0, 4.0, 6.0]),
    ],
)
def test_linear_weighted_sum(weights, normalize, expected):
    out = linear([T(A3), T(B3)], weights, normalize=normalize)
    assert_exact(out, expected)


def test_linear_default_is_normalize():
    # (1*a + 3*b) / 4, as in the first case above
    assert_exact(linear([T(A3), T(B3)], [1.0, 3.0]), [2.5, 5.0, 7.5])


def test_linear_bf16_accumulates_in_f32_and_rounds_once():
    # 1 + 2**-9 + 2**-9 + 2**-9 = 1.005859375 exactly in f32. Rounded once to bf16:
    # the neighbours are 1.0 and 1.0078125; 0.005859375 > half a step (0.00390625)
    # -> 1.0078125. Rounding every step in bf16 would give 1 + 2**-9 -> 1.0 three times,
    # i.e. 1.0.
    # Second element: 1 + 2**-8 + 2**-8 = 1.0078125 (exact in bf16); step-wise,
    # 1 + 2**-8 is a tie that rounds to even (1.0), twice -> 1.0.
    xs = [T([1.0, 1.0], BF16)] + [T([2**-9, 2**-8], BF16)] * 2 + [T([2**-9, 0.0], BF16)]
    out = linear(xs, [1.0, 1.0, 1.0, 1.0], normalize=False)
    assert_exact(out, [1.0078125, 1.0078125], BF16)


def test_linear_bf16_normalized_rounds_once():
    # weights 0.5, 0.25, 0.25 (sum 1): 0.5*1 + 0.25*2**-7 + 0.25*2**-7 = 0.5 + 2**-8
    # = 0.50390625, exact in bf16 (spacing in [0.5, 1) is 2**-8). Step-wise in bf16,
    # 0.5 + 2**-9 is a tie that rounds to even (0.5), twice -> 0.5.
    xs = [T([1.0], BF16), T([2**-7], BF16), T([2**-7], BF16)]
    assert_exact(linear(xs, [0.5, 0.25, 0.25]), [0.50390625], BF16)


def test_linear_out_dtype_f32_from_bf16_inputs_is_unrounded():
    # 1 + 3 * 2**-9 = 1.005859375, exact in f32: no bf16 rounding anywhere.
    xs = [T([1.0], BF16)] + [T([2**-9], BF16)] * 3
    out = linear(xs, [1.0] * 4, normalize=False, out_dtype=F32)
    assert_exact(out, [1.005859375], F32)


def test_linear_out_dtype_bf16_from_f32_inputs():
    # 1 + (2**-8 + 2**-10) = 1.0048828125 in f32; nearest bf16 is 1.0078125
    # (distance 0.0029) rather than 1.0 (distance 0.0049).
    out = linear([T([1.0]), T([2**-8 + 2**-10])], [1.0, 1.0], normalize=False, out_dtype=BF16)
    assert_exact(out, [1.0078125], BF16)


def test_linear_promotes_bf16_and_f32_to_f32():
    # [1, 3] + [2**-10, 0.5] = [1.0009765625, 3.5]; the result is f32 (promoted), so
    # 1 + 2**-10 survives (in bf16 it would round to 1.0).
    out = linear([T([1.0, 3.0], BF16), T([2**-10, 0.5], F32)], [1.0, 1.0], normalize=False)
    assert_exact(out, [1.0009765625, 3.5], F32)


def test_linear_f64_inputs_stay_f64():
    # 0.1 + 0.2 in f64 is 0.30000000000000004 (the classic double result), which f32
    # accumulation could not produce.
    out = linear([T([0.1], F64), T([0.2], F64)], [1.0, 1.0], normalize=False)
    assert_exact(out, [0.30000000000000004], F64)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.5, 0.25, -0.75]])
def test_linear_zero_weight_sum_with_normalize_raises(weights):
    xs = [T(A3)] * len(weights)
    with pytest.raises(ZeroWeightSumError, match="sum to zero") as info:
        linear(xs, weights, normalize=True)
    assert isinstance(info.value, ValueError)


def test_linear_zero_weight_sum_without_normalize_is_fine():
    # a - b = [1-3, 2-6, 3-9] = [-2, -4, -6]
    assert_exact(linear([T(A3), T(B3)], [1.0, -1.0], normalize=False), [-2.0, -4.0, -6.0])


def test_linear_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        linear([T(A3), T(B3)], [1.0])
    with pytest.raises(ValueError):
        linear([T(A3), T([1.0, 2.0])], [1.0, 1.0])


# --------------------------------------------------------------------------- slerp

SQRT1_2 = 0.7071067811865476  # sin(pi/4) = sqrt(2)/2


@pytest.mark.parametrize("t, expected", [(0.0, [1.0, 2.0, 0.0]), (1.0, [0.0, 1.0, 3.0])])
def test_slerp_endpoints(t, expected):
    # a, b not parallel (cos = 2/(sqrt5*sqrt10) ~ 0.28): at t=0, c0 = sin(theta)/sin(theta)
    # = 1 and c1 = sin(0)/sin(theta) = 0, so the result is a exactly; t=1 mirrors it.
    out = slerp(T([1.0, 2.0, 0.0]), T([0.0, 1.0, 3.0]), t)
    assert_exact(out, expected)


def test_slerp_orthogonal_unit_vectors_midpoint():
    # dot = 0 -> theta = pi/2, c0 = c1 = sin(pi/4) / sin(pi/2) = sqrt(2)/2
    out = slerp(T([1.0, 0.0]), T([0.0, 1.0]), 0.5)
    assert_close(out, [SQRT1_2, SQRT1_2])


def test_slerp_coefficients_apply_to_raw_tensors():
    # Orthogonal but norms 3 and 0.5: the angle uses the normalised vectors, the
    # coefficients (both sqrt(2)/2) multiply the raw ones: [3*0.70710678, 0.5*0.70710678].
    out = slerp(T([3.0, 0.0]), T([0.0, 0.5]), 0.5)
    assert_close(out, [3 * SQRT1_2, 0.5 * SQRT1_2])


def test_slerp_orthogonal_third():
    # theta = pi/2, t = 1/3: c0 = sin(pi/3) = sqrt(3)/2 = 0.8660254, c1 = sin(pi/6) = 0.5.
    # a = [2, 0, 0], b = [0, 0, 4] -> [2*0.8660254, 0, 4*0.5] = [1.7320508, 0, 2]
    out = slerp(T([2.0, 0.0, 0.0]), T([0.0, 0.0, 4.0]), 1.0 / 3.0)
    assert_close(out, [1.7320508075688772, 0.0, 2.0])


def test_slerp_3_4_5_triangle():
    # a = [1, 0], b = [3, 4] (norm 5): cos = 3/5, sin(theta) = 4/5. At t = 0.5,
    # c0 = c1 = sin(theta/2)/sin(theta) = sqrt((1 - 0.6)/2) / 0.8 = (1/sqrt5)/0.8 = sqrt5/4.
    # Result = sqrt5/4 * ([1, 0] + [3, 4]) = [sqrt5, sqrt5] = [2.2360680, 2.2360680].
    out = slerp(T([1.0, 0.0]), T([3.0, 4.0]), 0.5)
    assert_close(out, [2.23606797749979, 2.23606797749979])


def test_slerp_near_parallel_falls_back_to_lerp_exactly():
    # a = [1, 0], b = [2, 2**-5]: cos = 2/sqrt(4 + 2**-10) = 1/sqrt(1 + 2**-12) = 0.99988
    # > 0.9995 -> lerp: 0.75*[1, 0] + 0.25*[2, 0.03125] = [1.25, 0.0078125], all exact.
    # (True slerp would give c0 = sin(0.75 theta)/sin(theta) ~ 0.750013, not 0.75.)
    out = slerp(T([1.0, 0.0]), T([2.0, 2**-5]), 0.25)
    assert_exact(out, [1.25, 0.0078125])


def test_slerp_just_below_parallel_threshold_is_spherical():
    # a = [1, 0], b = [1, 0.05]: cos = 1/sqrt(1.0025) = 0.9987523 < 0.9995 -> slerp.
    # At t = 0.5 both coefficients are sin(theta/2)/sin(theta) = 1/(2 cos(theta/2))
    # = 1/sqrt(2 (1 + cos)) = 0.50015603, so the result is 0.50015603 * [2, 0.05]
    # = [1.00031206, 0.02500780] (lerp would give [1.0, 0.025]).
    out = slerp(T([1.0, 0.0]), T([1.0, 0.05]), 0.5)
    assert_close(out, [1.0003120612931602, 0.025007801532329007], rtol=2e-6)


def test_slerp_antiparallel_falls_back_to_lerp():
    # b = -2a -> cos = -1, |cos| > 0.9995 -> lerp: 0.75*[1, 2] + 0.25*[-2, -4] = [0.25, 0.5]
    out = slerp(T([1.0, 2.0]), T([-2.0, -4.0]), 0.25)
    assert_exact(out, [0.25, 0.5])


def test_slerp_zero_norm_input_is_not_normalised():
    # a = 0 (norm 0 <= 1e-8) stays 0, no NaN; dot = 0 -> theta = pi/2,
    # c1 = sin(pi/4)/1 = sqrt(2)/2: result = 0.70710678 * [0, 3, 4] = [0, 2.1213203, 2.8284271]
    out = slerp(T([0.0, 0.0, 0.0]), T([0.0, 3.0, 4.0]), 0.5)
    assert_close(out, [0.0, 3 * SQRT1_2, 4 * SQRT1_2])


def test_slerp_tiny_norm_input_is_not_normalised():
    # a = [1e-9, 0] has norm 1e-9 <= 1e-8, so it is used raw: dot = 1e-9 * 1 ~ 0, i.e.
    # "orthogonal", c0 = c1 ~ sqrt(2)/2 -> [0.70710678 * (1 + 1e-9), 0] ~ [0.70710678, 0].
    # (Had a been normalised it would be parallel to b and lerp would give [0.5, 0].)
    out = slerp(T([1e-9, 0.0]), T([1.0, 0.0]), 0.5)
    assert_close(out, [SQRT1_2, 0.0])


def test_slerp_bf16_result_is_bf16():
    # sqrt(2)/2 = 0.70710678 in bf16: spacing 2**-8 in [0.5, 1); 0.70710678 * 256 = 181.02
    # -> 181/256 = 0.70703125.
    out = slerp(T([1.0, 0.0], BF16), T([0.0, 1.0], BF16), 0.5)
    assert_exact(out, [0.70703125, 0.70703125], BF16)


def test_slerp_out_dtype():
    out = slerp(T([1.0, 0.0], BF16), T([0.0, 1.0], BF16), 0.5, out_dtype=F32)
    assert_close(out, [SQRT1_2, SQRT1_2], F32)


def test_slerp_promotes_bf16_and_f32():
    # bf16 [1, 0] and f32 [-1 - 2**-10, 0] are antiparallel -> lerp at t = 0.5:
    # 0.5*1 + 0.5*(-1 - 2**-10) = -2**-11 = -0.00048828125, exact in f32 (the promoted
    # dtype); rounded to bf16 it would have stayed exact too, so the dtype is the check,
    # and -1 - 2**-10 itself is not representable in bf16 (it would be -1, giving 0).
    out = slerp(T([1.0, 0.0], BF16), T([-1.0 - 2**-10, 0.0], F32), 0.5)
    assert_exact(out, [-0.00048828125, 0.0], F32)


# ------------------------------------------------------------------ keep_count / magnitude


@pytest.mark.parametrize(
    "density, numel, k",
    [
        (0.5, 10, 5),
        (0.3, 10, 3),  # 0.3 * 10 = 3.0000000000000004 -> int 3
        (0.29, 100, 28),  # 0.29 * 100 = 28.999999999999996 -> int truncates to 28
        (0.0, 10, 0),
        (-0.5, 10, 0),
        (1.0, 10, 10),
        (1.5, 10, 10),
        (0.01, 10, 1),  # int(0.1) = 0, but a positive density keeps at least 1
        (1e-9, 6, 1),
        (0.5, 0, 0),
    ],
)
def test_keep_count(density, numel, k):
    assert keep_count(density, numel) == k


def test_magnitude_mask_keeps_exact_top_k():
    # |delta| ranks: 0.9 (idx 1), 0.8 (idx 6), 0.7 (idx 4), 0.6, ...; density 0.3 of 10 -> k = 3
    delta = T([0.1, -0.9, 0.5, 0.3, -0.7, 0.2, 0.8, -0.4, 0.6, 0.0])
    mask = magnitude_mask(delta, 0.3)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [False, True, False, False, True, False, True, False, False, False]


def test_magnitude_mask_ties_lowest_index_first():
    # |delta| = [1, 3, 2, 2, 2, 0.5], k = int(0.5 * 6) = 3: 3 (idx 1), then the three 2s
    # at idx 2, 3, 4 tie for two places -> idx 2 and 3.
    delta = T([1.0, -3.0, 2.0, -2.0, 2.0, -0.5])
    assert magnitude_mask(delta, 0.5).tolist() == [False, True, True, True, False, False]


@pytest.mark.parametrize(
    "density, expected",
    [
        (0.0, [False] * 6),
        (-1.0, [False] * 6),
        (1.0, [True] * 6),
        (2.0, [True] * 6),
        # k = max(1, int(0.01 * 6)) = 1: the largest |delta| (3 at idx 1)
        (0.01, [False, True, False, False, False, False]),
    ],
)
def test_magnitude_mask_density_edges(density, expected):
    delta = T([1.0, -3.0, 2.0, -2.0, 2.0, -0.5])
    assert magnitude_mask(delta, density).tolist() == expected


def test_magnitude_mask_2d_uses_flat_row_major_order():
    # [[1, 4, -4], [4, 0, 4]]: k = int(0.4 * 6) = 2; |4| sits at flat (row-major) indices
    # 1, 2, 3, 5 -> keep flat 1 and 2, i.e. (0, 1) and (0, 2). Column-major order would
    # pick (1, 0) and (0, 1) instead.
    delta = T([[1.0, 4.0, -4.0], [4.0, 0.0, 4.0]])
    mask = magnitude_mask(delta, 0.4)
    assert mask.shape == (2, 3)
    assert mask.tolist() == [[False, True, True], [False, False, False]]


# ------------------------------------------------------------------ task_arithmetic

TA_BASE = [1.0, 1.0, 1.0, 1.0]
TA_X1 = [2.0, 0.0, 1.0, 3.0]  # delta [1, -1, 0, 2]
TA_X2 = [1.0, 3.0, 0.0, 1.0]  # delta [0, 2, -1, 0]


@pytest.mark.parametrize(
    "weights, normalize, lambda_, expected",
    [
        # 0.5*[1,-1,0,2] + 1.5*[0,2,-1,0] = [0.5, 2.5, -1.5, 1]; + base
        ([0.5, 1.5], False, 1.0, [1.5, 3.5, -0.5, 2.0]),
        # divided by sum w = 2: [0.25, 1.25, -0.75, 0.5]; + base
        ([0.5, 1.5], True, 1.0, [1.25, 2.25, 0.25, 1.5]),
        # lambda 2 on the unnormalised mix: [1, 5, -3, 2]; + base
        ([0.5, 1.5], False, 2.0, [2.0, 6.0, -2.0, 3.0]),
        # lambda 2 after dividing by 2: [0.5, 2.5, -1.5, 1]; + base
        ([0.5, 1.5], True, 2.0, [1.5, 3.5, -0.5, 2.0]),
        # sum w = 0 < 1e-8 -> divisor 1: [1,-1,0,2] - [0,2,-1,0] = [1, -3, 1, 2]; + base
        ([1.0, -1.0], True, 1.0, [2.0, -2.0, 2.0, 3.0]),
        ([1.0, -1.0], False, 1.0, [2.0, -2.0, 2.0, 3.0]),
        # negative weight, sum w = -1: -1*[1,-1,0,2] + 0*... = [-1, 1, 0, -2];
        # normalised / -1 = [1, -1, 0, 2]; + base
        ([-1.0, 0.0], True, 1.0, [2.0, 0.0, 1.0, 3.0]),
    ],
)
def test_task_arithmetic(weights, normalize, lambda_, expected):
    out = task_arithmetic(T(TA_BASE), [T(TA_X1), T(TA_X2)], weights, normalize=normalize, lambda_=lambda_)
    assert_exact(out, expected)


def test_task_arithmetic_default_is_unnormalised():
    out = task_arithmetic(T(TA_BASE), [T(TA_X1), T(TA_X2)], [0.5, 1.5])
    assert_exact(out, [1.5, 3.5, -0.5, 2.0])


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_task_arithmetic_without_models_returns_base(dtype):
    base = T([1.5, -2.0, 0.25], dtype)
    assert_exact(task_arithmetic(base, [], []), [1.5, -2.0, 0.25], dtype)
    assert_exact(ties(base, [], [], []), [1.5, -2.0, 0.25], dtype)


def test_task_arithmetic_bf16_rounds_once():
    # deltas 2**-7 each (exact: 1.0078125 - 1); weighted 0.25 -> 2**-9 each; three of
    # them sum to 3 * 2**-9 = 0.005859375; base + that = 1.005859375 rounds once to
    # 1.0078125 in bf16. Step-wise bf16 (1 + 2**-9 -> 1.0, three times) would give 1.0.
    base = T([1.0], BF16)
    xs = [T([1.0078125], BF16)] * 3
    assert_exact(task_arithmetic(base, xs, [0.25] * 3), [1.0078125], BF16)
    assert_exact(task_arithmetic(base, xs, [0.25] * 3, out_dtype=F32), [1.005859375], F32)


def test_task_arithmetic_promotes_bf16_base_and_f32_model():
    # delta = (1 + 2**-9) - 1 = 2**-9 in f32; result 1.001953125 is f32 (promoted).
    out = task_arithmetic(T([1.0], BF16), [T([1.0 + 2**-9], F32)], [1.0])
    assert_exact(out, [1.001953125], F32)


# ------------------------------------------------------------------ ties

# Worked example: base + deltas d_i, weights w = [1, 0.5, 2], densities [0.5, 0.5, 1.0].
#
#   d1 = [ 3, -1,  2,   0,  4,  1  ]  k = int(0.5*6) = 3: |d1| top 3 = idx 4, 0, 2
#   t1 = [ 3,  0,  2,   0,  4,  0  ]
#   d2 = [-2,  2, -4,   0,  2,  2  ]  k = 3: idx 2 (|4|), then |2| ties at 0, 1, 4, 5
#   t2 = [-2,  2, -4,   0,  0,  0  ]      -> lowest flat index first: idx 0, 1
#   d3 = [-1, -3,  0.5, 0, -1,  0.5]  density 1: kept whole
#
#   weighted (after trimming): wd1 = [ 3,  0,  2, 0,  4, 0]
#                              wd2 = [-1,  1, -2, 0,  0, 0]
#                              wd3 = [-2, -6,  1, 0, -2, 1]
#   S = sum                        = [ 0, -5,  1, 0,  2, 1]
#   elected sign                   = [ +,  -,  +, +,  +, +]   (S = 0 counts as +)
#
#   e0: S = 0 -> +; only wd1 = 3 agrees           mixed 3,  divisor 1
#   e1: -; wd3 = -6 agrees (wd1 trimmed to 0)     mixed -6, divisor 2
#   e2: +; wd1 = 2, wd3 = 1 agree                 mixed 3,  divisor 1 + 2 = 3
#       (the unweighted sum 2 - 4 + 0.5 < 0 would elect -: the election is weighted)
#   e3: all deltas 0, none agrees                 mixed 0,  divisor 0 -> 1
#   e4: +; wd1 = 4 (wd3 = -2 disagrees; d2 = 2 lost the tie)   mixed 4, divisor 1
#   e5: +; wd3 = 1 (d1 = 1, d2 = 2 trimmed)       mixed 1,  divisor 2
#
#   mixed           = [3, -6, 3, 0, 4, 1  ]
#   mixed / divisor = [3, -3, 1, 0, 4, 0.5]
TIES_BASE = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
TIES_XS = [
    [4.0, 1.0, 5.0, 4.0, 9.0, 7.0],  # base + d1
    [-1.0, 4.0, -1.0, 4.0, 7.0, 8.0],  # base + d2
    [0.0, -1.0, 3.5, 4.0, 4.0, 6.5],  # base + d3
]
TIES_W = [1.0, 0.5, 2.0]
TIES_D = [0.5, 0.5, 1.0]


@pytest.mark.parametrize(
    "normalize, lambda_, expected",
    [
        (True, 1.0, [4.0, -1.0, 4.0, 4.0, 9.0, 6.5]),  # base + [3, -3, 1, 0, 4, 0.5]
        (False, 1.0, [4.0, -4.0, 6.0, 4.0, 9.0, 7.0]),  # base + [3, -6, 3, 0, 4, 1]
        (True, 0.5, [2.5, 0.5, 3.5, 4.0, 7.0, 6.25]),  # base + [1.5, -1.5, 0.5, 0, 2, 0.25]
        (False, 2.0, [7.0, -10.0, 9.0, 4.0, 13.0, 8.0]),  # base + [6, -12, 6, 0, 8, 2]
    ],
)
def test_ties_worked_example(normalize, lambda_, expected):
    out = ties(
        T(TIES_BASE),
        [T(x) for x in TIES_XS],
        TIES_W,
        TIES_D,
        normalize=normalize,
        lambda_=lambda_,
    )
    assert_exact(out, expected)


def test_ties_default_is_normalize():
    out = ties(T(TIES_BASE), [T(x) for x in TIES_XS], TIES_W, TIES_D)
    assert_exact(out, [4.0, -1.0, 4.0, 4.0, 9.0, 6.5])


def test_ties_equals_task_arithmetic_with_magnitude_and_sum():
    # Same worked example through the generic entry point (consistency of the wrapper).
    out = task_arithmetic(
        T(TIES_BASE),
        [T(x) for x in TIES_XS],
        TIES_W,
        densities=TIES_D,
        sparsify="magnitude",
        consensus="sum",
        normalize=True,
    )
    assert_exact(out, [4.0, -1.0, 4.0, 4.0, 9.0, 6.5])


@pytest.mark.parametrize(
    "normalize, expected",
    [
        # base 0, w = [1, -1], density 1:
        #   wdA = 1*[2, 1, -1] = [2, 1, -1];  wdB = -1*[-3, 2, -2] = [3, -2, 2]
        #   S = [5, -1, 1] -> signs [+, -, +]
        #   e0: both agree, mixed 5, divisor 1 + (-1) = 0 -> 1        -> 5
        #   e1: only wdB = -2 agrees, divisor -1                      -> -2 / -1 = 2
        #   e2: only wdB = 2 agrees, divisor -1                       -> 2 / -1 = -2
        (True, [5.0, 2.0, -2.0]),
        (False, [5.0, -2.0, 2.0]),
    ],
)
def test_ties_negative_weights(normalize, expected):
    out = ties(
        T([0.0, 0.0, 0.0]),
        [T([2.0, 1.0, -1.0]), T([-3.0, 2.0, -2.0])],
        [1.0, -1.0],
        [1.0, 1.0],
        normalize=normalize,
    )
    assert_exact(out, expected)


def test_ties_density_zero_everywhere_returns_base():
    # every delta trimmed to 0 -> nothing agrees, mixed 0, divisor 1 -> base
    out = ties(T(TIES_BASE), [T(x) for x in TIES_XS], TIES_W, [0.0, 0.0, 0.0])
    assert_exact(out, TIES_BASE)


def test_ties_tiny_density_keeps_one_element_per_model():
    # k = max(1, int(0.01 * 6)) = 1 per model:
    #   d1 keeps idx 4 (|4|); d2 keeps idx 2 (|-4|); d3 keeps idx 1 (|-3|)
    #   weighted: wd1[4] = 4, wd2[2] = -2, wd3[1] = -6; one model per element, each agrees
    #   with itself: mixed/divisor = [0, -6/2, -2/0.5, 0, 4/1, 0] = [0, -3, -4, 0, 4, 0]
    out = ties(T(TIES_BASE), [T(x) for x in TIES_XS], TIES_W, [0.01, 0.01, 0.01])
    assert_exact(out, [1.0, -1.0, -1.0, 4.0, 9.0, 6.0])


def test_ties_f64_divisor_uses_f64_weights():
    # one model, delta 1, w = 0.1: mixed = 0.1, divisor = 0.1 -> exactly 1.0 in f64
    # (0.1 * 1.0 / 0.1 == 1.0 in IEEE double); base 0 + 1 = 1.
    out = ties(T([0.0], F64), [T([1.0], F64)], [0.1], [1.0])
    assert_exact(out, [1.0], F64)


def test_task_arithmetic_f64_divisor_uses_f64_weights():
    # Same computation without consensus: divisor = sum w = 0.1 in f64 -> exactly 1.0.
    out = task_arithmetic(T([0.0], F64), [T([1.0], F64)], [0.1], normalize=True)
    assert_exact(out, [1.0], F64)


def test_task_arithmetic_rejects_unknown_options():
    with pytest.raises(ValueError):
        task_arithmetic(T([0.0]), [T([1.0])], [1.0], sparsify="bogus")
    with pytest.raises(ValueError):
        task_arithmetic(T([0.0]), [T([1.0])], [1.0], consensus="count")


# ------------------------------------------------------------------ passthrough


@pytest.mark.parametrize("scale", [None, 1, 1.0])
@pytest.mark.parametrize("dtype", [BF16, F32])
def test_passthrough_identity(scale, dtype):
    out = passthrough(T([1.0078125, -3.0, 0.5], dtype), scale)
    assert_exact(out, [1.0078125, -3.0, 0.5], dtype)


@pytest.mark.parametrize("dtype", [BF16, F32])
def test_passthrough_scale(dtype):
    # 0.5 * [2, -3, 1.0078125] = [1, -1.5, 0.50390625] (exact in bf16 and f32)
    assert_exact(passthrough(T([2.0, -3.0, 1.0078125], dtype), 0.5), [1.0, -1.5, 0.50390625], dtype)


def test_passthrough_scale_zero():
    assert_exact(passthrough(T([2.0, -3.0], BF16), 0), [0.0, 0.0], BF16)


def test_passthrough_out_dtype():
    # f32 1.0048828125 (= 1 + 2**-8 + 2**-10) -> nearest bf16 1.0078125
    assert_exact(passthrough(T([1.0048828125]), out_dtype=BF16), [1.0078125], BF16)
    # bf16 -> f32 is exact
    assert_exact(passthrough(T([1.0078125], BF16), out_dtype=F32), [1.0078125], F32)
    # scale applied in f32, rounded once: 1.0078125 * 0.75 = 0.755859375 exact in f32
    assert_exact(passthrough(T([1.0078125], BF16), 0.75, out_dtype=F32), [0.755859375], F32)
