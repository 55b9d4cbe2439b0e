"""benchmarks/hub.py still runs: a tiny family, the linear config only, mergekit left out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # eleven whole processes, ~15 s on 2 cores
def test_hub_benchmark_runs_on_a_tiny_family(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MERGEKIT_YAML"}
    env["PATH"] = os.path.dirname(sys.executable)  # no mergekit-yaml on it
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "hub.py"),
            "--size",
            "tiny",
            "--mbps",
            "50",
            "--methods",
            "linear",
            "--dir",
            str(tmp_path),
            "--json",
            str(tmp_path / "rows.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "| linear | mergefast |" in run.stdout and "| bad | mergefast |" in run.stdout
    rows = {(r["config"], r["command"]): r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert set(rows) == {
        ("linear", "floor"),
        ("linear", "mergefast"),
        ("linear", "mergefast --stream-inputs"),
        ("linear", "mergefast, torch engine"),
        ("linear", "mergefast, cached"),
        ("linear", "mergefast, cached, torch engine"),
        ("bad", "floor"),
        ("bad", "mergefast"),
    }
    assert all(r["code"] == 0 for (config, _), r in rows.items() if config == "linear")
    assert rows["linear", "mergefast, cached"]["served"] < 0.01 * rows["linear", "mergefast"]["served"]
    assert rows["bad", "mergefast"]["code"] != 0
    assert rows["bad", "mergefast"]["served"] < 0.1 * rows["bad", "floor"]["served"]
