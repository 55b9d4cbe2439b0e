#!/usr/bin/env python3
"""Where the time of one TIES kernel call goes, per kernel launch and per host sync.

    python benchmarks/profile_ties.py [--device cuda] [--shape 11008x4096] [--out FILE]

Runs `kernels.ties` on one 7B layer (base + 3 bf16 fine-tunes, benchmarks/conftest.py) a few
times to warm up, then once under torch.profiler, and prints the table of the ops and kernels
sorted by device time (CPU time on the CPU). On a GPU this shows which selection pass (the
radix digit passes, the tie counts) or which host sync (`.tolist()`,
`aten::item`) makes Triton TIES slow: the numbers the next change to
`mergefast/kernels/triton/select/` needs. `benchmarks/gpu_check.sh` runs it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("MERGEFAST_BENCH_SHAPE", "11008x4096")


def main() -> None:
    """Profile kernels.ties on one layer and print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", help="ROWSxCOLS instead of the 7B layer's 11008x4096")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    if args.shape:
        os.environ["MERGEFAST_BENCH_SHAPE"] = args.shape
    from conftest import _layer

    from mergefast import kernels

    base, xs = _layer(args.device)
    call = lambda: kernels.ties(base, xs, [0.5, 0.3, 0.2], [0.5, 0.5, 0.5])  # noqa: E731
    for _ in range(3):  # compile and warm up
        call()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        call()
        if args.device == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    header = f"kernels.ties on {args.device}, backend {kernels.backend(args.device)}, shape {tuple(base.shape)}"
    print(header)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(header + "\n" + table + "\n")


if __name__ == "__main__":
    main()
