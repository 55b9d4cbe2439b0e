"""Kernel-vs-reference test cases shared by the C++ and Triton backends.

A backend's test module subclasses `KernelSuite` (setting DEVICE, BACKEND, EXACT and SHAPES)
and sets `pytest_generate_tests = generate`, so every case runs on that backend with
MERGEFAST_BACKEND forcing it (a kernel failure then raises instead of falling back).

Comparison rule (DESIGN.md): where the kernel does the reference's operations in the same
order (every op but SLERP's reduction; C++ and interpreted Triton) the results must be
bit-identical (EXACT). Otherwise the error against a float64 reference may be at most twice
the error of the same-dtype torch reference plus one unit in the last place of the output.
In both modes a NaN output must be NaN in the reference (any payload) and an infinity the same
infinity. Magnitude selection must keep exactly the reference's set, always.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mergefast import kernels, methods
from mergefast.methods.linear import ZeroWeightSumError
from mergefast.methods.multislerp import AntipodalError
from mergefast.methods.numerics import keep_count

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def generate(metafunc):
    """pytest_generate_tests for suites: `shape` from the class's SHAPES, `dtype` from its
    SUITE_DTYPES (default DTYPES)."""
    cls = metafunc.cls
    if cls is None:
        return
    if "shape" in metafunc.fixturenames:
        metafunc.parametrize("shape", cls.SHAPES, ids=[_shape_id(s) for s in cls.SHAPES])
    if "dtype" in metafunc.fixturenames:
        dtypes = getattr(cls, "SUITE_DTYPES", DTYPES)
        metafunc.parametrize("dtype", dtypes, ids=[DTYPE_IDS[d] for d in dtypes])


def _shape_id(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _ulp(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def assert_same(
    kernel_out: torch.Tensor, ref_out: torch.Tensor, *, exact: bool, ref64: torch.Tensor | None = None
) -> None:
    """Kernel result against the same-dtype reference (see the module docstring). NaN matches
    NaN (any payload) and an infinity only itself, in both modes; the tolerance applies to the
    elements where the reference is finite."""
    k = kernel_out.cpu()
    r = ref_out.cpu()
    assert k.dtype == r.dtype, (k.dtype, r.dtype)
    assert k.shape == r.shape, (k.shape, r.shape)
    if k.numel() == 0:
        return
    if exact:
        same = (k == r) | (torch.isnan(k) & torch.isnan(r))
        if not bool(same.all()):
            bad = (~same).nonzero()[:5].tolist()
            raise AssertionError(
                f"{int((~same).sum())} of {k.numel()} elements differ; first {bad}: "
                f"kernel {k[~same][:5].tolist()} vs reference {r[~same][:5].tolist()}"
            )
        return
    finite = torch.isfinite(r)
    assert_same(k[~finite], r[~finite], exact=True)  # NaN where the reference has NaN, the same inf
    kd, rd = k[finite].double(), r[finite].double()
    if kd.numel() == 0:
        return
    # one unit in the last place, at the element's and at the tensor's scale (an output
    # near zero can come from large inputs that cancel)
    unit = _ulp(k.dtype) * (rd.abs() + rd.abs().max())
    if ref64 is not None:
        exact64 = ref64.cpu().double()[finite]
        err_k = (kd - exact64).abs()
        err_r = (rd - exact64).abs()
        ok = err_k <= 2 * err_r + unit
    else:
        ok = (kd - rd).abs() <= 2 * unit
    if not bool(ok.all()):
        raise AssertionError(
            f"{int((~ok).sum())} of {kd.numel()} finite elements out of tolerance; "
            f"max |kernel - reference| = {(kd - rd).abs().max().item()}"
        )


def make_inputs(shape, dtype, k=3, *, seed=0, scale=0.05, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = [base + scale * torch.randn(shape, generator=g) for _ in range(k)]
    return base.to(dtype).to(device), [x.to(dtype).to(device) for x in xs]


def sampled_positions(n: int, m: int) -> torch.Tensor:
    """The elements the C++ selection samples from n to predict its windows
    (csrc/cpu/select/window.cpp): m strata of n // m elements, the one at offset
    splitmix64(GOLDEN * (q + 1)) % stride in stratum q."""
    from mergefast.methods.random import GOLDEN, MASK64, mix64_int

    stride = n // m
    return torch.tensor([q * stride + mix64_int((GOLDEN * (q + 1)) & MASK64) % stride for q in range(m)])


def tied_inputs(n, dtype, *, seed=0, levels=4, device="cpu"):
    """bf16/fp16-representable inputs whose deltas take only a few magnitudes: many ties at
    any threshold."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(n)
    steps = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0][: levels + 1])
    xs = []
    for _ in range(3):
        idx = torch.randint(0, len(steps), (n,), generator=g)
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        xs.append(base + sign * steps[idx])
    return base.to(dtype).to(device), [x.to(dtype).to(device) for x in xs]


# NaNs of several payloads and signs, quiet and signalling, per dtype (bit patterns)
NAN_BITS = {
    torch.float32: (0x7FC00000, 0x7FC00001, 0x7FFFFFFF, 0xFFC00000, 0x7F800001),
    torch.float16: (0x7E00, 0x7E01, 0x7FFF, 0xFE00, 0x7C01),
    torch.bfloat16: (0x7FC0, 0x7FC1, 0x7FFF, 0xFFC0, 0x7F81),
}
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def plant_nans(base, xs, *, share=0.2, seed=1):
    """Set a `share` of every model's elements (and a few of the base's) to NaNs of mixed
    payloads, and some to +-inf, in place (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    n, dtype = base.numel(), base.dtype
    bits = NAN_BITS[dtype]
    width = torch.iinfo(_INT_VIEW[dtype]).bits
    signed = [b - (1 << width) if b >= 1 << (width - 1) else b for b in bits]
    for t, part in [(x, share) for x in xs] + [(base, share / 20)]:
        at = (torch.rand(n, generator=g) < part).nonzero().flatten()
        pattern = torch.tensor(signed, dtype=_INT_VIEW[dtype])[torch.arange(len(at)) % len(bits)]
        t.view(-1).view(_INT_VIEW[dtype])[at] = pattern
        t.view(-1)[torch.randint(0, n, (8,), generator=g)] = float("inf")


def nan_inputs(n, dtype, *, device="cpu"):
    """tied_inputs with 20 % of every model's elements NaNs of mixed payloads (plant_nans):
    the thresholds of the lower densities fall among the NaNs, which rank equal (lowest flat
    index first) whatever their bits."""
    base, xs = tied_inputs(n, dtype)
    plant_nans(base, xs)
    return base.to(device), [x.to(device) for x in xs]


# the module (mergefast.methods.task_arithmetic is also the name of its function)
_TA_MODULE = importlib.import_module("mergefast.methods.task_arithmetic")
_SCE_MODULE = importlib.import_module("mergefast.methods.sce")
_ARCEE_MODULE = importlib.import_module("mergefast.methods.arcee_fusion")
_ARCEE_HOST = importlib.import_module("mergefast.kernels.arcee_fusion")


def della_keep_bits(out: torch.Tensor, shape, model: int) -> torch.Tensor:
    """Model `model`'s keep bits (bool, `shape`) from the 16-bit keep words that a DELLA masks
    pass leaves in the first 16 bits of each element of its output `out`."""
    words = out.cpu().view(-1).view(torch.int16)[:: out.element_size() // 2].view(shape)
    return ((words >> model) & 1).bool()


def assert_della_keeps(out: torch.Tensor, model: int, delta: torch.Tensor, want: torch.Tensor, *context) -> None:
    """Model `model`'s keep bits in `out` are the reference's mask `want` wherever `delta` is not
    zero. A zero delta's bit cannot change the output (kept, it adds 0, elects no sign and adds
    nothing to the norms), so the kernels may drop zeros without ranking them."""
    nonzero = delta.cpu() != 0
    assert torch.equal(della_keep_bits(out, delta.shape, model)[nonzero], want.cpu()[nonzero]), context


def _della_call(densities, epsilons, consensus, rescale, seed, **kw) -> dict:
    """task_arithmetic's keywords for one DELLA call of the suite."""
    return dict(
        densities=densities,
        epsilons=epsilons,
        sparsify="della",
        consensus=consensus,
        rescale=rescale,
        seed=seed,
        tensor_name="model.layers.0.mlp.down_proj.weight",
        **kw,
    )


def _l1_rescale_f64(sparse: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """methods.task_arithmetic.l1_rescale with its two norms summed in float64 and rounded to
    float32 (the kernels' sums; torch's float32 sum may differ from them in the last bit)."""
    from mergefast.methods.task_arithmetic import RESCALE_MIN_NORM

    before = original.abs().double().sum().float().item()
    after = sparse.abs().double().sum().float().item()
    if before < RESCALE_MIN_NORM or after < RESCALE_MIN_NORM:
        return sparse
    return sparse * (before / after)


def _energy_weights_f64(deltas: torch.Tensor) -> torch.Tensor:
    """methods.sce.energy_weights with each mean(tau_i^2) summed in float64 and rounded to
    float32 before / n (the kernels' sums; torch's float32 mean may differ in the last bit)."""
    energy = (deltas * deltas).flatten(1).double().sum(dim=1).float() / deltas[0].numel()
    return _SCE_MODULE.weights_of_energies(energy)


def _cpu(ts):
    return [t.cpu() for t in ts]


class KernelSuite:
    """Every kernel against its reference. Subclasses set the backend."""

    DEVICE = "cpu"
    BACKEND = "cpu-ext"
    EXACT = True
    SHAPES = [(1,), (2,), (3,), (0,), (5000,), (37, 129)]
    TIE_N = 9000  # size of the many-ties cases (several blocks)
    THREAD_COUNTS = (1, 2, 3)  # of the DARE and DELLA thread-count tests

    @pytest.fixture(autouse=True)
    def _force_backend(self, monkeypatch):
        monkeypatch.setenv("MERGEFAST_BACKEND", self.BACKEND)

    def inputs(self, shape, dtype, **kw):
        return make_inputs(shape, dtype, device=self.DEVICE, **kw)

    # ------------------------------------------------------------------ linear
    def test_linear(self, shape, dtype):
        _, xs = self.inputs(shape, dtype)
        for weights, normalize in (([0.5, 0.3, 0.2], True), ([1.0, -0.5, 2.0], False), ([0.7, 0.7, 0.6], True)):
            out = kernels.linear(xs, weights, normalize=normalize)
            ref = methods.linear(_cpu(xs), weights, normalize=normalize)
            assert_same(out, ref, exact=self.EXACT)

    def test_linear_zero_weight_sum(self, dtype):
        _, xs = self.inputs((37, 129), dtype)
        with pytest.raises(ZeroWeightSumError):
            kernels.linear(xs, [1.0, -1.0, 0.0])
        out = kernels.linear(xs, [1.0, -1.0, 0.0], normalize=False)
        assert_same(out, methods.linear(_cpu(xs), [1.0, -1.0, 0.0], normalize=False), exact=self.EXACT)

    def test_linear_mixed_dtypes_and_out_dtype(self):
        _, xs = self.inputs((37, 129), torch.float32)
        mixed = [xs[0].bfloat16(), xs[1], xs[2].half()]
        out = kernels.linear(mixed, [0.2, 0.3, 0.6])
        assert out.dtype == torch.float32
        assert_same(out, methods.linear(_cpu(mixed), [0.2, 0.3, 0.6]), exact=self.EXACT)
        for od in (torch.bfloat16, torch.float16, torch.float64):
            out = kernels.linear(xs, [0.2, 0.3, 0.6], out_dtype=od)
            ref = methods.linear(_cpu(xs), [0.2, 0.3, 0.6], out_dtype=od)
            assert_same(out, ref, exact=self.EXACT)

    # ------------------------------------------------------------------ task arithmetic
    def test_task_arithmetic(self, shape, dtype):
        base, xs = self.inputs(shape, dtype)
        for weights, normalize, lam in (
            ([0.5, 0.3, 0.2], False, 1.0),
            ([1.0, -0.5, 2.0], True, 0.7),
            ([1.0, -1.0, 0.0], True, 1.0),
        ):  # sum 0 -> divisor 1
            out = kernels.task_arithmetic(base, xs, weights, normalize=normalize, lambda_=lam)
            ref = methods.task_arithmetic(base.cpu(), _cpu(xs), weights, normalize=normalize, lambda_=lam)
            assert_same(out, ref, exact=self.EXACT)

    TIES_CASES = [  # (weights, densities, normalize, lambda)
        ([0.5, 0.3, 0.2], [0.5, 0.3, 0.9], True, 1.0),
        ([1.0, -0.5, 2.0], [0.0, 1.0, 0.2], False, 0.5),  # density 0 and 1, negative weight
        ([1.0, -1.0, 0.0], [0.7, 0.7, 0.7], True, 1.0),  # weights sum to zero
        ([-1.0, -2.0, -0.5], [0.1, 0.01, 1.0], True, 0.7),
        ([0.5, 0.3, 0.2], [0.5, 0.3, 0.9], False, 1.0),
    ]
    TIE_DENSITIES = [0.0, 1e-4, 0.1, 0.37, 0.5, 0.9, 0.9999, 1.0]

    def test_ties(self, shape, dtype):
        base, xs = self.inputs(shape, dtype)
        for weights, densities, normalize, lam in self.TIES_CASES:
            out = kernels.ties(base, xs, weights, densities, normalize=normalize, lambda_=lam)
            ref = methods.ties(base.cpu(), _cpu(xs), weights, densities, normalize=normalize, lambda_=lam)
            assert_same(out, ref, exact=self.EXACT)

    def test_magnitude_without_consensus(self, dtype):
        base, xs = self.inputs((37, 129), dtype)
        kw = dict(densities=[0.3, 0.6, 0.05], sparsify="magnitude", normalize=True)
        out = kernels.task_arithmetic(base, xs, [0.4, 0.4, 0.2], **kw)
        ref = methods.task_arithmetic(base.cpu(), _cpu(xs), [0.4, 0.4, 0.2], **kw)
        assert_same(out, ref, exact=self.EXACT)

    def test_kept_set_with_many_ties(self, dtype):
        base, xs = tied_inputs(self.TIE_N, dtype, device=self.DEVICE)
        impl = kernels._impl(self.BACKEND)
        for density in self.TIE_DENSITIES:
            self._check_tied(impl, base, xs, density)

    def _check_tied(self, impl, base, xs, density):
        for x in xs:
            delta = x.cpu().float() - base.cpu().float()
            want = methods.magnitude_mask(delta, density)
            got = impl.magnitude_keep(base, x, keep_count(density, delta.numel()))
            assert torch.equal(got.cpu(), want), f"kept sets differ at density {density}"
        out = kernels.ties(base, xs, [0.3, 0.5, 0.2], [density, density / 2, 1 - density])
        ref = methods.ties(base.cpu(), _cpu(xs), [0.3, 0.5, 0.2], [density, density / 2, 1 - density])
        assert_same(out, ref, exact=self.EXACT)

    def test_nan_payloads_rank_equal(self, dtype):
        base, xs = nan_inputs(self.TIE_N, dtype, device=self.DEVICE)
        impl = kernels._impl(self.BACKEND)
        for density in (0.05, 0.15, 0.3, 0.6):
            for x in xs:
                delta = x.cpu().float() - base.cpu().float()
                got = impl.magnitude_keep(base, x, keep_count(density, delta.numel()))
                assert torch.equal(got.cpu(), methods.magnitude_mask(delta, density)), density
            # without consensus a kept NaN reaches the output: its place must be the reference's
            kw = dict(densities=[density, density / 2, 1 - density], sparsify="magnitude")
            out = kernels.task_arithmetic(base, xs, [0.3, 0.5, 0.2], **kw)
            ref = methods.task_arithmetic(base.cpu(), _cpu(xs), [0.3, 0.5, 0.2], **kw)
            assert_same(out, ref, exact=self.EXACT)

    def test_kept_set_random(self, dtype):
        base, xs = self.inputs((37, 129), dtype)
        impl = kernels._impl(self.BACKEND)
        delta = xs[0].cpu().float() - base.cpu().float()
        for density in (0.001, 0.25, 0.5, 0.75):
            want = methods.magnitude_mask(delta, density)
            got = impl.magnitude_keep(base, xs[0], keep_count(density, delta.numel()))
            assert torch.equal(got.cpu(), want)

    def test_all_zero_deltas(self, dtype):
        base, _ = self.inputs((37, 129), dtype)
        xs = [base.clone() for _ in range(3)]
        out = kernels.ties(base, xs, [0.5, 0.3, 0.2], [0.5, 0.5, 0.5])
        assert_same(out, methods.ties(base.cpu(), _cpu(xs), [0.5, 0.3, 0.2], [0.5] * 3), exact=self.EXACT)
        assert torch.equal(out.cpu(), base.cpu())

    def test_no_models_and_errors(self):
        base, xs = self.inputs((3,), torch.float32)
        assert torch.equal(kernels.task_arithmetic(base, [], []).cpu(), base.cpu())
        with pytest.raises(ValueError, match="sparsify"):
            kernels.task_arithmetic(base, xs, [1, 1, 1], densities=[0.5] * 3, sparsify="outliers")
        with pytest.raises(ValueError):
            kernels.task_arithmetic(base, xs, [1, 1], densities=[0.5] * 3)
        with pytest.raises(ValueError):
            kernels.linear(xs, [1.0])

    # ------------------------------------------------------------------ DARE
    DARE_CASES = [  # (weights, densities, normalize, lambda)
        ([0.5, 0.3, 0.2], [0.5, 0.3, 0.9], True, 1.0),
        ([1.0, -0.5, 2.0], [0.0, 1.0, 0.2], False, 0.5),  # density 0 and 1, negative weight
        ([1.0, -1.0, 0.0], [0.7, 0.7, 0.7], True, 1.0),  # weights sum to zero
    ]

    def _dare(
        self, base, xs, weights, densities, *, consensus, rescale, normalize=False, lambda_=1.0, seed=5, out_dtype=None
    ):
        """(kernel, reference) of one DARE call (dare_ties with consensus "sum")."""
        kw = dict(
            densities=densities,
            sparsify="random",
            consensus=consensus,
            normalize=normalize,
            lambda_=lambda_,
            rescale=rescale,
            seed=seed,
            tensor_name="model.layers.0.mlp.up_proj.weight",
            out_dtype=out_dtype,
        )
        out = kernels.task_arithmetic(base, xs, weights, **kw)
        return out, methods.task_arithmetic(base.cpu(), _cpu(xs), weights, **kw)

    def test_dare(self, shape, dtype):
        """Without the rescale, the same float32 operations: bit-identical."""
        base, xs = self.inputs(shape, dtype)
        for consensus in (None, "sum"):
            for weights, densities, normalize, lam in self.DARE_CASES:
                out, ref = self._dare(
                    base, xs, weights, densities, consensus=consensus, rescale=False, normalize=normalize, lambda_=lam
                )
                assert_same(out, ref, exact=self.EXACT)

    def test_dare_rescale(self, shape, dtype, monkeypatch):
        """With the L1 rescale: the reference's masks and arithmetic, its norms summed in
        float64 (bit-identical to a reference doing so; within the tolerance rule of the
        reference's float32 sums)."""
        base, xs = self.inputs(shape, dtype)
        for consensus in (None, "sum"):
            for weights, densities, normalize, lam in self.DARE_CASES:
                call = dict(consensus=consensus, rescale=True, normalize=normalize, lambda_=lam)
                out, ref = self._dare(base, xs, weights, densities, **call)
                ref64 = methods.task_arithmetic(
                    base.cpu().double(),
                    [x.cpu().double() for x in xs],
                    weights,
                    densities=densities,
                    sparsify="random",
                    consensus=consensus,
                    normalize=normalize,
                    lambda_=lam,
                    rescale=True,
                    seed=5,
                    tensor_name="model.layers.0.mlp.up_proj.weight",
                ).to(out.dtype)
                assert_same(out, ref, exact=False, ref64=ref64)
                with monkeypatch.context() as m:
                    m.setattr(_TA_MODULE, "l1_rescale", _l1_rescale_f64)
                    _, ref_f64_norms = self._dare(base, xs, weights, densities, **call)
                assert_same(out, ref_f64_norms, exact=self.EXACT)

    def test_dare_edge_cases(self, dtype, monkeypatch):
        """All-zero deltas, NaN/inf inputs, mixed input dtypes and out_dtype."""
        monkeypatch.setattr(_TA_MODULE, "l1_rescale", _l1_rescale_f64)
        base, _ = self.inputs((37, 129), dtype)
        zeros = [base.clone() for _ in range(3)]
        nan_base, nan_xs = nan_inputs(self.TIE_N, dtype, device=self.DEVICE)
        mixed = [
            x.to(t) for x, t in zip(self.inputs((37, 129), dtype)[1], (torch.bfloat16, torch.float32, torch.float16))
        ]
        for b, xs, od in (
            (base, zeros, None),
            (nan_base, nan_xs, None),
            (base, mixed, torch.float32),
            (base, mixed, torch.bfloat16),
        ):
            for consensus in (None, "sum"):
                for rescale in (False, True):
                    out, ref = self._dare(
                        b, xs, [0.5, 0.3, 0.2], [0.4, 1.0, 0.1], consensus=consensus, rescale=rescale, out_dtype=od
                    )
                    assert_same(out, ref, exact=self.EXACT)

    def test_dare_same_on_any_thread_count(self, dtype):
        """The masks and the norms do not depend on the thread count (nor on the seed's
        absence of effect: another seed or tensor name draws other masks)."""
        base, xs = self.inputs((self.TIE_N * 5,), dtype)
        args = (base, xs, [0.5, 0.3, 0.2], [0.4, 0.6, 0.1])
        before = torch.get_num_threads()
        outs = []
        try:
            for t in self.THREAD_COUNTS:
                torch.set_num_threads(t)
                outs.append(self._dare(*args, consensus="sum", rescale=True)[0].cpu())
        finally:
            torch.set_num_threads(before)
        assert all(torch.equal(outs[0], o) for o in outs[1:])
        other = self._dare(*args, consensus="sum", rescale=True, seed=6)[0].cpu()
        assert not torch.equal(outs[0], other)

    # ------------------------------------------------------------------ slerp
    def test_slerp(self, shape, dtype):
        a, xs = self.inputs(shape, dtype, scale=0.8)
        for t in (0.0, 0.3, 0.5, 1.0):
            out = kernels.slerp(a, xs[0], t)
            ref = methods.slerp(a.cpu(), xs[0].cpu(), t)
            ref64 = methods.slerp(a.cpu().double(), xs[0].cpu().double(), t).to(out.dtype)
            assert_same(out, ref, exact=False, ref64=ref64)

    def test_slerp_parallel_antiparallel_zero(self, dtype):
        a, _ = self.inputs((37, 129), dtype)
        for b in (a * 2, -a, a.clone(), torch.zeros_like(a)):
            for t in (0.25, 0.5):
                out = kernels.slerp(a, b, t)
                ref = methods.slerp(a.cpu(), b.cpu(), t)
                # lerp branch (or zero vector): the same elementwise arithmetic

                assert_same(out, ref, exact=self.EXACT)

    def test_slerp_out_dtype(self):
        a, xs = self.inputs((37, 129), torch.bfloat16, scale=0.8)
        out = kernels.slerp(a, xs[0].float(), 0.4, out_dtype=torch.float16)
        ref = methods.slerp(a.cpu(), xs[0].cpu().float(), 0.4, out_dtype=torch.float16)
        ref64 = methods.slerp(a.cpu().double(), xs[0].cpu().double(), 0.4).half()
        assert_same(out, ref, exact=False, ref64=ref64)

    # ------------------------------------------------------------------ breadcrumbs
    BREADCRUMBS_CASES = [  # (weights, densities, gammas, normalize, lambda)
        ([0.5, 0.3, 0.2], [0.5, 0.3, 0.9], [0.01, 0.1, 0.05], False, 1.0),
        ([1.0, -0.5, 2.0], [0.0, 1.0, 0.2], [0.1, 0.3, 0.0], True, 0.5),  # density 0 and 1, gamma 0
        ([1.0, -1.0, 0.0], [0.9, 0.95, 0.7], [0.2, 0.1, 0.5], True, 1.0),  # density + gamma > 1
    ]
    # (density, gamma) of the first model; the others take (density / 2, gamma / 3) and
    # (1 - density, 1 - gamma)
    BREADCRUMBS_CUTS = [(0.0, 0.0), (0.37, 0.0), (0.37, 0.13), (0.9, 0.2), (0.9999, 0.0001), (1.0, 0.3)]
    BREADCRUMBS_DTYPES = DTYPES  # of the ties and edge-case tests
    BREADCRUMBS_EDGE_SHAPE = (37, 129)

    def _breadcrumbs(self, base, xs, weights, densities, gammas, *, consensus, normalize=False, out_dtype=None, **kw):
        """(kernel, reference) of one breadcrumbs call (breadcrumbs_ties with consensus "sum")."""
        kw.update(
            densities=densities,
            gammas=gammas,
            sparsify="magnitude_outliers",
            consensus=consensus,
            normalize=normalize,
            out_dtype=out_dtype,
        )
        out = kernels.task_arithmetic(base, xs, weights, **kw)
        return out, methods.task_arithmetic(base.cpu(), _cpu(xs), weights, **kw)

    def test_breadcrumbs(self, shape, dtype):
        """breadcrumbs and breadcrumbs_ties: the reference's kept sets, the same arithmetic."""
        base, xs = self.inputs(shape, dtype)
        for consensus in (None, "sum"):
            for weights, densities, gammas, normalize, lam in self.BREADCRUMBS_CASES:
                out, ref = self._breadcrumbs(
                    base, xs, weights, densities, gammas, consensus=consensus, normalize=normalize, lambda_=lam
                )
                assert_same(out, ref, exact=self.EXACT)

    def test_breadcrumbs_ties_and_nans_at_the_cuts(self):
        """Many ties at both cut points: the reference's stable ascending sort keeps the ties
        of the lower cut highest index first and those of the upper cut lowest index first;
        NaNs rank equal, above inf, so the top cut drops them first."""
        for base, xs in [
            make(self.TIE_N, dtype, device=self.DEVICE)
            for dtype in self.BREADCRUMBS_DTYPES
            for make in (tied_inputs, nan_inputs)
        ]:
            for density, gamma in self.BREADCRUMBS_CUTS:
                densities, gammas = [density, density / 2, 1 - density], [gamma, gamma / 3, 1 - gamma]
                for consensus in (None, "sum"):
                    out, ref = self._breadcrumbs(base, xs, [0.3, 0.5, 0.2], densities, gammas, consensus=consensus)
                    assert_same(out, ref, exact=self.EXACT)

    def test_breadcrumbs_edge_cases(self):
        """All-zero deltas, mixed input dtypes with out_dtype, the default gamma, and the
        rescale (not fused: the reference runs)."""
        for dtype in self.BREADCRUMBS_DTYPES:
            self._breadcrumbs_edge_cases(dtype)

    def _breadcrumbs_edge_cases(self, dtype):
        base, xs = self.inputs(self.BREADCRUMBS_EDGE_SHAPE, dtype)
        zeros = [base.clone() for _ in range(3)]
        mixed = [x.to(t) for x, t in zip(xs, (torch.bfloat16, torch.float32, torch.float16))]
        for models, od, consensus in (
            (zeros, None, None),
            (zeros, None, "sum"),
            (mixed, torch.float32, None),
            (mixed, torch.bfloat16, "sum"),
        ):
            out, ref = self._breadcrumbs(
                base, models, [0.5, 0.3, 0.2], [0.4, 1.0, 0.1], None, consensus=consensus, out_dtype=od
            )
            assert_same(out, ref, exact=self.EXACT)
            if models is zeros:
                assert torch.equal(out.cpu(), base.cpu())
        out, ref = self._breadcrumbs(
            base, xs, [0.5, 0.3, 0.2], [0.4, 0.5, 0.1], [0.1] * 3, consensus="sum", rescale=True
        )
        assert_same(out, ref, exact=self.EXACT)

    # ------------------------------------------------------------------ SLERP family
    # nuslerp and model_stock reduce in float64 in another order than torch's float32 sums
    # (kernels/slerp_family.py): DESIGN's tolerance rule against the float64 reference, NaN
    # where the reference has NaN. nearswap does the reference's operations: EXACT.
    NUSLERP_WEIGHTS = ([0.3, 0.7], [1.0, 0.0], [0.0, 2.0], [1.0, -1.0])  # t = 0.7, 0, 1, 0.5
    EDGE_SHAPE = (37, 129)  # the edge cases' tensors: rows and several blocks

    def _nuslerp_check(self, xs, base, weights, **kw):
        out = kernels.nuslerp(xs, weights, base, **kw)
        ref = methods.nuslerp(_cpu(xs), weights, None if base is None else base.cpu(), **kw)
        b64 = None if base is None else base.cpu().double()
        ref64 = methods.nuslerp([x.cpu().double() for x in xs], weights, b64, **kw).to(out.dtype)
        assert_close_or_nan(out, ref, ref64)

    # whole tensors, slices along the last axis, slices along axis 0 (row_wise: per column)
    NUSLERP_MODES = ({"flatten": True}, {"flatten": False}, {"flatten": False, "row_wise": True})

    def test_nuslerp(self, shape, dtype):
        base, xs = self.inputs(shape, dtype, scale=0.5)
        for with_base in (False, True):
            for mode in self.NUSLERP_MODES:
                for weights in self.NUSLERP_WEIGHTS:
                    self._nuslerp_check(xs[:2], base if with_base else None, weights, **mode)

    def test_nuslerp_parallel_zero_nan(self, dtype):
        """Parallel, equal and zero vectors (the lerp branch and the 1e-7 norm clamp), per row
        and whole; NaN inputs give NaN rows as the reference."""
        base, xs = self.inputs(self.EDGE_SHAPE, dtype)
        zero = torch.zeros_like(base)
        nan = xs[1].clone()
        nan[3, 7 % self.EDGE_SHAPE[1]] = float("nan")
        for b, x0, x1 in (
            (None, xs[0], xs[0] * 2),
            (base, xs[0], xs[0].clone()),
            (base, base.clone(), xs[1]),
            (None, zero, zero.clone()),
            (None, xs[0], nan),
            (base, xs[0], nan),
        ):
            for mode in self.NUSLERP_MODES:
                self._nuslerp_check([x0, x1], b, [0.4, 0.6], **mode)

    def test_nuslerp_antiparallel(self, dtype):
        """Antiparallel slices: slerp is ill-posed there (any great circle), so the float32
        and float64 references disagree by O(1) unless the cosine is exactly -1. With +-0.5
        entries in rows of 64 every sum is exact: both take the lerp branch, bit-identical."""
        g = torch.Generator().manual_seed(2)
        x0 = (torch.randint(0, 2, (5, 64), generator=g) * 1.0 - 0.5).to(dtype).to(self.DEVICE)
        for flatten in (True, False):
            out = kernels.nuslerp([x0, -x0], [0.3, 0.7], flatten=flatten)
            assert_same(out, methods.nuslerp([x0.cpu(), -x0.cpu()], [0.3, 0.7], flatten=flatten), exact=self.EXACT)

    def test_nuslerp_row_wise_slices_along_axis_0_and_out_dtype(self):
        """row_wise slerps the slices along axis 0 (the columns of shape[0] rows, every later
        axis flattened), in a 3-d tensor too: one slice antiparallel, one zero, one NaN."""
        base, xs = self.inputs((13, 5, 7), torch.bfloat16, scale=0.5)
        x1 = xs[1].clone()
        x1[:, 0, 0] = base[:, 0, 0] - (xs[0][:, 0, 0] - base[:, 0, 0])  # antiparallel deltas
        x1[:, 1, 2] = base[:, 1, 2]  # a zero delta
        x1[4, 3, 1] = float("nan")
        for b in (base, None):
            self._nuslerp_check([xs[0], x1], b, [0.3, 0.7], flatten=False, row_wise=True)
        mixed = [xs[0].float(), xs[1].half()]
        for od in (None, torch.bfloat16, torch.float64):
            self._nuslerp_check(mixed, base, [0.5, 0.5], out_dtype=od)
            self._nuslerp_check(mixed, base, [0.5, 0.5], out_dtype=od, flatten=False, row_wise=True)

    def _model_stock_check(self, base, xs, **kw):
        out = kernels.model_stock(base, xs, **kw)
        ref = methods.model_stock(base.cpu(), _cpu(xs), **kw)
        ref64 = methods.model_stock(base.cpu().double(), [x.cpu().double() for x in xs], **kw).to(out.dtype)
        assert_close_or_nan(out, ref, ref64)
        return out, ref

    def test_model_stock(self, shape, dtype):
        base, xs = self.inputs(shape, dtype)
        for filter_wise, k in ((False, 3), (True, 2), (True, 3)):
            self._model_stock_check(base, xs[:k], filter_wise=filter_wise)

    def test_model_stock_edges(self, dtype):
        """Zero task vectors (cos 0, t 0: exactly the base), equal and opposite ones, a NaN
        row, mixed input dtypes and out_dtype."""
        base, xs = self.inputs(self.EDGE_SHAPE, dtype)
        nan = xs[2].clone()
        nan[4, 0] = float("nan")
        for filter_wise in (False, True):
            out, ref = self._model_stock_check(base, [base.clone(), base.clone()], filter_wise=filter_wise)
            assert_same(out, ref, exact=self.EXACT)
            assert torch.equal(out.cpu(), base.cpu())
            self._model_stock_check(base, [xs[0], xs[0].clone(), xs[0].clone()], filter_wise=filter_wise)
            self._model_stock_check(base, [xs[0], xs[1], nan], filter_wise=filter_wise)
        mixed = [xs[0].float(), xs[1].half(), xs[2].bfloat16()]
        for od in (None, torch.float64):
            self._model_stock_check(base, mixed, filter_wise=True, out_dtype=od)

    def test_model_stock_opposite(self, dtype):
        """Two opposite task vectors: cos -1, so 1 + (N-1) cos = 0 and t = 0 (the base). The
        ratio is ill-conditioned near there (t ~ 1 / (1 + cos)), so the sums are made exact:
        +-0.5 deltas in rows of 64, 256 elements: both take the guard, bit-identical."""
        g = torch.Generator().manual_seed(2)
        base = torch.ones(4, 64, dtype=dtype, device=self.DEVICE)
        d = (torch.randint(0, 2, (4, 64), generator=g) * 1.0 - 0.5).to(dtype).to(self.DEVICE)
        for filter_wise in (False, True):
            out = kernels.model_stock(base, [base + d, base - d], filter_wise=filter_wise)
            ref = methods.model_stock(base.cpu(), [(base + d).cpu(), (base - d).cpu()], filter_wise=filter_wise)
            assert_same(out, ref, exact=self.EXACT)
            assert torch.equal(out.cpu(), base.cpu())

    def test_slerp_family_long_rows(self, dtype):
        """Rows of two blocks and a part (the kernels' block: the C++ library's, or Triton's
        here), per-row reductions summed over blocks."""
        block = kernels._impl(self.BACKEND).BLOCK if self.BACKEND == "cpu-ext" else _triton_block()
        base, xs = self.inputs((3, 2 * block + 5), dtype, scale=0.5)
        self._nuslerp_check(xs[:2], base, [0.3, 0.7], flatten=False)
        self._model_stock_check(base, xs, filter_wise=True)

    def test_nearswap(self, shape, dtype):
        base, xs = self.inputs(shape, dtype)
        for t in (0.0, 1e-3, 0.05, 1.0, -0.5):
            assert_same(
                kernels.nearswap(base, xs[0], t), methods.nearswap(base.cpu(), xs[0].cpu(), t), exact=self.EXACT
            )

    def test_nearswap_edges(self, dtype):
        """Equal values (distance clamped to 1e-6), NaN and inf inputs, out_dtype."""
        base, xs = self.inputs(self.EDGE_SHAPE, dtype)
        x = xs[0].clone()
        x[0] = base[0]
        x[1, :5] = float("nan")
        x[2, :5] = float("inf")
        b = base.clone()
        b[3, :5] = float("nan")
        for od in (None, torch.float32, torch.float16):
            out = kernels.nearswap(b, x, 0.02, out_dtype=od)
            assert_same(out, methods.nearswap(b.cpu(), x.cpu(), 0.02, out_dtype=od), exact=self.EXACT)

    # ------------------------------------------------------------------ SCE
    SCE_TOPKS = (0.0, 0.3, 0.75, 1.0)  # test_sce's
    SCE_EDGE_TOPKS = (0.0, 0.1, 0.5, 0.77, 1.0)  # test_sce_ties_and_edge_cases'
    SCE_EDGE_ONE_TOPK = False  # True: edge case q runs SCE_EDGE_TOPKS[(q + 1) % 5] alone (interpreters)
    SCE_MANY = True  # the edge case of TIE_N * 5 elements (several CPU threads)

    def _sce(self, base, xs, topk, monkeypatch, out_dtype=None):
        """Kernel against the reference with float64 energies (bit-identical) and against the
        plain reference (tolerance rule: its energies are torch's float32 means)."""
        if not hasattr(kernels._impl(self.BACKEND), "sce_select"):
            pytest.skip(f"no SCE kernel on {self.BACKEND}")
        out = kernels.sce(base, xs, select_topk=topk, out_dtype=out_dtype)
        b, others = base.cpu(), _cpu(xs)
        ref = methods.sce(b, others, select_topk=topk, out_dtype=out_dtype)
        nan = torch.isnan(ref)
        assert torch.equal(torch.isnan(out.cpu()), nan)
        assert_same(out.cpu()[~nan], ref[~nan], exact=False)
        with monkeypatch.context() as m:
            m.setattr(_SCE_MODULE, "energy_weights", _energy_weights_f64)
            ref_f64 = methods.sce(b, others, select_topk=topk, out_dtype=out_dtype)
        assert_same(out, ref_f64, exact=self.EXACT)

    def test_sce(self, shape, dtype, monkeypatch):
        """select_topk 0, between and 1 (>= 1 keeps every position)."""
        base, xs = self.inputs(shape, dtype)
        for topk in self.SCE_TOPKS:
            self._sce(base, xs, topk, monkeypatch)

    def test_sce_ties_and_edge_cases(self, dtype, monkeypatch):
        """Many tied variances split at the threshold (kept lowest flat index first), NaN and
        inf inputs, all-zero deltas, one model, two models, mixed dtypes with out_dtype."""
        tied = tied_inputs(self.TIE_N, dtype, device=self.DEVICE)
        many = tied_inputs(self.TIE_N * 5, dtype, seed=3, device=self.DEVICE) if self.SCE_MANY else None
        nans = nan_inputs(self.TIE_N, dtype, device=self.DEVICE)
        base, xs = self.inputs((37, 129), dtype)
        mixed = [x.to(t) for x, t in zip(xs, (torch.bfloat16, torch.float32, torch.float16))]
        cases = (
            (*tied, None),
            *([(*many, None)] if self.SCE_MANY else []),
            (*nans, None),
            (base, [base.clone() for _ in range(3)], None),
            (base, xs[:1], None),
            (tied[0], tied[1][:2], None),
            (base, mixed, torch.float32),
            (base, mixed, torch.bfloat16),
        )
        topks = self.SCE_EDGE_TOPKS
        for q, (b, models, od) in enumerate(cases):
            for topk in (topks[(q + 1) % len(topks)],) if self.SCE_EDGE_ONE_TOPK else topks:  # tied: 0.1
                self._sce(b, models, topk, monkeypatch, out_dtype=od)

    # ------------------------------------------------------------------ DELLA
    # (consensus, rescale) pairs of the edge cases
    DELLA_EDGE_MODES = [(None, False), (None, True), ("sum", False), ("sum", True)]
    DELLA_CASES = [  # (weights, densities, epsilons, normalize, lambda)
        ([0.5, 0.3, 0.2], [0.5, 0.3, 0.9], [0.15, 0.1, 0.05], True, 1.0),
        ([1.0, -0.5, 2.0], [0.0, 1.0, 0.2], [0.15, 0.15, 0.0], False, 0.5),  # density 0 and 1, epsilon 0
        ([1.0, -1.0, 0.0], [0.7, 0.5, 0.6], [0.29, -0.2, 0.3], True, 1.0),  # weights sum to 0, epsilon < 0
    ]

    def _della(self, base, xs, weights, densities, epsilons, *, consensus, rescale, seed=5, **kw):
        """(kernel, reference) of one DELLA call (della with consensus "sum", else della_linear)."""
        kw = _della_call(densities, epsilons, consensus, rescale, seed, **kw)
        out = kernels.task_arithmetic(base, xs, weights, **kw)
        return out, methods.task_arithmetic(base.cpu(), _cpu(xs), weights, **kw)

    def test_della(self, shape, dtype):
        """Without the rescale, the same float32 operations and masks: bit-identical."""
        base, xs = self.inputs(shape, dtype)
        for consensus in (None, "sum"):
            for weights, densities, epsilons, normalize, lam in self.DELLA_CASES:
                call = dict(consensus=consensus, rescale=False, normalize=normalize, lambda_=lam)
                out, ref = self._della(base, xs, weights, densities, epsilons, **call)
                assert_same(out, ref, exact=self.EXACT)

    def test_della_rescale(self, shape, dtype, monkeypatch):
        """With the L1 rescale: within the tolerance rule of the reference's float32 norms, and
        bit-identical to a reference summing its norms in float64 (as the kernels do)."""
        base, xs = self.inputs(shape, dtype)
        for consensus in (None, "sum"):
            for weights, densities, epsilons, normalize, lam in self.DELLA_CASES:
                call = dict(consensus=consensus, rescale=True, normalize=normalize, lambda_=lam)
                out, ref = self._della(base, xs, weights, densities, epsilons, **call)
                # the float64 reference on the CPU (the kernel API would run it on the kernels'
                # device: MERGEFAST_BACKEND=triton refuses CPU tensors outside the interpreter)
                kw64 = _della_call(densities, epsilons, seed=5, **call)
                ref64 = methods.task_arithmetic(base.cpu().double(), [x.cpu().double() for x in xs], weights, **kw64)
                assert_same(out, ref, exact=False, ref64=ref64.to(out.dtype))
                with monkeypatch.context() as m:
                    m.setattr(_TA_MODULE, "l1_rescale", _l1_rescale_f64)
                    kw = _della_call(densities, epsilons, seed=5, **call)
                    ref_f64_norms = methods.task_arithmetic(base.cpu(), _cpu(xs), weights, **kw)
                assert_same(out, ref_f64_norms, exact=self.EXACT)

    DELLA_MASK_DTYPES = DTYPES  # of the masks-pass test

    def test_della_masks_are_the_references(self, dtype):
        """The keep bits of the masks pass are della_mask's: row ranks with many ties in |delta|
        (lowest index first) and NaNs of mixed payloads (above inf, equal among themselves)."""
        if dtype not in self.DELLA_MASK_DTYPES:
            pytest.skip(f"the masks pass is checked on {self.DELLA_MASK_DTYPES} here (test_della: every dtype)")
        from mergefast.kernels.della import keep_rule, stream_keys

        impl = kernels._impl(self.BACKEND)
        cols = self.TIE_N // 9
        tied = tied_inputs(9 * cols, dtype, device=self.DEVICE)
        nans = nan_inputs(9 * cols, dtype, device=self.DEVICE)
        one_key = (tied[0], [tied[0] + 0.25 for _ in range(3)])  # one key per row: index order
        for base, xs in (tied, nans, one_key):
            base, xs = base.view(9, cols), [x.view(9, cols) for x in xs]
            for density, epsilon in ((0.5, 0.45), (0.2, 0.1), (0.9, 0.0), (1.0, 0.3), (0.0, 0.1)):
                rules = [keep_rule(density, epsilon, cols)] * 3
                keys = stream_keys(7, "t", 3)
                out, _ = impl.della_masks(base, xs, keys, [r[0] for r in rules], [r[1] for r in rules], cols, dtype)
                for i, x in enumerate(xs):
                    delta = x.cpu().float() - base.cpu().float()
                    want = _TA_MODULE.della_mask(delta, density, epsilon, seed=7, tensor_name="t", model_index=i)
                    assert_della_keeps(out, i, delta, want, density, epsilon, i)

    def test_della_edge_cases(self, dtype, monkeypatch):
        """All-zero deltas, NaN/inf inputs, 0-d and 1-element tensors, mixed input dtypes and
        out_dtype; a density +- epsilon outside (0, 1) raises the reference's error."""
        monkeypatch.setattr(_TA_MODULE, "l1_rescale", _l1_rescale_f64)
        base, _ = self.inputs(self.EDGE_SHAPE, dtype)
        zeros = [base.clone() for _ in range(3)]
        nan_base, nan_xs = nan_inputs(self.TIE_N, dtype, device=self.DEVICE)
        nan_base, nan_xs = nan_base.view(-1, 100), [x.view(-1, 100) for x in nan_xs]
        dtypes = (torch.bfloat16, torch.float32, torch.float16)
        mixed = [x.to(t) for x, t in zip(self.inputs(self.EDGE_SHAPE, dtype)[1], dtypes)]
        scalar_base, scalar_xs = self.inputs((), dtype)
        for b, xs, od in (
            (base, zeros, None),
            (nan_base, nan_xs, None),
            (scalar_base, scalar_xs, None),
            (base, mixed, torch.float32),
            (base, mixed, torch.bfloat16),
        ):
            for consensus, rescale in self.DELLA_EDGE_MODES:
                args = (b, xs, [0.5, 0.3, 0.2], [0.4, 1.0, 0.1], [0.3, 0.1, 0.05])
                out, ref = self._della(*args, consensus=consensus, rescale=rescale, out_dtype=od)
                assert_same(out, ref, exact=self.EXACT)
        with pytest.raises(_TA_MODULE.DellaRangeError, match="density - epsilon"):
            kernels.task_arithmetic(base, zeros, [1.0] * 3, densities=[0.5] * 3, epsilons=[0.5] * 3, sparsify="della")

    def test_della_same_on_any_thread_count(self, dtype):
        """The masks and the norms do not depend on the thread count (another seed draws other
        masks)."""
        base, xs = self.inputs((self.TIE_N // 200, 1000), dtype)
        args = (base, xs, [0.5, 0.3, 0.2], [0.4, 0.6, 0.1], [0.15, 0.3, 0.05])
        before = torch.get_num_threads()
        outs = []
        try:
            for t in self.THREAD_COUNTS:
                torch.set_num_threads(t)
                outs.append(self._della(*args, consensus="sum", rescale=True)[0].cpu())
        finally:
            torch.set_num_threads(before)
        assert all(torch.equal(outs[0], o) for o in outs[1:])
        other = self._della(*args, consensus="sum", rescale=True, seed=6)[0].cpu()
        assert not torch.equal(outs[0], other)

    # ------------------------------------------------------------------ arcee_fusion
    # The kernels' KL is within ~1e-7 relative of the float64 reference (Triton: float64; CPU:
    # a sum of nonnegative float32 terms in float64); the reference's is float32 (torch's exp,
    # log and order, which cancel): DESIGN's tolerance rule on the KL. Importance values
    # at the threshold may rank differently with the two KLs, so the output is compared with the
    # reference run on the kernels' own KL: then it is bit-identical (exact quartiles, the same
    # float32 threshold and apply). NaN ranks above +inf, as torch.kthvalue.
    ARCEE_LONG_ROW = 70000  # past the C++ kernel's cached row length (recomputed exps)
    ARCEE_WIDE = (40, 1000)  # past one thread's share on the CPU
    ARCEE_DTYPES = DTYPES  # of the edge-case test

    def _arcee(self, base, other, monkeypatch, out_dtype=None):
        impl = kernels._impl(self.BACKEND)
        if not hasattr(impl, "arcee_select"):
            pytest.skip(f"no arcee_fusion kernel on {self.BACKEND}")
        select, kls = impl.arcee_select, []

        def spy(*args):  # the kernels' KL, from the call itself
            result = select(*args)
            kls.append(result[0].cpu())
            return result

        with monkeypatch.context() as m:
            m.setattr(impl, "arcee_select", spy)
            out = kernels.arcee_fusion(base, other, out_dtype=out_dtype)
        assert len(kls) == 1, "the kernels did not run"
        kl, (rows, cols) = kls[0], _ARCEE_HOST.rows_cols(base)
        b, x = base.cpu().reshape(rows, cols), other.cpu().reshape(rows, cols)
        ref_kl = _ARCEE_MODULE.kl_rows(x.float(), b.float())[:, 0]
        kl64 = _ARCEE_MODULE.kl_rows(x.double(), b.double())[:, 0]
        nan = torch.isnan(kl64)
        assert torch.equal(torch.isnan(kl), nan) and torch.equal(torch.isnan(ref_kl), nan)
        assert_same(kl[~nan], ref_kl[~nan], exact=False, ref64=kl64[~nan])
        with monkeypatch.context() as m:
            m.setattr(_ARCEE_MODULE, "kl_rows", lambda xr, br: kl.to(xr.dtype)[:, None].expand_as(xr))
            ref = methods.arcee_fusion(base.cpu(), other.cpu(), out_dtype=out_dtype)
        assert_same(out, ref, exact=True)
        return out

    def test_arcee_fusion(self, shape, dtype, monkeypatch):
        base, xs = self.inputs(shape, dtype)
        if base.numel() == 0:  # the reference's error: no row of nothing
            with pytest.raises(RuntimeError):
                kernels.arcee_fusion(base, xs[0])
            return
        for other in (xs[0], xs[1] * 3 - base * 2):
            self._arcee(base, other, monkeypatch)

    def test_arcee_fusion_nan_beside_shared_buckets(self, dtype, monkeypatch):
        """Three quarters of the rows unchanged (two of the three quartiles in the zeros' bucket)
        and NaN in every fifth row (a NaN key's top 16 bits are 0xFFFF): the C++ kernel counted
        the NaN rows' keys past its two histograms, out of bounds (a segmentation fault in a
        process of its own; here, by the heap's layout, not always). Found by
        tests/test_fuzz_kernels.py."""
        g = torch.Generator().manual_seed(0)
        for rows, cols in ((12, 9), (64, 16)):
            base = (torch.randn(rows, cols, generator=g) * 0.05).to(dtype).to(self.DEVICE)
            other = base.clone()
            other[::4] += (torch.randn(other[::4].shape, generator=g) * 0.01).to(dtype).to(self.DEVICE)
            other[1::5, 2] = float("nan")
            self._arcee(base, other, monkeypatch)

    def test_arcee_fusion_edge_cases(self, monkeypatch):
        """All-zero deltas and identical rows (KL 0: importance 0), ties, NaN and inf rows (NaN
        above +inf: a quartile on NaN makes the threshold NaN, which keeps nothing), 0-d, long
        rows, several threads, mixed dtypes and out_dtype."""
        for dtype in self.ARCEE_DTYPES:
            self._arcee_edge_cases(dtype, monkeypatch)

    def _arcee_edge_cases(self, dtype, monkeypatch):
        base, xs = self.inputs(self.EDGE_SHAPE, dtype)
        same_rows = xs[0].clone()
        same_rows[::3] = base[::3]
        tb, txs = tied_inputs(self.TIE_N, dtype, device=self.DEVICE)
        few_nan, many_nan = xs[1].clone(), xs[1].clone()
        few_nan[2, 5], few_nan[3, :] = float("nan"), float("nan")
        few_nan[4, 3] = float("inf")
        many_nan[::2, 1] = float("nan")
        nan_base = base.clone()
        nan_base[1, 4] = float("-inf")
        long_b, long_x = self.inputs((self.ARCEE_LONG_ROW,), dtype)
        wide_b, wide_x = self.inputs(self.ARCEE_WIDE, dtype)
        mixed = xs[2].to(torch.float32 if dtype != torch.float32 else torch.float16)
        # fine-tune-like deltas (|x - b| <= 0.1: the CPU kernel's series), and a long row whose
        # blocks mix them with large ones
        tune_b, tune_x = base * 0.02, base * 0.02 + (xs[0] - base) * 0.02
        mix_x = long_b + (long_x[0] - long_b) * 0.02
        mid = slice(self.ARCEE_LONG_ROW // 2, self.ARCEE_LONG_ROW // 2 + 100)
        mix_x[mid] = long_x[0][mid]
        cases = [
            (base, base.clone(), None),
            (base, same_rows, None),
            (tb.view(10, -1), txs[0].view(10, -1), None),
            (base, few_nan, None),
            (base, many_nan, None),
            (nan_base, xs[0], None),
            (base[0, 0], xs[0][0, 0], None),
            (long_b, long_x[0], None),
            (wide_b, wide_x[0], None),
            (base, mixed, None),
            (base, xs[0], torch.float64),
            (base, xs[0], torch.bfloat16),
            (tune_b, tune_x, None),
            (long_b, mix_x, None),
        ]
        for b, x, od in cases:
            out = self._arcee(b, x, monkeypatch, out_dtype=od)
            if x is cases[0][1]:
                assert torch.equal(out.cpu(), base.cpu())

    # ------------------------------------------------------------------ multislerp, karcher
    # float64 math on the Gram matrix, then one weighted sum of the inputs (kernels/spherical.py):
    # DESIGN's tolerance rule against the float64 reference. The inputs are nearly parallel
    # (make_inputs) or spread task vectors: karcher's |T| stays away from tol at every step.
    MULTISLERP_WEIGHTS = ([0.2, 0.3, 0.6], [1.0, 2.0, 0.5], [0.3, 0.7])

    def _multislerp_check(self, xs, weights, base=None, **kw):
        out = kernels.multislerp(xs, weights, base, **kw)
        b = None if base is None else base.cpu()
        ref = methods.multislerp(_cpu(xs), weights, b, **kw)
        b64 = None if base is None else b.double()
        ref64 = methods.multislerp([x.cpu().double() for x in xs], weights, b64, **kw).to(ref.dtype)
        assert_close_or_nan(out, ref, ref64)
        return out, ref

    def test_multislerp(self, shape, dtype):
        base, xs = self.inputs(shape, dtype, scale=0.5)
        if base.numel() == 0:  # zero norms: the reference's AntipodalError for 3 inputs
            with pytest.raises(AntipodalError):
                kernels.multislerp(xs, [0.2, 0.3, 0.6], base)
            self._multislerp_check(xs[:2], [0.3, 0.7], base)
            return
        for with_base in (False, True):
            for weights in self.MULTISLERP_WEIGHTS:
                for normalize in (True, False):
                    models = xs[: len(weights)]
                    self._multislerp_check(models, weights, base if with_base else None, normalize_weights=normalize)

    def test_multislerp_edges(self, dtype):
        """One input (a copy), antipodal pairs (the 2-input fallback, bit-identical), antipodal
        triples and all-zero deltas (AntipodalError; two zero deltas: the base), a NaN input
        (NaN everywhere), eps, mixed dtypes and out_dtype."""
        base, xs = self.inputs(self.EDGE_SHAPE, dtype, scale=0.5)
        one = kernels.multislerp(xs[:1], [0.5], base)
        assert torch.equal(one.cpu(), xs[0].cpu()) and one is not xs[0]
        zero = torch.zeros_like(base)
        for b in (None, zero):  # exactly opposite deltas: the weighted mean is exactly 0
            out, ref = self._multislerp_check([xs[0], -xs[0]], [0.5, 0.5], b)
            assert_same(out, ref, exact=self.EXACT)
        out, ref = self._multislerp_check([base.clone(), base.clone()], [0.4, 0.6], base)
        assert_same(out, ref, exact=self.EXACT)
        for models, b in (([xs[0], -xs[0], zero], zero), ([base.clone()] * 3, base)):
            with pytest.raises(AntipodalError):
                kernels.multislerp(models, [0.5, 0.5, 0.5], b)
        nan = xs[1].clone()
        nan[2, 3] = float("nan")
        self._multislerp_check([xs[0], nan, xs[2]], [0.2, 0.3, 0.6], base)
        self._multislerp_check(xs, [0.2, 0.3, 0.6], base, eps=1e-3)
        mixed = [xs[0].float(), xs[1].half(), xs[2].bfloat16()]
        for od in (None, torch.bfloat16, torch.float64):
            self._multislerp_check(mixed, [0.2, 0.3, 0.6], base, out_dtype=od)

    def _karcher_check(self, xs, **kw):
        out = kernels.karcher(xs, **kw)
        ref = methods.karcher(_cpu(xs), **kw)
        ref64 = methods.karcher([x.cpu().double() for x in xs], **kw).to(ref.dtype)
        assert_close_or_nan(out, ref, ref64)
        return out, ref

    KARCHER_CASES = ((10, 1e-5), (1, 1e-5), (0, 1e-5), (10, 1e-3))  # (max_iter, tol)

    def test_karcher(self, shape, dtype):
        _, xs = self.inputs(shape, dtype, scale=0.5)
        for max_iter, tol in self.KARCHER_CASES:
            self._karcher_check(xs, max_iter=max_iter, tol=tol)
            self._karcher_check(xs[:2], max_iter=max_iter, tol=tol)

    def test_karcher_edges(self, dtype):
        """One input (a copy); spread directions (several iterations); zero inputs (left out of
        the mean direction, counted in the mean norm); all norms <= tol (the plain mean,
        bit-identical); a NaN input; mixed dtypes and out_dtype."""
        g = torch.Generator().manual_seed(4)
        spread = [torch.randn(self.EDGE_SHAPE, generator=g).to(dtype).to(self.DEVICE) for _ in range(4)]
        one = kernels.karcher(spread[:1])
        assert torch.equal(one.cpu(), spread[0].cpu()) and one is not spread[0]
        self._karcher_check(spread)
        zero = torch.zeros_like(spread[0])
        self._karcher_check([spread[0], zero, spread[1]])
        tiny = [(x * 1e-8).to(dtype) for x in spread[:3]]
        out, ref = self._karcher_check(tiny, tol=1.0)
        assert_same(out, ref, exact=self.EXACT)
        nan = spread[1].clone()
        nan[1, 2] = float("nan")
        self._karcher_check([spread[0], nan, spread[2]])
        mixed = [spread[0].float(), spread[1].half(), spread[2].bfloat16()]
        for od in (None, torch.bfloat16, torch.float64):
            self._karcher_check(mixed, out_dtype=od)
        # opposite directions (any two one-element tensors of opposite signs): no tangent, the
        # first direction scaled by the mean norm, not NaN (found by tests/test_fuzz_kernels.py)
        for pair in ((0.0770498, -0.2163791), (0.0043, -0.0007), (-3.0, 5.0)):
            opposite = [torch.tensor([v]).to(dtype).to(self.DEVICE) for v in pair]
            self._karcher_check(opposite)
            self._karcher_check([opposite[0], opposite[1], opposite[0]])

    def test_spherical_near_degenerate(self, dtype):
        """Near a degenerate configuration of the Gram scalars the reference runs (kernels/
        spherical.py), so its bytes or its AntipodalError: karcher with an input near the
        antipode of the Karcher mean (its coefficients' float32 sum would cancel, 25 ulps off),
        multislerp on one element where the mean direction nearly vanishes (the coefficients'
        sum cancels; 1.3% off) or vanishes on the Gram matrix only (the float32 reference merges:
        the kernels raised AntipodalError); nuslerp of nearly opposite columns. Found by
        tests/test_fuzz_kernels.py."""

        def t(*values):
            return torch.tensor(values).to(dtype).to(self.DEVICE)

        near_antipode = [t(0.0770, -0.0147), t(-3.1863, -0.8448), t(-2.8848, 1.6159), t(-2.6730, 0.7353)]
        assert_same(kernels.karcher(near_antipode), methods.karcher(_cpu(near_antipode)), exact=True)
        for xs, base in (([t(0.0276), t(0.0825)], t(0.0770)), ([t(0.2626), t(0.0144), t(-0.2356)], t(0.0144))):
            weights = [1.0] * len(xs)
            try:
                want = methods.multislerp(_cpu(xs), weights, base.cpu())
            except AntipodalError:
                with pytest.raises(AntipodalError):
                    kernels.multislerp(xs, weights, base)
                continue
            assert_same(kernels.multislerp(xs, weights, base), want, exact=True)
        # nuslerp's columns at cos -0.995: its factors move 200 times as fast as cos (float32
        # factors: 21 float32 ulps from the float64 reference; methods/gram_scalars.py)
        x0, x1 = t(-2.5, 0.25).reshape(2, 1), t(0.75, 0.0).reshape(2, 1)
        out = kernels.nuslerp([x0, x1], [1.0, 1.0], flatten=False, row_wise=True)
        ref = methods.nuslerp(_cpu([x0, x1]), [1.0, 1.0], flatten=False, row_wise=True)
        ref64 = methods.nuslerp([x0.cpu().double(), x1.cpu().double()], [1.0, 1.0], flatten=False, row_wise=True)
        assert_same(out, ref, exact=False, ref64=ref64.to(ref.dtype))

    # ------------------------------------------------------------------ RAM
    # The reference's float32 operations in its order: bit-identical up to 4 models (torch sums
    # 5 and more in another order: the tolerance rule there).
    def _ram_inputs(self, shape, dtype, k=3, seed=0):
        """Deltas that are zero in about half the elements per model: every count 0 .. k."""
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(shape, generator=g)
        xs = [base + 0.05 * torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.5) for _ in range(k)]
        return base.to(dtype).to(self.DEVICE), [x.to(dtype).to(self.DEVICE) for x in xs]

    def _ram(self, base, xs, exact=None, **kw):
        out = kernels.ram(base, xs, **kw)
        ref = methods.ram(base.cpu(), _cpu(xs), **kw)
        if exact is False:
            ref64 = methods.ram(base.cpu().double(), [x.cpu().double() for x in xs], **kw).to(ref.dtype)
            assert_close_or_nan(out, ref, ref64)
        else:
            assert_same(out, ref, exact=self.EXACT)
        return out

    def test_ram(self, shape, dtype):
        base, xs = self._ram_inputs(shape, dtype)
        for plus in (False, True):
            for eps in (1e-5, 0.03):
                self._ram(base, xs, epsilon=eps, plus=plus)
            self._ram(base, xs, plus=True, r=0.5, alpha=2.0)

    def test_ram_counts(self, dtype):
        """The counting pass's per-model counts are the reference's."""
        base, xs = self._ram_inputs(self.EDGE_SHAPE, dtype, k=4)
        for eps in (1e-5, 0.03):
            shared, unique = kernels._impl(self.BACKEND).ram_counts(base, xs, eps)
            d = torch.stack([x.cpu().float() - base.cpu().float() for x in xs])
            active = d.abs() > eps
            count = active.sum(0)
            assert shared == (active & (count > 1)).flatten(1).sum(1).tolist()
            assert unique == (active & (count == 1)).flatten(1).sum(1).tolist()

    def test_ram_edges(self, dtype):
        """All-zero deltas (the base), NaN and inf inputs, deltas exactly at epsilon (inactive:
        compared in float32) and one step above, epsilon 0 and negative, one model, 5 models
        (tolerance), mixed dtypes and out_dtype."""
        base, xs = self._ram_inputs(self.EDGE_SHAPE, dtype)
        assert torch.equal(self._ram(base, [base.clone()] * 3, plus=True).cpu(), base.cpu())
        nans = [x.clone() for x in xs]
        nans[0][1, :7] = float("nan")
        nans[1][2, :3] = float("inf")
        nan_base = base.clone()
        nan_base[3, :2] = float("nan")
        self._ram(base, nans, plus=True)
        self._ram(nan_base, nans)
        grid = torch.tensor([0.0, 0.1, -0.1, 0.25, 0.5]).to(dtype)
        step = torch.nextafter(grid.float(), torch.tensor(9.0)).to(dtype)  # above: the dtype's next value
        edge = [torch.zeros(200, dtype=dtype, device=self.DEVICE) for _ in range(3)]
        g = torch.Generator().manual_seed(5)
        for x in edge[1:]:
            x.copy_(torch.cat([grid, step])[torch.randint(0, 10, (200,), generator=g)])
        for eps in (float(grid[1]), float(grid[3]), 0.1, 0.0, -1.0):
            for plus in (False, True):
                self._ram(edge[0], edge[1:], epsilon=eps, plus=plus)
        self._ram(base, xs[:1], plus=True)
        five = self._ram_inputs(self.EDGE_SHAPE, dtype, k=5, seed=1)
        self._ram(*five, exact=False, plus=True)
        mixed = [xs[0].float(), xs[1].half(), xs[2].bfloat16()]
        for od in (None, torch.bfloat16, torch.float64):
            self._ram(base, mixed, plus=True, out_dtype=od)


def _triton_block() -> int:
    from mergefast.kernels.triton.utils import block_size

    return block_size()


def assert_close_or_nan(kernel_out, ref_out, ref64):
    """DESIGN's tolerance rule (assert_same with ref64), NaN exactly where the reference has
    NaN (a NaN input makes its whole row NaN in the SLERP family). A float64 output of float32
    work (exact in float32) is compared in float32: the rule's unit is the working precision's."""
    k, r, r64 = kernel_out.cpu(), ref_out.cpu(), ref64.cpu()
    if k.dtype == torch.float64:
        k, r, r64 = k.float(), r.float(), r64.float()
    nan = torch.isnan(r)
    assert torch.equal(torch.isnan(k), nan), "NaN in other places than the reference's"
    assert_same(k.masked_fill(nan, 0), r.masked_fill(nan, 0), exact=False, ref64=r64.masked_fill(nan, 0))
