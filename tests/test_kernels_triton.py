"""The Triton kernels against the references.

On a machine with a CUDA GPU and triton, the suite runs for real on the GPU (TestTritonCuda).
Everywhere else it runs under TRITON_INTERPRET=1 on small CPU tensors (TestTritonInterpret,
and TestTritonInterpretGpuBlocks with the GPU's block sizes), in this process: the variable
must be set before triton is imported, which tests/conftest.py does when there is no GPU.
On a GPU machine `test_triton_interpreted` runs the interpreted suites in a subprocess too.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_cases import KernelSuite, assert_same, generate

pytest_generate_tests = generate

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_CUDA = HAVE_TRITON and not INTERPRET and torch.cuda.is_available()


def _triton_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("triton").split(".")[:2] if p.isdigit())


# Triton < 3.7's interpreter cannot loop to a runtime bound (the selection's histogram
# passes do); the compiled kernels are fine
OLD_INTERPRETER = HAVE_TRITON and _triton_version() < (3, 7)
needs_new_interpreter = pytest.mark.skipif(
    OLD_INTERPRETER, reason="Triton < 3.7's interpreter cannot loop to a runtime bound"
)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
@pytest.mark.skipif(INTERPRET, reason="this process runs the interpreted suites itself")
@needs_new_interpreter
def test_triton_interpreted():
    """Runs TestTritonInterpret and TestTritonInterpretGpuBlocks in a fresh interpreter with
    TRITON_INTERPRET=1 (where this process compiles the kernels: on a GPU machine)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("MERGEFAST_BACKEND", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"{Path(__file__).name}::TestTritonInterpret",
            f"{Path(__file__).name}::TestTritonInterpretGpuBlocks",
        ],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail, tail


class _WindowCases:
    """The GPU selection's sampled window (select/window.py), on the suite's DEVICE."""

    def test_window_finds_the_threshold_without_radix(self):
        """Continuous and tied deltas: the sampled window holds T (no radix fallback)."""
        from mergefast.kernels.triton.select import window as sw
        from mergefast.kernels.triton.task_arithmetic import magnitude_keep
        from mergefast.kernels.triton.utils import block_size

        for dtype in (torch.float32, torch.bfloat16):
            base, x, k, want = _tied_layer(dtype, 0.01 if dtype == torch.float32 else None, self.DEVICE)
            assert sw.scan(base, [x], [k], [0], block_size()).cases[0] is not None
            assert torch.equal(magnitude_keep(base, x, k).cpu(), want)

    @pytest.mark.parametrize(
        "case",
        [
            "inside",
            "only T inside",
            "T at hi",
            "T at lo",
            "T at hi, all ties",
            "T at lo, all ties",
            "hi below T",
            "lo above T",
            "slots overflow",
        ],
    )
    def test_window_outcomes_keep_the_reference_set(self, monkeypatch, case):
        """Every way the window can fall (planted): T a candidate, T at hi or lo with its ties
        split there or all kept, windows that miss (the histogram passes take over), overflowing
        slots."""
        from mergefast.kernels.triton.select import window as sw
        from mergefast.kernels.triton.task_arithmetic import magnitude_keep
        from mergefast.kernels.triton.utils import block_size

        base, x, k, want = _tied_layer(torch.bfloat16, None, self.DEVICE)
        key = (x.float() - base.float()).cpu().view(torch.int32) & 0x7FFFFFFF
        t = int(key.flatten().sort(descending=True).values[k - 1])
        keys = key.unique()
        lower, higher = keys[keys < t], keys[keys > t]
        if case.endswith("all ties"):  # keep exactly the keys >= T
            k, want = int((key >= t).sum()), key >= t
        windows = {
            "inside": (lower[-3], higher[2]),
            "only T inside": (lower[-1], higher[0]),
            "T at hi": (lower[-2], t),
            "T at lo": (t, higher[1]),
            "T at hi, all ties": (lower[-2], t),
            "T at lo, all ties": (t, higher[1]),
            "hi below T": (0, lower[-1]),
            "lo above T": (higher[0], sw.NO_HI),
            "slots overflow": (0, sw.NO_HI),
        }
        lo, hi = (torch.tensor([int(v)], dtype=torch.int32, device=self.DEVICE) for v in windows[case])
        monkeypatch.setattr(sw, "windows", lambda *a: (lo, hi, hi.to(torch.int64) + 1))
        if case == "slots overflow":
            monkeypatch.setattr(sw, "slots_per_block", lambda *a: 16)
        found = sw.scan(base, [x], [k], [0], block_size()).cases[0]
        assert (found is None) == (case in ("hi below T", "lo above T", "slots overflow"))
        assert torch.equal(magnitude_keep(base, x, k).cpu(), want)

    @pytest.mark.parametrize("way", ["histogram", "topk"])
    def test_candidate_thresholds_are_the_ranked_slots(self, way):
        """candidates.thresholds: per CANDIDATE model the aux-th largest key among its used
        slots (garbage past each block's count), whether the offsets from lo take one radix
        pass (11 bits), three (up to 2^31) or crowd on few values (ties); other models are
        left alone."""
        from mergefast.kernels import SelectionOptions
        from mergefast.kernels.triton.select import candidates
        from mergefast.kernels.triton.select import window as sw

        options = SelectionOptions(candidates=way)
        g = torch.Generator().manual_seed(5)
        nblocks, cap = 7, 64
        los, his = [1000, 5, 0, 77], [1900, 0x7FFFFFF0, 0, 2077]
        # per block its first counts[i, 3, block] slots, then garbage above every key
        slots = torch.full((4, nblocks, cap), 0x7FFFFFFF, dtype=torch.int32)
        counts = torch.zeros((4, 4, nblocks), dtype=torch.int32)
        counts[:, 3] = torch.randint(0, cap + 1, (4, nblocks), generator=g)
        inside = []
        for i in range(4):
            keys = los[i] + 1 + torch.randint(0, max(1, his[i] - los[i] - 1), (nblocks, cap), generator=g)
            if i == 3:  # ties: four distinct keys
                keys = los[i] + 1 + 500 * torch.randint(0, 4, (nblocks, cap), generator=g)
            used = torch.arange(cap) < counts[i, 3, :, None]
            slots[i][used] = keys[used].to(torch.int32)
            inside.append(keys[used])
        aux = [1, len(inside[1]) // 2, 0, len(inside[3]) - 3]
        stats = [[0] * 5 + [lo, hi] for lo, hi in zip(los, his)]
        dev = self.DEVICE
        for candidate, bits in (((0, 1, 3), 31), ((0, 3), 11)):
            cases = [(sw.CANDIDATE, aux[i], True) if i in candidate else (sw.KEEP_ALL, 0, False) for i in range(4)]
            state = sw.WindowScan(
                torch.tensor(los, dtype=torch.int32, device=dev),
                torch.tensor(his, dtype=torch.int32, device=dev),
                counts.to(dev),
                slots.to(dev),
                cases,
                sw.candidate_bits(cases, stats),
            )
            assert state.bits == bits
            case_t = torch.tensor(
                [v for c, a, _ in cases for v in (c, a)] + [0] * 4 + aux, dtype=torch.int64, device=dev
            )
            tval = candidates.thresholds(case_t, state, options).cpu()
            for i in candidate:
                want = inside[i].sort(descending=True).values[aux[i] - 1]
                assert int(tval[i]) == int(want), (candidate, i)

    @pytest.mark.parametrize("two_pass", ["window", "histogram"])
    def test_window_and_histogram_models_share_the_rules(self, monkeypatch, two_pass):
        """Two passes with one model's ties cut at its window's hi, one whose window misses
        (the histogram passes cut its ties), one keeping all, and with the histogram passes
        alone: the reference's TIES."""
        from mergefast import kernels, methods
        from mergefast.kernels import SelectionOptions
        from mergefast.kernels.triton.select import window as sw
        from mergefast.kernels.triton.utils import block_size

        base, x, k, _ = _tied_layer(torch.bfloat16, None, self.DEVICE)
        key = (x.float() - base.float()).cpu().view(torch.int32) & 0x7FFFFFFF
        t = int(key.flatten().sort(descending=True).values[k - 1])
        keys = key.unique()
        lower = keys[keys < t]
        lo, hi = (
            torch.tensor(v, dtype=torch.int32, device=self.DEVICE)
            for v in ([int(lower[-2]), 0, 0], [t, int(lower[-1]), 0])
        )
        monkeypatch.setattr(sw, "windows", lambda *a: (lo, hi, hi.to(torch.int64) + 1))
        selection = SelectionOptions(one_read=False, two_pass=two_pass)
        xs, weights, densities = [x, x, x], [0.5, 0.3, 0.9], [0.4, 0.4, 1.0]
        assert sw.scan(base, xs, [k, k, 5000], [0, 1], block_size()).cases[:2] == [
            (sw.AT_HI, k - int((key > t).sum()), True),
            None,
        ]
        # not normalised: a tie kept or dropped in any model changes the sum
        got = kernels.ties(base, xs, weights, densities, normalize=False, selection=selection).cpu()
        want = methods.ties(base.cpu(), [x.cpu()] * 3, weights, densities, normalize=False)
        assert_same(got, want, exact=self.EXACT)


class _OneReadCases:
    """The one-read scheme (select/one_read.py), on the suite's DEVICE: bit-equal to the two
    passes whether it finishes or falls back."""

    def _paths(self, monkeypatch, fn, reference=None):
        """fn(selection) with the one-read scheme, then with the two passes; and whether the
        first call's one-read scheme finished. The tensors here are small: the one read takes
        them from 2^12 elements (one_read_min; 2^20 on a GPU by default, 2^12 interpreted),
        only here, so that the GPU suite's other tests compile no more kernel variants.

        With `reference` (a function of no arguments: the CPU reference's result) in an EXACT
        suite, that stands in for the two passes, which equal it bit for bit there (the
        KernelSuite tests): the interpreter takes seconds to run them."""
        from mergefast.kernels import SelectionOptions
        from mergefast.kernels.triton.select import one_read

        finished = []
        run = one_read.task_arithmetic
        monkeypatch.setattr(one_read, "task_arithmetic", lambda *a, **k: finished.append(run(*a, **k)) or finished[-1])
        fast = fn(SelectionOptions(one_read_min=1 << 12)).cpu()
        if reference is not None and self.EXACT:
            slow = reference()
        else:
            slow = fn(SelectionOptions(one_read=False)).cpu()
        return fast, slow, finished == [True]

    # each dtype and each kind of deltas once (the four pairs took ~25 s interpreted on 2 vCPUs)
    @pytest.mark.parametrize(("input_dtype", "coarse"), [(torch.bfloat16, False), (torch.float32, True)])
    def test_one_read_equals_two_passes(self, monkeypatch, input_dtype, coarse):
        from mergefast import kernels, methods

        g = torch.Generator().manual_seed(int(coarse))
        n = 5003
        dtype = input_dtype
        base = (0.02 * torch.randn(n, generator=g)).to(dtype)
        step = (
            (lambda: torch.randint(-25, 26, (n,), generator=g) / 512)
            if coarse
            else (lambda: 0.002 * torch.randn(n, generator=g))
        )
        cpu_xs = [(base.float() + step()).to(dtype) for _ in range(3)]
        xs = [x.to(self.DEVICE) for x in cpu_xs]
        cpu_base, base = base, base.to(self.DEVICE)
        ta = dict(sparsify="magnitude", normalize=True, lambda_=0.7)
        for d in ([0.5, 0.2, 0.93], [0.1, 1.0, 0.0]):
            fast, slow, finished = self._paths(
                monkeypatch,
                lambda sel, d=d: kernels.ties(base, xs, [0.5, -0.3, 0.9], d, selection=sel),
                lambda d=d: methods.ties(cpu_base, cpu_xs, [0.5, -0.3, 0.9], d),
            )
            assert finished and torch.equal(fast, slow), d
            fast, slow, finished = self._paths(
                monkeypatch,
                lambda sel, d=d: kernels.task_arithmetic(base, xs, [0.5, 0.3, 0.2], densities=d, **ta, selection=sel),
                lambda d=d: methods.task_arithmetic(cpu_base, cpu_xs, [0.5, 0.3, 0.2], densities=d, **ta),
            )
            assert finished and torch.equal(fast, slow), d

    def test_slots_past_the_counts_are_never_read(self, monkeypatch):
        """The window counts leave a block's slots past its count as they were: with every
        fresh int32 buffer of the window scan and of the one-read pass holding the largest
        key, both schemes still find thresholds among the candidates and give the
        reference's TIES."""
        from mergefast import kernels, methods
        from mergefast.kernels.triton.select import candidates, one_read, records
        from mergefast.kernels.triton.select import window as sw

        class GarbageTorch:
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def empty(*args, **kwargs):
                t = torch.empty(*args, **kwargs)
                return t.fill_(0x7FFFFFFF) if t.dtype == torch.int32 else t

        for module in (sw, one_read, records):
            monkeypatch.setattr(module, "torch", GarbageTorch())
        bits = []
        run = candidates.thresholds
        monkeypatch.setattr(candidates, "thresholds", lambda c, s, o: bits.append(s.bits) or run(c, s, o))
        g = torch.Generator().manual_seed(7)
        n = 6007
        base = (0.02 * torch.randn(n, generator=g)).to(self.DEVICE)
        xs = [base + 0.002 * torch.randn(n, generator=g).to(self.DEVICE) for _ in range(3)]
        weights, densities = [0.5, -0.3, 0.9], [0.5, 0.2, 0.7]
        want = methods.ties(base.cpu(), [x.cpu() for x in xs], weights, densities)
        fast, slow, finished = self._paths(
            monkeypatch, lambda sel: kernels.ties(base, xs, weights, densities, selection=sel)
        )
        assert finished and len(bits) == 2 and min(bits) > 0, bits
        assert torch.equal(fast, slow)
        assert_same(fast, want, exact=self.EXACT)

    def test_windows_are_the_sample_ranks(self):
        """window.windows: per model, its keys at the sampled elements sorted from the
        largest, taken at window_ranks (open ends: NO_HI and 0), and the pass's threshold
        hi + 1; a model keeping all or nothing gets a window nothing is in."""
        from mergefast.kernels.triton.select import window as sw

        g = torch.Generator().manual_seed(4)
        n, m = 9000, 512
        base = (0.02 * torch.randn(n, generator=g)).bfloat16()
        xs = [(base.float() + 0.002 * torch.randn(n, generator=g)).bfloat16() for _ in range(4)]
        keep = [4000, n, 0, 17]
        lo, hi, thr = (
            t.cpu() for t in sw.windows(base.to(self.DEVICE), [x.to(self.DEVICE) for x in xs], keep, [0, 3], m)
        )
        pos = sw.sample_positions(n, m, torch.device("cpu"))
        for i in (0, 3):
            keys = (xs[i][pos].float() - base[pos].float()).view(torch.int32) & 0x7FFFFFFF
            ranked = keys.sort(descending=True).values
            top_hi, top_lo = sw.window_ranks(keep[i], n, m)
            assert int(hi[i]) == (int(ranked[top_hi]) if top_hi >= 0 else sw.NO_HI)
            assert int(lo[i]) == (int(ranked[top_lo]) if top_lo < m else 0)
            assert int(thr[i]) == int(hi[i]) + 1
        assert thr[[1, 2]].tolist() == [0, 1 << 31]
        assert lo[[1, 2]].tolist() == [sw.NO_HI] * 2 and hi[[1, 2]].tolist() == [0, 0]

    @pytest.mark.parametrize("case", ["T at hi", "T at lo", "T at hi, all ties", "hi below T", "records overflow"])
    def test_one_read_outcomes(self, monkeypatch, case):
        """Planted windows: T at either end with its ties cut along the records or all kept
        (finishes), a window that misses or records past their memory (falls back)."""
        from mergefast import kernels, methods
        from mergefast.kernels.triton.select import records
        from mergefast.kernels.triton.select import window as sw

        base, x, k, _ = _tied_layer(torch.bfloat16, None, self.DEVICE)
        key = (x.float() - base.float()).cpu().view(torch.int32) & 0x7FFFFFFF
        t = int(key.flatten().sort(descending=True).values[k - 1])
        keys = key.unique()
        lower, higher = keys[keys < t], keys[keys > t]
        density = 0.4
        if case.endswith("all ties"):  # keep exactly the keys >= T
            density = float((key >= t).sum()) / key.numel()
        windows = {
            "T at hi": (lower[-2], t),
            "T at lo": (t, higher[1]),
            "T at hi, all ties": (lower[-2], t),
            "hi below T": (0, lower[-1]),
            "records overflow": (0, sw.NO_HI),
        }  # every element a record
        lo, hi = (torch.tensor([int(v)], dtype=torch.int32, device=self.DEVICE) for v in windows[case])
        monkeypatch.setattr(sw, "windows", lambda *a: (lo, hi, hi.to(torch.int64) + 1))
        if case == "records overflow":
            monkeypatch.setattr(records, "RECORD_SLACK", 0.01)
        fast, slow, finished = self._paths(
            monkeypatch, lambda sel: kernels.ties(base, [x], [1.0], [density], selection=sel)
        )
        assert finished == (case.startswith("T at")), case
        assert torch.equal(fast, slow)
        assert_same(fast, methods.ties(base.cpu(), [x.cpu()], [1.0], [density]), exact=self.EXACT)


# The suites are defined only where they can run (no screens of skips elsewhere).
class _Interpreted(_WindowCases, _OneReadCases, KernelSuite):
    """Interpreted Triton on CPU tensors: small sizes (the interpreter runs numpy per
    program); the kernels use 256-element blocks there, so these still span several blocks."""

    DEVICE = "cpu"
    BACKEND = "triton"
    EXACT = True
    # 7 x 61: rows for the per-row methods and two 256-element blocks (13 x 61 took 30 s more
    # of the interpreted suite on 2 vCPUs, DELLA's masks pass interpreting every row)
    SHAPES = [(1,), (3,), (0,), (7, 61)]
    TIE_N = 1100
    TIES_CASES = KernelSuite.TIES_CASES[:4]
    TIE_DENSITIES = [0.0, 0.37, 0.9999, 1.0]
    BREADCRUMBS_CASES = KernelSuite.BREADCRUMBS_CASES[1:2]
    BREADCRUMBS_CUTS = [(0.37, 0.13)]
    BREADCRUMBS_DTYPES = [torch.bfloat16]
    BREADCRUMBS_EDGE_SHAPE = (13, 61)
    DELLA_EDGE_MODES = [(None, False), ("sum", True)]  # each flag both ways: ~10 s less per dtype
    # ~8 s per dtype interpreted (2-vCPU AMD EPYC VM); the masks pass converts every input dtype
    # to float32 keys on load, and test_della runs it on each dtype
    DELLA_MASK_DTYPES = [torch.bfloat16]
    THREAD_COUNTS = (1,)  # torch's thread count does not reach the Triton kernels
    NUSLERP_WEIGHTS = ([0.3, 0.7],)
    EDGE_SHAPE = (5, 33)
    ARCEE_LONG_ROW = 600
    ARCEE_WIDE = (3, 600)
    ARCEE_DTYPES = [torch.bfloat16]
    MULTISLERP_WEIGHTS = ([0.2, 0.3, 0.6],)
    KARCHER_CASES = ((10, 1e-5), (1, 1e-3))
    # SCE: ~1 s an interpreted call on a shared 2-vCPU VM; the edge cases cover 0 and 0.1
    SCE_TOPKS = (0.3, 1.0)
    SCE_EDGE_ONE_TOPK = True
    SCE_MANY = False
    # `slow` (tests/conftest.py) but the elementwise kernels' tests, well under a second here
    SLOW_TESTS = "all"
    FAST_TESTS = {
        "test_linear",
        "test_linear_mixed_dtypes_and_out_dtype",
        "test_linear_zero_weight_sum",
        "test_slerp",
        "test_slerp_out_dtype",
        "test_task_arithmetic",
        "test_candidate_thresholds_are_the_ranked_slots",
        "test_windows_are_the_sample_ranks",
        "test_nuslerp_row_wise_and_out_dtype",
        "test_nuslerp_antiparallel",
        "test_model_stock",
        "test_model_stock_opposite",
        "test_nearswap",
        "test_nearswap_edges",
        "test_ram",
    }


class _InterpretedGpuBlocks(_Interpreted):
    """The interpreted suite again with the GPU's sizes (utils.BLOCK for the two passes, and
    SelectionOptions.one_read_block with one_read.ONE_READ_MIN for the one read): what holds
    only with the interpreter's 256-element blocks fails here, not first on a GPU."""

    # Block sizes are what this suite adds; every dtype runs in the suite above (bf16 here
    # saves ~2 minutes of interpreted kernels on the 2-core VM).
    SUITE_DTYPES = [torch.bfloat16]

    @pytest.fixture(autouse=True)
    def _gpu_sizes(self, monkeypatch):
        from mergefast.kernels.triton import utils
        from mergefast.kernels.triton.select import one_read

        monkeypatch.setattr(utils, "INTERPRET_BLOCK", utils.BLOCK)
        monkeypatch.setattr(
            one_read, "_sizes", lambda options: (options.one_read_min or one_read.ONE_READ_MIN, options.one_read_block)
        )

    # The SLERP family's only block-size-dependent logic is a row's split into blocks:
    # test_slerp_family_long_rows covers it here; the rest runs in the suite above.
    test_nuslerp = test_nuslerp_parallel_zero_nan = test_model_stock = test_model_stock_edges = None
    # arcee_fusion's only block-size-dependent logic is a row's split into blocks (long rows,
    # in the suite above); its selection's grid does not depend on the block size
    test_arcee_fusion = test_arcee_fusion_edge_cases = None
    # multislerp and karcher: the same Gram pass; RAM's passes are elementwise (per-block counts)
    test_multislerp = test_multislerp_edges = test_karcher = test_karcher_edges = None
    test_ram = test_ram_counts = test_ram_edges = None
    # SCE's only block-size-dependent logic is the selection's (the TIES tests cover it here)
    test_sce = test_sce_ties_and_edge_cases = None
    # DELLA's masks pass takes rows in CHUNK columns, whatever the block size (~20 s of
    # interpreted rows here); its apply is elementwise, as the DARE tests' here
    test_della = test_della_rescale = test_della_masks_are_the_references = None
    test_della_edge_cases = test_della_same_on_any_thread_count = None


class _Cuda(_WindowCases, _OneReadCases, KernelSuite):
    """Real Triton on the GPU, larger sizes."""

    DEVICE = "cuda"
    BACKEND = "triton"
    EXACT = False  # no FMA contraction, but GPU division may differ in the last bit
    SHAPES = [(1,), (2,), (3,), (0,), (4097,), (37, 129), (1000, 1003)]
    TIE_N = 200_000

    def test_backend_is_triton(self, monkeypatch):
        from mergefast import kernels

        monkeypatch.delenv("MERGEFAST_BACKEND", raising=False)
        assert kernels.backend("cuda") == "triton"


def _tied_layer(dtype, spread=None, device="cpu"):
    """base and one fine-tune on `device` (5000 elements; without `spread`, deltas on a coarse
    grid: many ties), the number kept at density 0.4 and the reference's kept set (CPU)."""
    from mergefast import methods
    from mergefast.methods.numerics import keep_count

    g = torch.Generator().manual_seed(3)
    base = (torch.randn(5000, generator=g) * 0.02).to(dtype)
    if spread is None:
        step = torch.randint(-40, 41, (5000,), generator=g).float() * 1e-4
    else:
        step = torch.randn(5000, generator=g) * spread
    x = (base.float() + step).to(dtype)
    want = methods.magnitude_mask(x.float() - base.float(), 0.4)
    return base.to(device), x.to(device), keep_count(0.4, 5000), want


if HAVE_TRITON and INTERPRET:
    TestTritonInterpret = needs_new_interpreter(_Interpreted)
    TestTritonInterpretGpuBlocks = needs_new_interpreter(_InterpretedGpuBlocks)
if HAVE_CUDA:
    TestTritonCuda = pytest.mark.gpu(_Cuda)


def _assert_della_masks(out, sums, base, xs, rules, seed, norms=True):
    """The keep bits in `out`'s words (and, with `norms`, the L1 norms `sums`) are della_mask's
    for each model's (density, epsilon) in `rules`, stream seed `seed`, tensor "t"."""
    from kernel_cases import _TA_MODULE, assert_della_keeps

    for i, (x, (density, epsilon)) in enumerate(zip(xs, rules)):
        delta = x.cpu().float() - base.cpu().float()
        want = _TA_MODULE.della_mask(delta, density, epsilon, seed=seed, tensor_name="t", model_index=i)
        assert_della_keeps(out, i, delta.view(base.shape), want, i)
        if norms:
            wanted = [delta.abs().double().sum().item(), torch.where(want, delta.abs(), 0.0).double().sum().item()]
            assert sums[2 * i : 2 * i + 2] == pytest.approx(wanted, rel=1e-12, nan_ok=True), i


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs CUDA")
def test_della_masks_of_long_rows_on_the_gpu(monkeypatch):
    """Rows of 14336 columns (an 8B model's down_proj), 14 steps of the masks pass each: the
    reference's keep bits for bf16 fine-tune-like deltas (ranked in the kernel: no row flagged)
    and for many ties and NaNs (rows flagged: ranked by masks_torch)."""
    from kernel_cases import nan_inputs

    from mergefast.kernels.della import keep_rule, stream_keys
    from mergefast.kernels.triton import della

    cols = 14336
    g = torch.Generator().manual_seed(9)
    base = torch.randn(3 * cols, generator=g) * 0.02
    tuned = (base.bfloat16(), [(base + torch.randn(3 * cols, generator=g) * 2e-3).bfloat16() for _ in range(3)])
    flagged = []
    ranked_by_sort = della.masks_torch
    monkeypatch.setattr(della, "masks_torch", lambda *a: flagged.append(len(a[-1])) or ranked_by_sort(*a))
    rule = keep_rule(0.5, 0.3, cols)
    for base, xs in (tuned, nan_inputs(3 * cols, torch.bfloat16)):
        base, xs = base.cuda().view(3, cols), [x.cuda().view(3, cols) for x in xs]
        out, sums = della.della_masks(base, xs, stream_keys(3, "t", 3), [rule[0]] * 3, [rule[1]] * 3, cols, base.dtype)
        _assert_della_masks(out, sums, base, xs, [(0.5, 0.3)] * 3, seed=3, norms=False)
    # the fine-tune-like rows leave ~117 open per model (ties of bf16 deltas), under OPEN_CAP
    assert flagged == [3], flagged  # the ties and NaNs only


def _della_step_inputs():
    """(base, models, output dtype) of 4 x 50: random float32 deltas (few ties), many ties,
    NaNs, and half the deltas zero (a frozen part: dropped, ranked below the rest)."""
    from kernel_cases import nan_inputs, tied_inputs

    g = torch.Generator().manual_seed(5)
    base = torch.randn(200, generator=g) * 0.02
    noise = [torch.randn(200, generator=g) * 2e-3 for _ in range(3)]
    frozen = [torch.where(torch.rand(200, generator=g) < 0.5, 0.0, v) for v in noise]
    return [
        (base, [base + v for v in noise], torch.float32),
        (*tied_inputs(200, torch.bfloat16), torch.bfloat16),
        (*nan_inputs(200, torch.float16), torch.float32),
        (base, [base + v for v in frozen], torch.bfloat16),
    ]


@pytest.mark.skipif(not (HAVE_TRITON and INTERPRET), reason="needs triton and TRITON_INTERPRET=1")
@pytest.mark.parametrize("shift, open_cap", [(16, 256), (22, 256), (22, 2)])
def test_della_masks_in_steps(monkeypatch, shift, open_cap):
    """The masks pass over rows of several steps (16 columns a step; the suites' rows take
    one): with the GPU's buckets, with one bucket a binade (many elements left open, ranked by
    compares), and with rows of more than OPEN_CAP open ones (flagged, ranked by masks_torch).
    The reference's keep bits and L1 norms, with a keep-all model and a negative epsilon."""
    import triton.language as tl

    from mergefast.kernels.della import keep_rule, stream_keys
    from mergefast.kernels.triton import della, della_masks

    monkeypatch.setattr(della, "CHUNK", 16)
    monkeypatch.setattr(della, "OPEN_CAP", open_cap)
    monkeypatch.setattr(della_masks, "SHIFT", tl.constexpr(shift))
    flagged = []
    ranked_by_sort = della.masks_torch
    monkeypatch.setattr(della, "masks_torch", lambda *a: flagged.append(len(a[-1])) or ranked_by_sort(*a))
    rules = [(0.5, 0.4), (1.0, 0.1), (0.3, -0.2)]  # (density, epsilon) of each model
    for base, xs, out_dtype in _della_step_inputs():
        base, xs = base.view(4, 50), [x.view(4, 50) for x in xs]
        kept = [keep_rule(density, epsilon, 50) for density, epsilon in rules]
        out, sums = della.della_masks(
            base, xs, stream_keys(3, "t", 3), [k[0] for k in kept], [k[1] for k in kept], 50, out_dtype
        )
        _assert_della_masks(out, sums, base, xs, rules, seed=3)
    assert bool(flagged) == (open_cap == 2), flagged
