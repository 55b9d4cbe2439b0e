"""Fixtures of the kernel benchmarks: a 7B layer (base + 3 fine-tunes, 11008 x 4096 bf16).

MERGEFAST_BENCH_SHAPE=ROWSxCOLS shrinks it (e.g. 1024x4096 for a quick run).
"""

from __future__ import annotations

import os

import pytest
import torch

SHAPE = tuple(int(v) for v in os.environ.get("MERGEFAST_BENCH_SHAPE", "11008x4096").split("x"))


def _layer(device: str):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(SHAPE, generator=g) * 0.02
    xs = [base + torch.randn(SHAPE, generator=g) * 0.002 for _ in range(3)]  # fine-tune deltas
    return base.bfloat16().to(device), [x.bfloat16().to(device) for x in xs]


@pytest.fixture(scope="session")
def layer_cpu():
    return _layer("cpu")


@pytest.fixture(scope="session")
def layer_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return _layer("cuda")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A compact table: op, provider, ms, GB/s and the speed-up of the fused kernel."""
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    rows = {}
    for bench in bs.benchmarks:
        provider = bench.name.split("[", 1)[-1].rstrip("]")
        rows.setdefault(bench.group, {})[provider] = bench.extra_info
    tr = terminalreporter
    tr.write_sep("-", "mergefast kernel benchmarks (" + "x".join(map(str, SHAPE)) + ")")
    for group, provs in rows.items():
        if group == "memory":
            for op, info in provs.items():
                tr.write_line(
                    f"memory  {op:<10} extra peak RSS {info.get('extra_mb')} MB (output {info.get('out_mb')} MB)"
                )
            continue
        for prov, info in provs.items():
            ms = info.get("ms")
            ratio = ""
            if prov != "cpu-ext" and "gpu" not in info and provs.get("cpu-ext", {}).get("ms"):
                ratio = f"cpu-ext is {ms / provs['cpu-ext']['ms']:.1f}x faster"
            extra = ""
            if "hbm_fraction" in info:
                extra = f" HBM {info['hbm_fraction'] * 100:.0f}% ({info.get('gpu')})"
            if "two_pass_GB/s" in info:
                extra += f" two-pass traffic {info['two_pass_GB/s']} GB/s"
            tr.write_line(f"{group:<7} {prov:<16} {ms:>10} ms {info.get('GB/s'):>8} GB/s  {ratio}{extra}")
