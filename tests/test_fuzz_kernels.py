"""Fuzzing the C++ kernels against the references: random shapes, dtypes, model counts,
parameters and special values (NaN, inf, zero deltas, ties), for the methods whose kernels do
the reference's float32 operations in its order. Each case is bit-identical to the reference
(tests/kernel_cases.py's rule), or both raise the same error type."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from kernel_cases import (
    _ARCEE_MODULE,
    _SCE_MODULE,
    _TA_MODULE,
    _energy_weights_f64,
    _l1_rescale_f64,
    assert_della_keeps,
    assert_same,
)

from mergefast import kernels, methods

# MERGEFAST_FUZZ_BACKEND=triton fuzzes the Triton kernels instead, interpreted (the inputs are
# CPU tensors: TRITON_INTERPRET=1, which tests/conftest.py sets without a GPU); about 0.05 s an
# example, for a hunt of a thousand
BACKEND = os.environ.get("MERGEFAST_FUZZ_BACKEND", "cpu-ext")
pytestmark = [
    pytest.mark.slow,  # hypothesis runs the test on many examples
    pytest.mark.skipif(BACKEND == "cpu-ext" and kernels.backend("cpu") != "cpu-ext", reason="no C++ kernel library"),
]

FUZZ = fuzz_settings(200)  # MERGEFAST_FUZZ_EXAMPLES=5000 hunts
# the last two span several 2048-element blocks (and both threads)
SHAPES = [(1,), (2,), (7,), (33,), (64,), (5, 17), (2, 300), (3, 4, 9), (1, 1), (3, 2500), (9001,)]
# MERGEFAST_FUZZ_LARGE=1 (with a hunt's MERGEFAST_FUZZ_EXAMPLES): shapes that take the paths only
# large tensors take instead: SCE's window from 2^20 elements, TIES' and breadcrumbs' one read
# from 2^20, DELLA's rank bounds up to 6144 columns of bf16 and the full ranks past them; each
# with a short last block. ~1 s an example (the references); the twenty-sixth session's hunt of
# these paths (benchmarks/RESULTS.md) found no difference.
if os.environ.get("MERGEFAST_FUZZ_LARGE") == "1":
    SHAPES = [((1 << 20) + 7,), ((1 << 21) + 4099,), (745, 2816), (3, 6144), (3, 6145), (2, 11008)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OUT_DTYPES = [None, None, torch.float32, torch.bfloat16, torch.float16, torch.float64]
SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0]
FRACTIONS = st.sampled_from([0.0, 1.0, 0.5, 0.3, 0.999, 0.01])
WEIGHTS = st.sampled_from([1.0, 0.5, -0.7, 0.0, 2.0])
SPARSIFY = {"magnitude": "magnitude", "breadcrumbs": "magnitude_outliers", "dare": "random", "della": "della"}


@pytest.fixture(scope="module", autouse=True)
def _backend():
    """The C++ kernels for every call (a kernel failure raises instead of falling back), and
    the references' norms and energies summed in float64 as the kernels sum them (the kernel
    suite's bit-identical variants of the references)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MERGEFAST_BACKEND", BACKEND)
        m.setattr(_TA_MODULE, "l1_rescale", _l1_rescale_f64)
        m.setattr(_SCE_MODULE, "energy_weights", _energy_weights_f64)
        yield


@st.composite
def inputs(draw, shared: bool = False):
    """base and k fine-tunes: deltas at one of several scales, on a grid (many ties) or not,
    some equal to the base and some special values; with `shared`, every delta has a common
    part as well (fine-tunes of one base: positive cosines)."""
    shape = draw(st.sampled_from(SHAPES))
    dtype = draw(st.sampled_from(DTYPES))
    k = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-4, 0.02, 1.0]))
    base = torch.randn(shape, generator=g) * 0.05
    common = torch.randn(shape, generator=g) * scale if shared else torch.zeros(shape)
    xs = []
    for _ in range(k):
        delta = torch.randn(shape, generator=g) * scale + common
        if draw(st.booleans()):
            delta = torch.round(delta / scale * 4) * scale / 4  # a coarse grid: many ties
        delta[torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3]))] = 0.0
        xs.append(base + delta)
    tensors = [base] + xs
    for _ in range(draw(st.integers(0, 3))):
        which = draw(st.integers(0, k))
        flat = tensors[which].view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    mixed = draw(st.booleans()) and draw(st.integers(0, 3)) == 0  # a quarter: one model in another dtype
    dtypes = [dtype] * (k + 1)
    if mixed:
        dtypes[draw(st.integers(0, k))] = draw(st.sampled_from(DTYPES))
    return tensors[0].to(dtypes[0]), [x.to(t) for x, t in zip(tensors[1:], dtypes[1:])]


@st.composite
def calls(draw):
    """(method name, keyword arguments) of one task-arithmetic-family call."""
    family = draw(st.sampled_from(["ties", "magnitude", "breadcrumbs", "dare", "della"]))
    n = 4  # at most this many models; the call takes the first k entries
    kw = dict(
        densities=[draw(FRACTIONS) for _ in range(n)],
        normalize=draw(st.booleans()),
        lambda_=draw(st.sampled_from([1.0, 0.5])),
        out_dtype=draw(st.sampled_from(OUT_DTYPES)),
    )
    if family == "ties":
        return "ties", kw
    kw["consensus"] = draw(st.sampled_from([None, "sum"]))
    kw["rescale"] = draw(st.booleans())
    kw["sparsify"] = SPARSIFY[family]
    if family == "breadcrumbs":
        kw["gammas"] = [draw(st.sampled_from([0.0, 0.01, 0.2])) for _ in range(n)]
    if family in ("dare", "della"):
        kw["seed"] = draw(st.integers(0, 5))
        kw["tensor_name"] = "model.layers.0.mlp.up_proj.weight"
    if family == "della":
        kw["epsilons"] = [draw(st.sampled_from([0.0, 0.05, 0.2])) for _ in range(n)]
    return "task_arithmetic", kw


def outcome(fn):
    """fn()'s result, or the type of the exception it raised."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the types are compared below
        return type(e)


def assert_same_outcome(got, want):
    if isinstance(want, type) or isinstance(got, type):
        assert got is want, (got, want)
    else:
        assert_same(got, want, exact=True)


def _k(kw: dict, k: int) -> dict:
    return {key: (value[:k] if isinstance(value, list) else value) for key, value in kw.items()}


@FUZZ
@given(data=inputs(), call=calls(), weights=st.lists(WEIGHTS, min_size=4, max_size=4))
def test_task_arithmetic_family(data, call, weights):
    base, xs = data
    name, kw = call
    kw, w = _k(kw, len(xs)), weights[: len(xs)]
    if name == "ties":
        kw = {key: kw[key] for key in ("normalize", "lambda_", "densities", "out_dtype")}
        got = outcome(lambda: kernels.ties(base, xs, w, **kw))
        want = outcome(lambda: methods.ties(base, xs, w, **kw))
    else:
        got = outcome(lambda: kernels.task_arithmetic(base, xs, w, **kw))
        want = outcome(lambda: methods.task_arithmetic(base, xs, w, **kw))
    assert_same_outcome(got, want)


@FUZZ
@given(
    data=inputs(),
    weights=st.lists(WEIGHTS, min_size=4, max_size=4),
    normalize=st.booleans(),
    ram=st.tuples(st.booleans(), st.sampled_from([1e-5, 0.01, 0.0])),
    t=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
)
def test_elementwise_methods(data, weights, normalize, ram, t):
    base, xs = data
    w = weights[: len(xs)]
    assert_same_outcome(
        outcome(lambda: kernels.linear(xs, w, normalize=normalize)),
        outcome(lambda: methods.linear(xs, w, normalize=normalize)),
    )
    topk = t  # one more fraction: SCE's select_topk
    assert_same_outcome(
        outcome(lambda: kernels.sce(base, xs, select_topk=topk)),
        outcome(lambda: methods.sce(base, xs, select_topk=topk)),
    )
    plus, epsilon = ram
    assert_same_outcome(
        outcome(lambda: kernels.ram(base, xs, plus=plus, epsilon=epsilon)),
        outcome(lambda: methods.ram(base, xs, plus=plus, epsilon=epsilon)),
    )
    assert_same_outcome(
        outcome(lambda: kernels.nearswap(base, xs[0], t)), outcome(lambda: methods.nearswap(base, xs[0], t))
    )


@FUZZ
@given(data=inputs(), out_dtype=st.sampled_from(OUT_DTYPES))
def test_arcee_fusion(data, out_dtype):
    """arcee_fusion: the kernels' output against the reference's given the kernels' own row KL
    divergences (summed in float64, the reference's in float32: tests/kernel_cases.py's
    `_arcee` says why), bit for bit; where no kernel ran (a dtype the kernels leave to the
    reference), the reference's own."""
    base, xs = data
    impl, kls = kernels._impl(BACKEND), []
    select = impl.arcee_select

    def spy(*args):  # the kernels' KL, from the call itself
        result = select(*args)
        kls.append(result[0].cpu())
        return result

    with pytest.MonkeyPatch.context() as m:
        m.setattr(impl, "arcee_select", spy)
        got = outcome(lambda: kernels.arcee_fusion(base, xs[0], out_dtype=out_dtype))
    with pytest.MonkeyPatch.context() as m:
        if kls:
            m.setattr(_ARCEE_MODULE, "kl_rows", lambda xr, br: kls[0].to(xr.dtype)[:, None].expand_as(xr))
        want = outcome(lambda: methods.arcee_fusion(base, xs[0], out_dtype=out_dtype))
    assert_same_outcome(got, want)


def assert_close_outcome(got, want, want64, nudged=()):
    """NaN and inf where the reference has them, and the other elements within a few units of
    the float32 reference's own error against the float64 one (the kernels reduce in another
    order). The kernel suite holds designed cases to one unit (tests/kernel_cases.py); random
    ones near a degenerate configuration (nearly opposite task vectors, Model Stock's t far
    outside [0, 1]) move float32 results by several units of their terms (t = -39: a kernel
    1.3 units of t * mean from the float64 result, the float32 reference 0.5 by chance), so the
    reference's error is also taken on `nudged` inputs (`nudge`: the float32 reference's results
    there, its error wherever they are finite), and this test looks for what is wrong by more
    than that: NaN, a wrong branch, a wrong coefficient."""
    if isinstance(want, type) or isinstance(got, type):
        assert got is want, (got, want)
        return
    k, r = got.double(), want.double()
    r64 = r if isinstance(want64, type) else want64.double()  # float64 alone raised: no bound from it
    error = (r - r64).abs()
    for other in nudged:
        if not isinstance(other, type):
            off = (other.double() - r64).abs()
            error = torch.maximum(error, torch.where(torch.isfinite(off), off, 0.0))
    finite = torch.isfinite(r)
    assert_same(got[~finite], want[~finite], exact=True)
    k, r, r64, error = k[finite], r[finite], r64[finite], error[finite]
    if k.numel():
        unit = torch.finfo(want.dtype).eps * (r.abs() + r.abs().max())
        bad = (k - r64).abs() > 2 * error + 4 * unit
        assert not bool(bad.any()), f"{int(bad.sum())} of {k.numel()}: max |kernel - ref64| {(k - r64).abs().max():.3g}"


BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def nudge(tensors: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """`tensors` with each finite nonzero element moved one unit in the last place of its dtype
    up, down or not at all (a pattern of `seed`): inputs as close to these as they can be."""
    g = torch.Generator().manual_seed(seed)
    moved = []
    for t in tensors:
        bits = t.view(BITS[t.dtype])
        step = torch.randint(-1, 2, t.shape, generator=g).to(bits.dtype)
        near = (bits + step).view(t.dtype)
        moved.append(torch.where(torch.isfinite(t) & (t != 0) & torch.isfinite(near), near, t))
    return moved


@FUZZ
@given(
    data=inputs(shared=True),
    weights=st.lists(WEIGHTS, min_size=4, max_size=4),
    filter_wise=st.booleans(),
    view=st.sampled_from([(True, False), (False, False), (False, True)]),
)
def test_spherical_methods(data, weights, filter_wise, view):
    """SLERP, Model Stock, karcher, multislerp and nuslerp (`view`: its flatten and row_wise;
    weights[0] is SLERP's t): the tolerance rule against the float64 reference. The deltas
    share a part: with a negative mean cosine Model Stock's t leaves [0, 1] (t = -2.7 at cos
    -0.22, 4 models), and t * mean + (1 - t) * base cancels, so the float32 reference's own
    error varies by ulps from case to case and the rule's bound with it. Found here: karcher's
    and multislerp's coefficients grow where an input lies near the antipode of the Karcher
    mean or the weighted mean direction nearly vanishes (those tensors run the reference:
    methods/gram_scalars.py's `cancels`); nuslerp's float32 factors of nearly opposite task
    vectors were 30 ulps off (now float64: `nuslerp_factors`)."""
    base, xs = data
    w = weights[: len(xs)]
    b64, xs64 = base.double(), [x.double() for x in xs]
    near = [nudge([base, *xs], seed) for seed in (1, 2)]
    flatten, row_wise = view
    checks = {
        "slerp": lambda m, b, x: m.slerp(b, x[0], w[0]),
        "model_stock": lambda m, b, x: m.model_stock(b, x, filter_wise=filter_wise),
        "karcher": lambda m, b, x: m.karcher([b, *x]),
        "multislerp": lambda m, b, x: m.multislerp(x, w, b),
        "nuslerp": lambda m, b, x: (
            m.nuslerp(x[:2], w[:2], b, flatten=flatten, row_wise=row_wise)
            if len(x) >= 2
            else m.nuslerp([b, x[0]], [0.3, 0.7], flatten=flatten, row_wise=row_wise)
        ),
    }
    for call in checks.values():
        got = outcome(lambda call=call: call(kernels, base, xs))
        want = outcome(lambda call=call: call(methods, base, xs))
        want64 = outcome(lambda call=call: call(methods, b64, xs64))
        nudged = [outcome(lambda call=call, n=n: call(methods, n[0], n[1:])) for n in near]
        assert_close_outcome(got, want, want64, nudged)


@st.composite
def della_rows(draw):
    """Rows of deltas for DELLA's keep decisions (csrc/cpu/della_keep.h, della_rank.h): lengths
    around the rank bounds' limits (256; 6144 for bf16 deltas), magnitudes with many ties (bf16,
    a grid, a few distinct values, zeros), without (float32) or over a wide dynamic range, and
    special values."""
    cols = draw(st.one_of(st.sampled_from([256, 300, 1003, 1024, 2816, 6144, 6145, 7000]), st.integers(2, 3100)))
    rows = draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(rows, cols, generator=g) * draw(st.sampled_from([1e-4, 2e-3, 1.0]))
    kind = draw(st.sampled_from(["bf16", "float32", "grid", "few", "zeros", "wide"]))
    if kind == "bf16":
        x = x.bfloat16().float()
    elif kind == "grid":
        x = torch.round(x / x.abs().max() * draw(st.sampled_from([4, 30, 300])))
    elif kind == "few":
        x = torch.randint(-draw(st.integers(1, 60)), 61, (rows, cols), generator=g).float()
    elif kind == "zeros":
        x = torch.where(torch.rand(rows, cols, generator=g) < draw(st.sampled_from([0.1, 0.5, 0.95])), 0.0, x)
    elif kind == "wide":
        x = x * torch.exp(torch.randn(rows, cols, generator=g) * 10)
    for _ in range(draw(st.integers(0, 3))):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(SPECIALS + [1e30, 1e-40]))
    return x


@FUZZ
@given(
    x=della_rows(),
    density=st.floats(0.05, 0.95),
    share=st.sampled_from([0.0, 0.3, 0.999, -0.5, -0.999]),
    seed=st.integers(0, 5),
    bf16_base=st.sampled_from([None, 0, 8, 20]),
)
def test_della_keep_bits(x, density, share, seed, bf16_base):
    """The masks pass's keep bits are della_mask's: epsilon = share * the widest allowed (< 0:
    p falls with the rank). With bf16_base (a scale), base and model are bf16 tensors, as the
    CPU kernel takes the full ranks for long rows of such deltas; the base 2^-scale below 1
    gives them many significant bits (della_rank.h's radix sort) or few (its tie counting)."""
    from mergefast.kernels.della import keep_rule, stream_keys

    epsilon = share * min(density, 1 - density)
    cols = x.shape[-1]
    base = torch.zeros_like(x)
    if bf16_base is not None:
        g = torch.Generator().manual_seed(seed)
        base = (torch.randn(x.shape, generator=g) * 2.0**-bf16_base).bfloat16()
        x = (base.float() + x).bfloat16()
    delta = x.float() - base.float()
    pmin, span = keep_rule(density, epsilon, cols)
    impl = kernels._impl(BACKEND)
    out, _ = impl.della_masks(base, [x], stream_keys(seed, "t", 1), [pmin], [span], cols, torch.float32)
    want = _TA_MODULE.della_mask(delta, density, epsilon, seed=seed, tensor_name="t", model_index=0)
    assert_della_keeps(out, 0, delta, want)
