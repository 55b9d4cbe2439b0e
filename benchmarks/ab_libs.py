"""Two builds of the CPU kernel library compared call by call, in one process.

    python benchmarks/ab_libs.py OLD.so NEW.so [--methods della,ties] [--shape 11008x4096]
                                 [--zeros 0.02] [--dtype bfloat16] [--rounds 10]

Build the old library, copy `mergefast/kernels/libmergefast_cpu.so` aside, rebuild, and pass
both paths. Each round calls every method once with each build, in turn, on the same inputs
(base + 3 fine-tunes in `--dtype`: base 0.02 randn, fine-tune noise 0.002 randn, a fraction `--zeros`
of the deltas exactly zero, as in fine-tunes that left weights unchanged). It prints each
build's best and median time, their ratio, and whether the outputs are the same bits.

Why: on the shared 2-vCPU VM the load moves a kernel's time by up to 2x within minutes, so
runs of separate processes, one build each, showed 10-20% "gains" that this call-by-call
comparison did not confirm (benchmarks/RESULTS.md, 2026-12-03, fourth session).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mergefast import kernels
from mergefast.kernels import cpu

W3 = [1.0, 1.0, 1.0]
D3 = [0.5, 0.5, 0.5]
METHODS = {
    "ties": lambda base, xs: kernels.ties(base, xs, W3, D3),
    "dare_ties": lambda base, xs: kernels.task_arithmetic(
        base, xs, W3, densities=D3, sparsify="random", consensus="sum", rescale=True
    ),
    "breadcrumbs_ties": lambda base, xs: kernels.task_arithmetic(
        base, xs, W3, densities=D3, sparsify="magnitude_outliers", consensus="sum", gammas=[0.01] * 3
    ),
    "della": lambda base, xs: kernels.task_arithmetic(
        base, xs, W3, densities=D3, sparsify="della", consensus="sum", normalize=True, epsilons=[0.15] * 3, rescale=True
    ),
    "sce": lambda base, xs: kernels.sce(base, xs, select_topk=0.1),
    "linear": lambda base, xs: kernels.linear(xs, W3),
    "slerp": lambda base, xs: kernels.slerp(base, xs[0], 0.4),
    "ramplus_tl": lambda base, xs: kernels.ramplus_tl(base, xs),
    "ram": lambda base, xs: kernels.ram(base, xs),
}


def make_inputs(
    shape: tuple[int, ...], zeros: float, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """base and three fine-tunes of it in `dtype`, a fraction `zeros` of each one's deltas zero."""
    g = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(shape, generator=g)).to(dtype)
    xs = []
    for _ in range(3):
        noise = 0.002 * torch.randn(shape, generator=g)
        noise[torch.rand(shape, generator=g) < zeros] = 0
        xs.append((base.float() + noise).to(dtype))
    return base, xs


def compare(builds: dict[str, Path], method: str, base, xs, rounds: int) -> dict:
    """Times per build (seconds) of `rounds` alternated calls, and whether the outputs agree."""
    fn = METHODS[method]
    times: dict[str, list[float]] = {name: [] for name in builds}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(rounds + 1):  # the first round warms up and is not timed
        for name, path in builds.items():
            with cpu.library_build(path):
                start = time.perf_counter()
                outputs[name] = fn(base, xs)
                times[name].append(time.perf_counter() - start)
    first = next(iter(outputs.values()))
    return {
        "times": {name: t[1:] for name, t in times.items()},
        "same": all(torch.equal(out, first) for out in outputs.values()),
    }


def row(method: str, result: dict) -> str:
    """One line: each build's best and median in ms, new/old of the medians, same bits or not."""
    parts = [f"{method:17s}"]
    medians = []
    for name, t in result["times"].items():
        medians.append(statistics.median(t))
        parts.append(f"{name}: best {min(t) * 1e3:7.1f} median {medians[-1] * 1e3:7.1f} ms")
    parts.append(f"new/old {medians[-1] / medians[0]:.3f}")
    parts.append("same bits" if result["same"] else "OUTPUTS DIFFER")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, load both builds from private copies, print a line per method."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--methods", default="ties,della,sce")
    ap.add_argument("--shape", default="11008x4096")
    ap.add_argument("--zeros", type=float, default=0.02, help="fraction of zero deltas per fine-tune")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    base, xs = make_inputs(shape, args.zeros, dtype=getattr(torch, args.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        builds = {}  # a private copy each: one path is loaded only once per process
        for name, src in (("old", args.old), ("new", args.new)):
            builds[name] = Path(tmp) / f"{name}_{src.name}"
            shutil.copy(src, builds[name])
        print(
            f"shape {args.shape} {args.dtype}, {args.zeros:.0%} zero deltas, {args.rounds} rounds, "
            f"{cpu.threads()} threads"
        )
        for method in args.methods.split(","):
            print(row(method, compare(builds, method, base, xs, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
