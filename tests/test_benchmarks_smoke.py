"""The kernel benchmarks still run: every provider once, on a tiny shape, nothing timed.

Benchmarks are measured by hand and on a GPU host, never in CI; without this check a change
to a kernel's signature or to the timing code would first show on the next GPU run (`--benchmark-disable` must
work too: the timing code must not read stats it does not collect).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a pytest run in a subprocess
def test_kernel_benchmarks_run_on_a_tiny_shape():
    env = dict(os.environ, MERGEFAST_BENCH_SHAPE="64x96")
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-disable",
            str(ROOT / "benchmarks" / "bench_kernels.py"),
        ],
        cwd=ROOT / "benchmarks",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    # linear, TIES, SLERP x the CPU providers, and the extra-memory check
    assert passed and int(passed.group(1)) >= 10, summary
    assert "failed" not in summary and "error" not in summary, summary


def test_ab_libs_compares_two_builds_call_by_call(capsys):
    """benchmarks/ab_libs.py runs every method it knows with two copies of the built library,
    and finds their outputs the same bits."""
    import importlib.util

    from mergefast.kernels import cpu

    if cpu.ERROR is not None:
        pytest.skip(f"the CPU kernels are unavailable: {cpu.ERROR}")
    spec = importlib.util.spec_from_file_location("ab_libs", ROOT / "benchmarks" / "ab_libs.py")
    ab_libs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab_libs)
    methods = ",".join(ab_libs.METHODS)
    ab_libs.main([str(cpu.LIBRARY), str(cpu.LIBRARY), "--methods", methods, "--shape", "40x300", "--rounds", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("shape 40x300"), lines
    assert [line.split()[0] for line in lines[1:]] == list(ab_libs.METHODS), lines
    assert all(line.endswith("same bits") for line in lines[1:]), lines


def test_jobs_harness_times_a_configs_jobs(capsys, monkeypatch):
    """benchmarks/jobs.py plans a config and merges every tensor job, alone (caches flushed) and
    side by side, printing one line each."""
    import importlib.util

    from mergefast import native

    if native.library()[0] is None:
        pytest.skip("the torch-free engine needs the CPU kernels")
    spec = importlib.util.spec_from_file_location("jobs", ROOT / "benchmarks" / "jobs.py")
    jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jobs)
    monkeypatch.chdir(ROOT)  # the example config names its models relative to the repository
    monkeypatch.setattr(jobs, "FLUSH_BYTES", 1 << 20)
    jobs.main(["examples/ties.yml", "--rounds", "2"])
    jobs.main(["examples/ties.yml", "--side-by-side", "--only", "mlp"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"alone T=1 ties\.yml \d+ jobs [\d.]+ ms \(best of 2\)", lines[0]), lines
    assert re.fullmatch(r"side by side ties\.yml \d+ jobs [\d.]+ ms \(best of 1\)", lines[1]), lines
    assert int(lines[1].split()[4]) > 0, lines
