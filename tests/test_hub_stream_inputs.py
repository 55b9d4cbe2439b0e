"""--stream-inputs (io/hub_stream.py): Hub tensors read with range requests straight into the
pipeline, no weight file written, against the fake Hub of tests/fake_hub.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import test_hub_stream
import torch
from fake_hub import FakeHub, use_fake_hub
from helpers import popen_with_default_sigint, run_cli
from test_hub_stream import TIES, _config, _drop_mid_data, _tensors

import mergefast
from mergefast.errors import ModelError
from mergefast.io import hub_stream
from mergefast.staging import host

hub, models = test_hub_stream.hub, test_hub_stream.models  # its fixtures, shared


def _weights_in_cache(tmp_path) -> list:
    """Weight files (or their blobs: the side files are a few kB) in the fake Hub's cache."""
    return [
        p
        for p in (tmp_path / "hf").rglob("*")
        if p.name.endswith(".safetensors") or (p.is_file() and p.stat().st_size > 100_000)
    ]


@pytest.mark.slow  # range reads in 64 kB pieces: 2-3 s
@pytest.mark.parametrize("piece", [hub_stream.PIECE, 65_537], ids=["one-piece", "many-pieces"])
def test_streamed_merge_equals_the_local_merge(hub, tmp_path, models, monkeypatch, piece):
    monkeypatch.setattr(hub_stream, "PIECE", piece)
    mergefast.merge(_config(TIES, **{k: str(models[k]) for k in ("base", "ft-a", "ft-b")}), tmp_path / "local")
    summary = mergefast.merge(_config(TIES), tmp_path / "hub", stream_inputs=True)
    a, b = _tensors(tmp_path / "local"), _tensors(tmp_path / "hub")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _weights_in_cache(tmp_path) == [] and not [p for p in hub.downloads if p.endswith(".safetensors")]
    assert hub.served["tensor"] == summary.read_bytes == summary.downloaded_bytes  # each byte once


@pytest.mark.slow  # two merges: 2 s
def test_a_dropped_range_read_is_resumed(hub, tmp_path, models):
    """A range read whose connection drops mid-body asks for the rest only (what arrived of
    the last CHUNK is lost with the connection)."""
    mergefast.merge(_config(TIES, **{k: str(models[k]) for k in ("base", "ft-a", "ft-b")}), tmp_path / "local")
    key, _ = _drop_mid_data(hub, "org/ft-a")
    summary = mergefast.merge(_config(TIES), tmp_path / "hub", stream_inputs=True)
    assert key not in hub.drop_at  # the connection was cut
    a, b = _tensors(tmp_path / "local"), _tensors(tmp_path / "hub")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert 0 <= hub.served["tensor"] - summary.read_bytes < hub_stream.CHUNK


def test_a_range_read_dropped_too_often_is_one_line(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_stream, "RETRIES", 0)
    _drop_mid_data(hub, "org/ft-a")
    with pytest.raises(ModelError, match=r"org/ft-a .*connection dropped 1 times in a row") as e:
        mergefast.merge(_config(TIES), tmp_path / "hub", stream_inputs=True)
    assert "\n" not in str(e.value) and not (tmp_path / "hub").exists()


def test_cached_files_are_read_from_disk(hub, tmp_path):
    mergefast.merge(_config(TIES), tmp_path / "first")
    assert _weights_in_cache(tmp_path)
    hub.reset_counts()
    summary = mergefast.merge(_config(TIES), tmp_path / "again", stream_inputs=True)
    assert hub.served["tensor"] == 0 and summary.downloaded_bytes == 0


def test_a_file_gone_while_streaming_is_one_line(hub, tmp_path, monkeypatch):
    real = hub_stream.Streams.read

    def read(self, remote, name, start, out):
        hub.repos[remote.repo].hidden.add(name)  # the repo changed after planning
        return real(self, remote, name, start, out)

    monkeypatch.setattr(hub_stream.Streams, "read", read)
    config = tmp_path / "config.yml"
    config.write_text(_config(TIES))
    result = run_cli("yaml", config, tmp_path / "out", "--quiet", "--stream-inputs")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert "not found in Hugging Face repo org/" in lines[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.mergefast-partial-*"))


@pytest.mark.slow  # a merge in a subprocess
def test_ctrl_c_while_streaming_stops_at_once(models, tmp_path, monkeypatch):
    """20 kB/s per connection: Ctrl-C once the merge has started ends it within seconds."""
    slow = FakeHub(bytes_per_second=20_000).start()
    slow.add_repo("org/ft-b", models["ft-b"])
    use_fake_hub(monkeypatch, slow, tmp_path / "hf")  # the environment reaches the subprocess
    config, out = tmp_path / "config.yml", tmp_path / "out"
    config.write_text("merge_method: linear\nmodels:\n  - model: org/ft-b\n    parameters: {weight: 1.0}\n")
    proc = popen_with_default_sigint(
        [sys.executable, "-m", "mergefast", "yaml", str(config), str(out), "--quiet", "--stream-inputs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 60
        while not slow.served["tensor"]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        slow.stop()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert not out.exists() and not list(tmp_path.glob(".out.mergefast-partial-*"))


def _count_streamed_reads(monkeypatch, meet: int) -> dict:
    """Streams.read counted (the most at once), its first `meet` calls held until they all
    run at once (state["met"]: whether they did, within 5 s)."""
    real, lock, state = hub_stream.Streams.read, threading.Lock(), {"now": 0, "most": 0, "met": False}
    first, calls = threading.Barrier(meet, timeout=5), [0]

    def read(self, remote, name, start, out):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            calls[0] += 1
            held = calls[0] <= meet
        if held:
            try:
                first.wait()
                state["met"] = True
            except threading.BrokenBarrierError:
                pass
        try:
            return real(self, remote, name, start, out)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(hub_stream.Streams, "read", read)
    return state


def test_a_jobs_streamed_sources_are_read_at_once(hub, tmp_path, monkeypatch):
    """Each streamed read waits on round trips: the sources of one job are read concurrently."""
    monkeypatch.setattr(host, "JOBS_AT_ONCE", 1)
    state = _count_streamed_reads(monkeypatch, 3)
    mergefast.merge(_config(TIES), tmp_path / "hub", stream_inputs=True)
    assert state["met"] and state["most"] == 3  # base, ft-a and ft-b of a TIES job
    assert not [t for t in threading.enumerate() if t.name.startswith("stream-read")]  # closed with the run


def test_streamed_jobs_are_read_several_at_once(hub, tmp_path, monkeypatch):
    """The pipeline reads JOBS_AT_ONCE streamed jobs at once: two jobs' three sources meet."""
    state = _count_streamed_reads(monkeypatch, 6)
    mergefast.merge(_config(TIES), tmp_path / "hub", stream_inputs=True)
    assert state["met"] and 6 <= state["most"] <= 3 * host.JOBS_AT_ONCE
