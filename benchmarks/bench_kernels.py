"""Merge-kernel benchmarks on one 7B layer: base + 3 fine-tunes of 11008 x 4096 bf16.

    pytest benchmarks/bench_kernels.py --benchmark-only [--benchmark-columns=median,rounds]

Providers per op:
  reference     the torch reference in mergefast.methods (the spec; readable, not fast)
  mergekit      a mergekit-style composition written here: stacked N x |T| temporaries,
                argsort selection (what mergekit 0.1.5 does, not its code)
  torch         the best plain-torch composition we could write: kthvalue threshold,
                in-place float32 ops, no stacking
  cpu-ext       mergefast.kernels on CPU tensors (the C++ library libmergefast_cpu)
  triton        mergefast.kernels on CUDA tensors (skipped without a GPU)
extra_info: ms (median; on CUDA from triton.testing.do_bench's events), GB/s over the minimal
traffic (every input read once, the output written once, bf16), and for Triton the fraction of
HBM peak.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import SHAPE, sync

from mergefast import kernels, methods
from mergefast.kernels import SelectionOptions
from mergefast.methods.numerics import keep_count
from mergefast.methods.slerp import slerp_coefficients

WEIGHTS = [0.5, 0.3, 0.2]
DENSITIES = [0.5, 0.5, 0.5]
T = 0.4
ROUNDS = int(os.environ.get("MERGEFAST_BENCH_ROUNDS", "3"))
SLOW_ROUNDS = 1  # argsort compositions take tens of seconds on 2 cores
# HBM peak (bytes/s) by GPU name, for the fraction-of-peak figure
HBM_PEAK = {"H100 80GB HBM3": 3.35e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


# ------------------------------------------------------------------ baselines (written here)


def mergekit_style_ties(base, xs, weights, densities):
    """TIES as mergekit 0.1.5 composes it: stacked deltas, argsort per model, stacked masks."""
    deltas = torch.stack([x - base for x in xs])  # K x |T| in bf16
    for i, d in enumerate(densities):
        flat = deltas[i].view(-1)
        k = int(d * flat.numel())
        order = torch.argsort(flat.abs().float(), descending=True)  # int64 |T|
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[order[:k]] = True
        deltas[i] = (flat * mask).view_as(deltas[i])
    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device).view(-1, 1, 1)
    weighted = deltas * w
    sign = torch.where(weighted.sum(0) >= 0, 1, -1).to(weighted.dtype)
    agree = weighted.sign() == sign
    mixed = (weighted * agree).sum(0)
    divisor = (w * agree).sum(0)
    divisor[divisor == 0] = 1
    return (base + mixed / divisor).to(base.dtype)


def torch_ties(base, xs, weights, densities):
    """Best plain torch: kthvalue thresholds, float32 in-place ops, no K x |T| stack."""
    b = base.float()
    n = b.numel()
    total = torch.zeros_like(b)
    wds = []
    for x, w, d in zip(xs, weights, densities):
        delta = x.float().sub_(b)
        k = keep_count(d, n)
        mag = delta.abs()
        thr = torch.kthvalue(mag.view(-1), n - k + 1).values if 0 < k < n else None
        if thr is not None:
            delta.mul_(mag >= thr)
        del mag
        delta.mul_(w)
        total.add_(delta)
        wds.append(delta)
    pos = total >= 0
    acc = torch.zeros_like(b)
    div = torch.zeros_like(b)
    for wd, w in zip(wds, weights):
        agree = torch.where(pos, wd > 0, wd < 0)
        acc.add_(torch.where(agree, wd, 0.0))
        div.add_(agree, alpha=w)
    div[div == 0] = 1
    return acc.div_(div).add_(b).to(base.dtype)


def mergekit_style_linear(xs, weights):
    stacked = torch.stack(xs)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
    return ((stacked * w).sum(0) / w.sum()).to(xs[0].dtype)


def torch_linear(xs, weights):
    acc = xs[0].float().mul_(weights[0])
    for x, w in zip(xs[1:], weights[1:]):
        acc.add_(x.float(), alpha=w)
    return acc.div_(sum(weights)).to(xs[0].dtype)


def torch_slerp(a, b, t):
    af, bf = a.float().view(-1), b.float().view(-1)
    na, nb = torch.linalg.vector_norm(af).item(), torch.linalg.vector_norm(bf).item()
    dot = (torch.dot(af, bf) / (na * nb)).item()
    c0, c1 = slerp_coefficients(dot, t)
    return af.mul_(c0).add_(bf, alpha=c1).view_as(a).to(a.dtype)


# ------------------------------------------------------------------ timing runner


def _run(benchmark, fn, device, nbytes, rounds=ROUNDS):
    def call():
        out = fn()
        sync(device)
        return out

    call()  # warm-up (Triton compile, page faults)
    benchmark.pedantic(call, rounds=rounds, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: one call, nothing timed
        return
    median = benchmark.stats.stats.median
    if device == "cuda":
        median = _cuda_event_median(benchmark, fn, median)
    benchmark.extra_info["ms"] = round(median * 1e3, 3 if device == "cuda" else 2)
    benchmark.extra_info["GB/s"] = round(nbytes / median / 1e9, 2)
    benchmark.extra_info["shape"] = "x".join(map(str, SHAPE))
    if device == "cuda":
        _record_gpu(benchmark, nbytes / median)


def _cuda_event_median(benchmark, fn, host_median: float) -> float:
    """The median seconds of `fn` by CUDA events over many calls (triton's do_bench); the
    host-timed median, which adds the launch and sync latency (0.22 against 0.089 ms for
    linear on an H200), stays in extra_info as host_timed_ms."""
    from triton.testing import do_bench

    benchmark.extra_info["host_timed_ms"] = round(host_median * 1e3, 3)
    return do_bench(fn, warmup=5, rep=50, return_mode="median") * 1e-3


def _record_gpu(benchmark, bytes_per_s: float) -> None:
    """The GPU's name and, where its peak is known (HBM_PEAK), the fraction of it reached."""
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in HBM_PEAK.items() if k in name), None)
    benchmark.extra_info["gpu"] = name
    if peak:
        benchmark.extra_info["hbm_fraction"] = round(bytes_per_s / peak, 3)


def _numel():
    return SHAPE[0] * SHAPE[1]


def _inputs(request, device):
    return request.getfixturevalue("layer_cuda" if device == "cuda" else "layer_cpu")


TIES_PROVIDERS = ["reference", "mergekit", "torch", "cpu-ext", "cpu-ext-two-pass", "triton", "triton-two-pass"]


TWO_PASSES = SelectionOptions(one_read=False)  # the one-read scheme off


@pytest.mark.parametrize("provider", TIES_PROVIDERS)
def test_ties(benchmark, request, provider):
    device = "cuda" if provider.startswith("triton") else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = "ties"
    fns = {
        "reference": lambda: methods.ties(base, xs, WEIGHTS, DENSITIES),
        "mergekit": lambda: mergekit_style_ties(base, xs, WEIGHTS, DENSITIES),
        "torch": lambda: torch_ties(base, xs, WEIGHTS, DENSITIES),
        "cpu-ext": lambda: kernels.ties(base, xs, WEIGHTS, DENSITIES),
        "cpu-ext-two-pass": lambda: kernels.ties(base, xs, WEIGHTS, DENSITIES, selection=TWO_PASSES),
        "triton": lambda: kernels.ties(base, xs, WEIGHTS, DENSITIES),
        "triton-two-pass": lambda: kernels.ties(base, xs, WEIGHTS, DENSITIES, selection=TWO_PASSES),
    }
    slow = provider in ("reference", "mergekit") and device == "cpu"
    # minimal traffic: base + 3 models read once, output written once (bf16)
    _run(benchmark, fns[provider], device, 5 * 2 * _numel(), rounds=SLOW_ROUNDS if slow else ROUNDS)
    if provider == "triton-two-pass":
        # bytes the two-pass scheme moves: 2 (K+1) |T| reads + |T| write (peers doc §4.3)
        benchmark.extra_info["two_pass_GB/s"] = round(9 * 2 * _numel() / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("provider", ["reference", "mergekit", "torch", "cpu-ext", "triton"])
def test_linear(benchmark, request, provider):
    device = "cuda" if provider == "triton" else "cpu"
    _, xs = _inputs(request, device)
    benchmark.group = "linear"
    fns = {
        "reference": lambda: methods.linear(xs, WEIGHTS),
        "mergekit": lambda: mergekit_style_linear(xs, WEIGHTS),
        "torch": lambda: torch_linear(xs, WEIGHTS),
        "cpu-ext": lambda: kernels.linear(xs, WEIGHTS),
        "triton": lambda: kernels.linear(xs, WEIGHTS),
    }
    _run(benchmark, fns[provider], device, 4 * 2 * _numel())


@pytest.mark.parametrize("provider", ["reference", "torch", "cpu-ext", "triton"])
def test_slerp(benchmark, request, provider):
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = "slerp"
    fns = {
        "reference": lambda: methods.slerp(base, xs[0], T),
        "torch": lambda: torch_slerp(base, xs[0], T),
        "cpu-ext": lambda: kernels.slerp(base, xs[0], T),
        "triton": lambda: kernels.slerp(base, xs[0], T),
    }
    # the kernel reads a and b twice (reduction, then apply); minimal traffic counts once
    _run(benchmark, fns[provider], device, 3 * 2 * _numel())


DARE_METHODS = {"dare_ties": "sum", "dare_linear": None}  # method -> consensus


@pytest.mark.parametrize("method", sorted(DARE_METHODS))
@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "triton"])
def test_dare(benchmark, request, method, provider):
    """DARE with mergekit's defaults (L1 rescale on): the norms pass, then the apply."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = method
    kw = dict(
        densities=DENSITIES,
        sparsify="random",
        consensus=DARE_METHODS[method],
        rescale=True,
        seed=0,
        tensor_name="model.layers.0.mlp.up_proj.weight",
    )
    op = methods.task_arithmetic if provider == "reference" else kernels.task_arithmetic
    _run(
        benchmark,
        lambda: op(base, xs, WEIGHTS, **kw),
        device,
        5 * 2 * _numel(),
        rounds=SLOW_ROUNDS if provider == "reference" else ROUNDS,
    )


# SLERP family: op -> (call with (base, xs, module), inputs read); module is methods or kernels
SLERP_FAMILY = {
    "nuslerp": (lambda b, xs, m: m.nuslerp(xs[:2], [0.4, 0.6], b), 3),
    "nuslerp-rows": (lambda b, xs, m: m.nuslerp(xs[:2], [0.4, 0.6], b, flatten=False), 3),
    "nuslerp-row_wise": (lambda b, xs, m: m.nuslerp(xs[:2], [0.4, 0.6], b, flatten=False, row_wise=True), 3),
    "model_stock": (lambda b, xs, m: m.model_stock(b, xs), 4),
    "model_stock-rows": (lambda b, xs, m: m.model_stock(b, xs, filter_wise=True), 4),
    "nearswap": (lambda b, xs, m: m.nearswap(b, xs[0], 1e-3), 2),
}


@pytest.mark.parametrize("op", list(SLERP_FAMILY))
@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "triton"])
def test_slerp_family(benchmark, request, op, provider):
    """nuslerp (base + 2, task vectors), model_stock (base + 3), nearswap (base + 1): the
    kernels read their inputs twice (reduction, then apply; nearswap once); the minimal
    traffic counts them once."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = op
    fn, inputs = SLERP_FAMILY[op]
    module = methods if provider == "reference" else kernels
    _run(benchmark, lambda: fn(base, xs, module), device, (inputs + 1) * 2 * _numel())


SCE_TOPK = 0.1  # mergekit's documented example value


@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "triton"])
def test_sce(benchmark, request, provider):
    """SCE with select_topk 0.1: the variance selection (the reference sorts every
    variance), the energies, then the election and merge."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = "sce"
    op = methods.sce if provider == "reference" else kernels.sce
    _run(
        benchmark,
        lambda: op(base, xs, select_topk=SCE_TOPK),
        device,
        5 * 2 * _numel(),
        rounds=SLOW_ROUNDS if provider == "reference" else ROUNDS,
    )


BREADCRUMBS_METHODS = {"breadcrumbs_ties": "sum", "breadcrumbs": None}  # method -> consensus
GAMMAS = [0.01, 0.01, 0.01]  # mergekit's default


@pytest.mark.parametrize("method", sorted(BREADCRUMBS_METHODS))
@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "cpu-ext-two-pass", "triton"])
def test_breadcrumbs(benchmark, request, method, provider):
    """Breadcrumbs with mergekit's default gamma: two cuts per model from the exact
    selection, then the apply. The CPU reads the inputs once (csrc/cpu/select/one_read_band.cpp;
    "cpu-ext-two-pass": twice), the GPU twice; minimal traffic is once."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = method
    kw = dict(densities=DENSITIES, gammas=GAMMAS, sparsify="magnitude_outliers", consensus=BREADCRUMBS_METHODS[method])
    if provider == "cpu-ext-two-pass":
        kw["selection"] = TWO_PASSES
    op = methods.task_arithmetic if provider == "reference" else kernels.task_arithmetic
    _run(
        benchmark,
        lambda: op(base, xs, WEIGHTS, **kw),
        device,
        5 * 2 * _numel(),
        rounds=SLOW_ROUNDS if provider == "reference" else ROUNDS,
    )


DELLA_METHODS = {"della": "sum", "della_linear": None}  # method -> consensus


@pytest.mark.parametrize("method", sorted(DELLA_METHODS))
@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "triton"])
def test_della(benchmark, request, method, provider):
    """DELLA with mergekit's defaults (epsilon 0.15, L1 rescale on): the masks pass (row
    ranks, keep bits), then the apply."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = method
    kw = dict(
        densities=DENSITIES,
        epsilons=[0.15] * 3,
        sparsify="della",
        consensus=DELLA_METHODS[method],
        normalize=method == "della",
        rescale=True,
        seed=0,
        tensor_name="model.layers.0.mlp.up_proj.weight",
    )
    op = methods.task_arithmetic if provider == "reference" else kernels.task_arithmetic
    _run(
        benchmark,
        lambda: op(base, xs, WEIGHTS, **kw),
        device,
        5 * 2 * _numel(),
        rounds=SLOW_ROUNDS if provider == "reference" else ROUNDS,
    )


@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "triton"])
def test_arcee_fusion(benchmark, request, provider):
    """arcee_fusion of the base and the first fine-tune: per-row KL and the exact quartiles of
    the importance (the reference: float32 softmaxes and three kthvalues), then the apply."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = "arcee_fusion"
    op = methods.arcee_fusion if provider == "reference" else kernels.arcee_fusion
    _run(
        benchmark,
        lambda: op(base, xs[0]),
        device,
        3 * 2 * _numel(),
        rounds=SLOW_ROUNDS if provider == "reference" else ROUNDS,
    )


# multislerp and karcher (the Gram pass, then one weighted pass), ram (one pass), ramplus_tl
# (a counting pass, then the elementwise pass): op -> call with (base, xs, module); karcher
# takes the base as a fourth input (it has no base)
SPHERICAL_RAM = {
    "multislerp": lambda b, xs, m: m.multislerp(xs, WEIGHTS, b),
    "karcher": lambda b, xs, m: m.karcher([b, *xs]),
    "ram": lambda b, xs, m: m.ram(b, xs),
    "ramplus_tl": lambda b, xs, m: m.ramplus_tl(b, xs),
}


@pytest.mark.parametrize("op", list(SPHERICAL_RAM))
@pytest.mark.parametrize("provider", ["reference", "cpu-ext", "triton"])
def test_spherical_ram(benchmark, request, op, provider):
    """multislerp, karcher, ram, ramplus_tl on base + 3; the minimal traffic reads each input
    once (multislerp, karcher and ramplus_tl read them twice)."""
    device = "cuda" if provider == "triton" else "cpu"
    base, xs = _inputs(request, device)
    benchmark.group = op
    module = methods if provider == "reference" else kernels
    fn = SPHERICAL_RAM[op]
    rounds = SLOW_ROUNDS if provider == "reference" else ROUNDS
    _run(benchmark, lambda: fn(base, xs, module), device, 5 * 2 * _numel(), rounds=rounds)


@pytest.mark.parametrize("op", ["ties", "linear", "slerp"])
def test_cpu_extra_memory(benchmark, op):
    """Peak RSS growth of one cpu-ext call in a fresh process (the output included), against
    the output size. The goal: besides the output, at most the output's size again (TIES
    in one read keeps its records, ~7 % of the elements, and candidate keys: ~0.5x)."""
    import json
    import subprocess
    import sys

    code = f"""
import json, sys, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
from conftest import _layer
from mergefast import kernels
base, xs = _layer("cpu")
kernels.linear([base[:8]], [1.0]); kernels.ties(base[:8], [x[:8] for x in xs], [1,1,1], [.5,.5,.5])
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")   # reset the peak-RSS mark (Linux)
before = rss("VmRSS:")
op = {op!r}
if op == "ties": out = kernels.ties(base, xs, {WEIGHTS!r}, {DENSITIES!r})
elif op == "linear": out = kernels.linear(xs, {WEIGHTS!r})
else: out = kernels.slerp(base, xs[0], {T!r})
after = rss("VmHWM:")
print(json.dumps({{"extra_mb": after - before, "out_mb": out.numel() * out.element_size() / 2**20}}))
"""
    res = json.loads(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=dict(os.environ))
        .stdout.strip()
        .splitlines()[-1]
    )
    benchmark.group = "memory"
    benchmark.extra_info.update({k: round(v, 1) for k, v in res.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert res["extra_mb"] - res["out_mb"] <= res["out_mb"] + 16, res


# ------------------------------------------------------------------ script mode (GPU sweep)


def _gpu_sweep() -> None:
    """Times Triton TIES with each SelectionOptions choice (the one read over its block size
    and with each way to a candidate's threshold; the two passes with each selection scheme
    and over the histogram passes' programs per SM), then the kernels over block sizes / warps
    (gpu_check.sh runs it to choose SelectionOptions' GPU defaults, and BLOCK and NUM_WARPS in
    kernels/triton/utils.py), then DELLA's masks pass (_della_masks_sweep)."""
    from conftest import _layer
    from triton.testing import do_bench

    from mergefast.kernels.triton import utils

    base, xs = _layer("cuda")
    n = base.numel()
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in HBM_PEAK.items() if k in name), None)
    print(f"# {name}, shape {SHAPE}, torch {torch.__version__}")
    ops = {
        "linear": (lambda: kernels.linear(xs, WEIGHTS), 4 * 2 * n),
        "ties": (lambda: kernels.ties(base, xs, WEIGHTS, DENSITIES), 5 * 2 * n),
        "ties-d1": (lambda: kernels.ties(base, xs, WEIGHTS, [1.0] * 3), 5 * 2 * n),
        "slerp": (lambda: kernels.slerp(base, xs[0], T), 3 * 2 * n),
        **{op: (lambda fn=fn: fn(base, xs, kernels), (k + 1) * 2 * n) for op, (fn, k) in SLERP_FAMILY.items()},
    }

    def report(label, selection):
        ms = do_bench(
            lambda: kernels.ties(base, xs, WEIGHTS, DENSITIES, selection=selection),
            warmup=5,
            rep=50,
            return_mode="median",
        )
        frac = f" {5 * 2 * n / (ms * 1e-3) / peak * 100:4.0f}% of HBM" if peak else ""
        print(f"{label:40s} ties {ms:7.3f} ms{frac}", flush=True)

    for block in (512, 1024, 2048):
        report(f"one read, one_read_block={block}", SelectionOptions(one_read_block=block))
    for way in ("topk", "histogram"):
        report(f"one read, candidates={way}", SelectionOptions(candidates=way))
    for scheme in ("window", "histogram"):
        report(f"two passes, two_pass={scheme}", SelectionOptions(one_read=False, two_pass=scheme))
    for per_sm in (1, 2, 3, 4, 8, 16):
        report(
            f"two passes, histogram, hist_programs_per_sm={per_sm}",
            SelectionOptions(one_read=False, two_pass="histogram", hist_programs_per_sm=per_sm),
        )
    chosen = utils.BLOCK, utils.NUM_WARPS  # the launch sizes of every kernel
    for block in (1024, 2048, 4096):
        for warps in (4, 8):
            utils.BLOCK, utils.NUM_WARPS = block, warps
            line = [f"BLOCK={block:5d} warps={warps:2d}"]
            for op, (fn, nbytes) in ops.items():
                ms = do_bench(fn, warmup=5, rep=50, return_mode="median")
                frac = f" {nbytes / (ms * 1e-3) / peak * 100:4.0f}%" if peak else ""
                line.append(f"{op} {ms:7.3f} ms {nbytes / (ms * 1e-3) / 1e9:7.0f} GB/s{frac}")
            print(" | ".join(line), flush=True)
    utils.BLOCK, utils.NUM_WARPS = chosen
    _della_masks_sweep(base, xs, peak)


def _della_masks_sweep(base, xs, peak) -> None:
    """DELLA's masks pass (della_masks.py) over its step size and programs per SM, with
    mergekit's default epsilon (gpu_check.sh runs it to choose della.CHUNK and
    della.PROGRAMS_PER_SM)."""
    from triton.testing import do_bench

    from mergefast.kernels.della import keep_rule, stream_keys
    from mergefast.kernels.triton import della

    cols, nbytes = base.shape[-1], 5 * 2 * base.numel()  # base + 3 read, the words written
    rules = [keep_rule(d, 0.15, cols) for d in DENSITIES]
    pmin, span = [r[0] for r in rules], [r[1] for r in rules]
    keys = stream_keys(0, "model.layers.0.mlp.up_proj.weight", len(xs))
    chosen = della.CHUNK, della.PROGRAMS_PER_SM
    for chunk in (512, 1024):
        for per_sm in (2, 8, 32):
            della.CHUNK, della.PROGRAMS_PER_SM = chunk, per_sm
            masks = lambda: della.della_masks(base, xs, keys, pmin, span, cols, base.dtype)  # noqa: E731
            ms = do_bench(masks, warmup=3, rep=30, return_mode="median")
            frac = f" {nbytes / (ms * 1e-3) / peak * 100:4.0f}% of HBM" if peak else ""
            print(f"della masks CHUNK={chunk:5d} programs/SM={per_sm:3d} {ms:7.3f} ms{frac}", flush=True)
    della.CHUNK, della.PROGRAMS_PER_SM = chosen


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _gpu_sweep()
