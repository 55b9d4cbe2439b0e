"""Hub inputs merged while they download (io/hub_arrivals.py): a job starts once its own
shards are in, a failed download stops the merge in one line, Ctrl-C stops both, and the
summary counts the download. Against the fake Hub of tests/fake_hub.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
import test_hub_stream
import torch
from fake_hub import FakeHub, use_fake_hub
from helpers import popen_with_default_sigint, run_cli
from safetensors.torch import save_file
from test_hub_stream import _tensors

import mergefast
from mergefast import execute
from mergefast.io import hub_arrivals, hub_fetch
from mergefast.io.hub_remote import RemoteRepo
from mergefast.io.reader import CheckpointReader
from mergefast.summary import RunSummary, format_summary

hub, models = test_hub_stream.hub, test_hub_stream.models  # its fixtures, shared

ALL_LAYERS = "merge_method: passthrough\nslices:\n  - sources: [{model: org/base4, layer_range: [0, 4]}]\n"
SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
PARTS = {
    1: ("model.embed_tokens.", "model.layers.0."),
    2: ("model.layers.1.",),
    3: ("model.layers.2.", "model.layers.3."),
    4: ("model.norm.", "lm_head."),
}


@pytest.fixture(scope="module")
def base4(models, tmp_path_factory) -> Path:
    """The base model in four shards; the jobs read them in order, shard 4 (norm, head) last."""
    with CheckpointReader(models["base"]) as reader:
        tensors = {name: reader.read(name) for name in reader.names()}
    folder = tmp_path_factory.mktemp("base4") / "base4"
    shutil.copytree(models["base"], folder, ignore=shutil.ignore_patterns("model*"))
    weight_map = {}
    for i, prefixes in PARTS.items():
        save_file({k: v for k, v in tensors.items() if k.startswith(prefixes)}, str(folder / SHARDS[i - 1]))
        weight_map.update({k: SHARDS[i - 1] for k in tensors if k.startswith(prefixes)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def _hooked_download(monkeypatch, before) -> None:
    """Call `before(name)` in the download thread before each weight file is downloaded."""
    real = RemoteRepo.download

    def download(self, name, tqdm_class=None):
        if name.endswith(".safetensors"):
            before(name)
        return real(self, name, tqdm_class)

    monkeypatch.setattr(RemoteRepo, "download", download)


def _cli(tmp_path: Path, *args: str):
    config = tmp_path / "config.yml"
    config.write_text(ALL_LAYERS)
    return run_cli("yaml", config, tmp_path / "out", *args)


def test_the_merge_starts_before_the_last_shard_arrives(hub, base4, tmp_path, monkeypatch):
    """The last shard's download is held until a tensor job has merged: a merge that waited
    for every download would never let it go (the hold then times out and the test fails)."""
    hub.add_repo("org/base4", base4)
    merged = threading.Event()
    held: list[bool] = []
    _hooked_download(monkeypatch, lambda name: name == SHARDS[-1] and held.append(merged.wait(30)))
    real_merge = execute.merge_job
    monkeypatch.setattr(execute, "merge_job", lambda *a, **kw: (merged.set(), real_merge(*a, **kw))[1])
    monkeypatch.setattr(hub_fetch, "DOWNLOAD_THREADS", 1)  # one at a time, in the order the jobs read them
    summary = mergefast.merge(ALL_LAYERS, tmp_path / "out")
    assert held == [True]
    assert [p.rsplit("/", 1)[1] for p in hub.downloads if p.endswith(".safetensors")] == SHARDS
    out, local = _tensors(tmp_path / "out"), _tensors(base4)
    assert out.keys() == local.keys() and all(torch.equal(out[k], local[k]) for k in out)
    assert summary.downloaded_bytes == sum((base4 / s).stat().st_size for s in SHARDS)
    assert summary.download_wait_s > 0  # the held shard at least: waiting, not reading


def test_a_job_reads_its_tensors_while_their_shard_still_downloads(hub, base4, tmp_path, monkeypatch):
    """The first shard's body stops just past its first tensor until that tensor's job has
    merged: a merge that waited for the whole shard would never let it go."""
    hub.add_repo("org/base4", base4)
    with CheckpointReader(base4) as reader:
        first = min((reader.info(n) for n in reader.names()), key=lambda i: (i.file.name, i.data_offsets[0]))
    assert first.file.name == SHARDS[0]
    # the body stops at a 16 kB boundary past the tensor (the file object's buffer is 8 kB;
    # huggingface_hub writes each network read as it comes: hub_arrivals._CHUNK)
    hold = -(-first.data_offsets[1] // 16384) * 16384
    assert hold < (base4 / SHARDS[0]).stat().st_size
    merged = threading.Event()
    hub.hold_at[f"org/base4/{SHARDS[0]}"] = (hold, merged)
    real_merge = execute.merge_job
    monkeypatch.setattr(
        execute,
        "merge_job",
        lambda plan, job, *a: (job.name == first.name and merged.set(), real_merge(plan, job, *a))[1],
    )
    monkeypatch.setattr(hub_fetch, "DOWNLOAD_THREADS", 1)
    summary = mergefast.merge(ALL_LAYERS, tmp_path / "out")
    assert hub.holds == [True]
    out, local = _tensors(tmp_path / "out"), _tensors(base4)
    assert out.keys() == local.keys() and all(torch.equal(out[k], local[k]) for k in out)
    assert summary.downloaded_bytes == sum((base4 / s).stat().st_size for s in SHARDS)
    cached = [p for p in (tmp_path / "hf").rglob(SHARDS[0]) if "snapshots" in p.parts]
    assert len(cached) == 1 and cached[0].read_bytes() == (base4 / SHARDS[0]).read_bytes()
    assert not list((tmp_path / "hf").rglob("*.incomplete"))


def test_downloads_take_the_network_reads_and_leave_huggingface_hub_as_it_was(hub, base4, tmp_path, monkeypatch):
    """huggingface_hub's 10 MB chunks are assembled in Python with the GIL held (hub_arrivals._CHUNK):
    while the downloads run its chunk size is None; afterwards it is what it was."""
    hub.add_repo("org/base4", base4)
    before = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
    seen: list = []
    _hooked_download(monkeypatch, lambda name: seen.append(huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE))
    summary = mergefast.merge(ALL_LAYERS, tmp_path / "out")
    assert summary.downloaded_bytes == sum((base4 / s).stat().st_size for s in SHARDS)
    assert seen == [None] * len(SHARDS)
    assert huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE == before


def test_hf_transfer_keeps_its_chunk_size(monkeypatch):
    """huggingface_hub versions that use hf_transfer pass it the chunk size as an int: left alone there."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ENABLE_HF_TRANSFER", True, raising=False)
    before = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
    assert hub_arrivals.network_reads() is None
    assert huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE == before


def test_a_failed_download_stops_the_merge_in_one_line(hub, base4, tmp_path, monkeypatch):
    """Shard 3 vanishes from the repo between the plan and its download: shard 4's download
    never starts."""
    hub.add_repo("org/base4", base4)
    _hooked_download(monkeypatch, lambda name: name == SHARDS[2] and hub.repos["org/base4"].hidden.add(name))
    monkeypatch.setattr(hub_fetch, "DOWNLOAD_THREADS", 1)
    result = _cli(tmp_path, "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert f"file {SHARDS[2]} not found in Hugging Face repo org/base4" in lines[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.mergefast-partial-*"))
    time.sleep(0.3)  # a download thread that went on would have asked for shard 4 by now
    assert [p.rsplit("/", 1)[1] for p in hub.downloads if p.endswith(".safetensors")] == SHARDS[:2]


@pytest.mark.parametrize("chunk", [16384, None], ids=["read-while-downloading", "read-once-downloaded"])
def test_a_shard_unlike_its_planned_header_fails_in_one_line(hub, base4, tmp_path, monkeypatch, chunk):
    """The Hub sends shard 1 with another header than the one planned (same size, same
    advertised sha256): refused whether its tensors are read while it downloads or after."""
    repo = hub.add_repo("org/base4", base4)
    released = threading.Event()
    if chunk:  # the rest of the shard is held back: the error must come from its first tensor
        hub.hold_at[f"org/base4/{SHARDS[0]}"] = (2 * chunk, released)

    def swap(name: str) -> None:
        if name == SHARDS[0]:
            data, entry = repo.files[name], repo.entry(name)
            n = int.from_bytes(data[:8], "little")
            repo.files[name] = data[:8] + data[8 : 8 + n].replace(b"embed_tokens", b"embed_tokenZ") + data[8 + n :]
            repo._entries[name] = (repo.files[name], entry)

    _hooked_download(monkeypatch, swap)
    monkeypatch.setattr(hub_fetch, "DOWNLOAD_THREADS", 1)
    result = _cli(tmp_path, "--quiet")
    assert hub.holds == []  # still held
    released.set()
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert f"downloaded {SHARDS[0]} of Hugging Face repo org/base4 differs from the file planned" in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_summary_counts_the_download(hub, base4, tmp_path):
    hub.add_repo("org/base4", base4)
    result = _cli(tmp_path, "--stats-json", str(tmp_path / "stats.json"))
    assert result.exit_code == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    weights = sum((base4 / s).stat().st_size for s in SHARDS)
    assert stats["downloaded_bytes"] == weights and stats["download_s"] > 0
    assert stats["download_bytes_per_s"] == pytest.approx(weights / stats["download_s"])
    assert result.stderr.count("downloaded ") == 1 and f"downloaded {weights / 1e6:.2f} MB in" in result.stderr
    # one progress display: the download bar and the merge bar, no bar per file
    bars = {line.split(":")[0] for line in result.stderr.replace("\r", "\n").splitlines() if "%|" in line}
    assert bars == {"downloading", "merging"}, bars

    shutil.rmtree(tmp_path / "out")  # again, from the cache: nothing downloaded, nothing said
    result = _cli(tmp_path, "--stats-json", str(tmp_path / "stats.json"))
    assert result.exit_code == 0 and "downloaded" not in result.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["downloaded_bytes"] == 0


def test_one_file_of_two_references_is_downloaded_once(hub, tmp_path, models):
    text = (
        "merge_method: linear\nmodels:\n  - model: org/ft-b\n    parameters: {weight: 0.5}\n"
        "  - model: org/ft-b@v1\n    parameters: {weight: 0.5}\n"
    )
    summary = mergefast.merge(text, tmp_path / "out")
    assert hub.downloads.count("org/ft-b/model.safetensors") == 1
    assert summary.downloaded_bytes == (models["ft-b"] / "model.safetensors").stat().st_size


def test_format_summary_download_line():
    text = format_summary(RunSummary(downloaded_bytes=3_000_000_000, download_s=20.0))
    assert text.startswith("downloaded 3.00 GB in 20.00 s (150.00 MB/s, the merge waited 0.00 s) · read ")
    assert "downloaded" not in format_summary(RunSummary())


@pytest.mark.slow  # a merge in a subprocess
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_downloading_stops_at_once(base4, tmp_path, monkeypatch, sig, code, said):
    """20 kB/s per file: the shards would take a minute; Ctrl-C (or SIGTERM) once the merge
    has started stops it within seconds, exit 130 (143), no OUT and no temporary folder."""
    slow = FakeHub(bytes_per_second=20_000).start()
    slow.add_repo("org/base4", base4)
    use_fake_hub(monkeypatch, slow, tmp_path / "hf")  # the environment reaches the subprocess
    config, out = tmp_path / "config.yml", tmp_path / "out"
    config.write_text(ALL_LAYERS)
    proc = popen_with_default_sigint(
        [sys.executable, "-m", "mergefast", "yaml", str(config), str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.mergefast-partial-*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        assert slow.served["tensor"] < sum((base4 / s).stat().st_size for s in SHARDS) // 2  # still downloading
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        slow.stop()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith(f"mergefast: {said}")
    assert not out.exists() and not list(tmp_path.glob(".out.mergefast-partial-*"))
