"""Interrupting a real merge (a `python -m mergefast`-style subprocess) and failing writes:
OUT never holds a half-written model, and the temporary folder is removed when Python can.

The subprocess slows every tensor write down (a sleep after `ShardedWriter.write`, like a
slow disk) so that the merge of a tiny model takes a few seconds and the signal arrives while
tensors are being written.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import popen_with_default_sigint, run_cli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

DRIVER = """
import sys, time
from mergefast.io import writer
_write = writer.ShardedWriter.write
def slow_write(self, name, tensor, start=None):
    _write(self, name, tensor, start)
    time.sleep(float(sys.argv[1]))
writer.ShardedWriter.write = slow_write
from mergefast.cli import main
main(sys.argv[2:], prog_name="mergefast")
"""
LAYERS = 24  # 24 * 9 + 3 = 219 tensors: ~11 s at 50 ms per write


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory) -> Path:
    from make_models import make_tiny_llama

    root = tmp_path_factory.mktemp("deep")
    make_tiny_llama(root / "m", seed=0, layers=LAYERS)
    config = root / "config.yml"
    config.write_text(
        f"merge_method: passthrough\nslices:\n  - sources:\n"
        f"      - {{model: {root / 'm'}, layer_range: [0, {LAYERS}]}}\n"
    )
    return config


def _partials(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.mergefast-partial-*"))


def _start(config: Path, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return popen_with_default_sigint(
        [sys.executable, "-c", DRIVER, str(delay), "yaml", str(config), str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=out.parent,
    )


def _wait_for_first_output(proc: subprocess.Popen, out: Path, timeout: float = 90) -> None:
    """Wait until a shard file exists in the temporary folder, then a little more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if any(p.is_file() for d in _partials(out) for p in d.iterdir()):
            time.sleep(0.3)  # let some tensors be written
            assert proc.poll() is None, "the merge finished before it could be interrupted"
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no output appeared in the temporary folder")


SCENARIOS = ("sigint", "sigterm", "sigkill")


@pytest.fixture(scope="module")
def merges(deep_model, tmp_path_factory):
    """One slow merge per scenario, all started at once (a torch import costs seconds here)."""
    running = {}
    for name in SCENARIOS:
        work = tmp_path_factory.mktemp(name)
        out = work / "out"
        if name == "sigterm":  # an existing OUT is replaced only at the final rename
            out.mkdir()  # a previous model (config.json): OUT may be replaced
            (out / "config.json").write_text("previous model")
        running[name] = (_start(deep_model, out, delay=0.05), out)
    yield running
    for proc, _ in running.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow  # merges in subprocesses
@pytest.mark.parametrize("name, sig, code", [("sigint", signal.SIGINT, 130), ("sigterm", signal.SIGTERM, 143)])
def test_signal_stops_the_merge_and_cleans_up(merges, name, sig, code):
    proc, out = merges[name]
    _wait_for_first_output(proc, out)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the merge did not stop within 10 s of the signal")
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(("mergefast: interrupted", "mergefast: terminated"))
    if name == "sigterm":
        assert sorted(p.name for p in out.iterdir()) == ["config.json"]
        assert (out / "config.json").read_text() == "previous model"
    else:
        assert not out.exists()
    assert not _partials(out)


@pytest.mark.slow
def test_sigkill_leaves_only_a_named_temporary_folder(merges):
    proc, out = merges["sigkill"]
    _wait_for_first_output(proc, out)
    proc.kill()
    proc.communicate(timeout=10)
    assert not out.exists()
    leftovers = list(out.parent.iterdir())
    assert leftovers and all(p.name.startswith(".out.mergefast-partial-") for p in leftovers), leftovers


def test_disk_full_is_one_line_and_leaves_nothing(deep_model, tmp_path, monkeypatch):
    import mergefast.io.writer as writer

    real = writer.os.pwrite

    def pwrite(fd, data, offset):
        if offset > 0:  # headers (offset 0) go through; the first tensor data hits a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", pwrite)
    out = tmp_path / "out"
    result = run_cli("yaml", deep_model, out, "--quiet")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("mergefast: error:") and "No space left on device" in lines[0]
    assert str(out) in lines[0]
    assert not out.exists() and not _partials(out)


def test_children_get_the_default_sigint_however_the_suite_started():
    """Started as `pytest &` from a script, this process ignores SIGINT; the merges it starts
    must not (they would ignore the interruption tests' SIGINT), and its own disposition is
    what it was before."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    before = signal.getsignal(signal.SIGINT)
    for disposition in (signal.SIG_IGN, before):
        signal.signal(signal.SIGINT, disposition)
        try:
            proc = popen_with_default_sigint([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
            assert proc.communicate(timeout=60)[0].strip() == "True"
            assert signal.getsignal(signal.SIGINT) is disposition
        finally:
            signal.signal(signal.SIGINT, before)
