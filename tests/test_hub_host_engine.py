"""Hub inputs on the torch-free engine (mergefast/host/): merged while their shards download,
once they are cached and with --stream-inputs, with the torch engine's bytes. Against the fake
Hub of tests/fake_hub.py, in this process (the real engine rule)."""

from __future__ import annotations

import threading

import pytest
import test_hub_overlap
import test_hub_stream
from helpers import run_cli
from test_host_engine import _same_folders
from test_hub_overlap import ALL_LAYERS, SHARDS, base4  # noqa: F401 - base4 is a fixture
from test_hub_stream import _tensors

from mergefast import execute, host
from mergefast.host import merge as host_merge
from mergefast.host import parts
from mergefast.io import hub_fetch, mapped
from mergefast.io.reader import CheckpointReader

hub, models = test_hub_stream.hub, test_hub_stream.models  # its fixtures, shared

# TIES merges whole tensors (mapped once their shard is in), linear streams parts (read as
# their bytes come), dare_ties draws: the engine's three ways of reading.
CONFIGS = {
    "ties": "merge_method: ties\nbase_model: org/base\nmodels:\n"
    "  - {model: org/ft-a, parameters: {weight: 0.6, density: 0.5}}\n"
    "  - {model: org/ft-b, parameters: {weight: 0.4, density: 0.5}}\ndtype: bfloat16\n",
    "linear": "merge_method: linear\nmodels:\n  - {model: org/ft-a, parameters: {weight: 0.3}}\n"
    "  - {model: org/ft-b, parameters: {weight: 0.7}}\n  - {model: org/base, parameters: {weight: 0.2}}\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: org/base\nmodels:\n"
    "  - {model: org/ft-a, parameters: {weight: 0.5, density: 0.7}}\n"
    "  - {model: org/ft-b, parameters: {weight: 0.5, density: 0.7}}\nparameters: {rescale: true}\n",
}


@pytest.fixture
def engine(monkeypatch):
    """Runs `execute.torch_free`'s real rule; returns the list of what each merge took (True:
    the torch-free engine)."""
    ran: list[bool] = []

    def torch_free(plan, options) -> bool:
        ran.append(host.refusal(plan, options) is None)
        return ran[-1]

    monkeypatch.setattr(execute, "torch_free", torch_free)
    return ran


@pytest.mark.parametrize("method", CONFIGS)
def test_hub_merges_run_without_torch_and_write_the_torch_engines_bytes(hub, engine, tmp_path, monkeypatch, method):
    """First while the repos download, then from the cache (mapped), the torch-free engine's
    folder is the torch engine's, byte for byte."""
    config = tmp_path / "config.yml"
    config.write_text(CONFIGS[method])
    maps: list[str] = []
    real_map = mapped.map_tensor
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 1)  # every whole tensor, not only the large ones
    monkeypatch.setattr(mapped, "map_tensor", lambda fd, info: maps.append(info.name) or real_map(fd, info))
    outs, mapped_in = {}, {}
    for run, env in (("downloading", None), ("torch", {"MERGEFAST_BACKEND": "cpu-ext"}), ("cached", None)):
        outs[run] = tmp_path / run / "out"  # the card names the folder
        result = run_cli("yaml", config, outs[run], "--quiet", env=env)
        assert result.exit_code == 0, result.output
        mapped_in[run] = len(maps)
        maps.clear()
    assert engine == [True, False, True]
    assert hub.downloads
    _same_folders(outs["downloading"], outs["torch"])
    _same_folders(outs["cached"], outs["torch"])
    assert mapped_in["cached"] > 0 and mapped_in["torch"] == 0


TIES_ON_BASE4 = CONFIGS["ties"].replace("org/base\n", "org/base4\n")


@pytest.mark.parametrize("text", [ALL_LAYERS, TIES_ON_BASE4], ids=["copied", "merged-whole"])
def test_a_tensor_is_read_while_its_shard_still_downloads(hub, base4, engine, tmp_path, monkeypatch, text):  # noqa: F811
    """The first shard's body stops just past its first tensor until that tensor's job has
    been merged on the torch-free engine: a merge that waited for the whole shard, or mapped
    it, would never let it go."""
    hub.add_repo("org/base4", base4)
    with CheckpointReader(base4) as reader:
        first = min((reader.info(n) for n in reader.names()), key=lambda i: (i.file.name, i.data_offsets[0]))
    assert first.file.name == SHARDS[0]
    hold = -(-first.data_offsets[1] // 16384) * 16384  # a 16 kB boundary past the tensor (test_hub_overlap)
    merged = threading.Event()
    hub.hold_at[f"org/base4/{SHARDS[0]}"] = (hold, merged)
    real = host_merge.merge_host_job

    def merge(plan, job, *args):
        out = real(plan, job, *args)
        if job.name == first.name:
            merged.set()
        return out

    monkeypatch.setattr(host_merge, "merge_host_job", merge)
    monkeypatch.setattr(mapped, "MAP_MIN_BYTES", 1)  # a whole tensor whose shard is in is mapped
    monkeypatch.setattr(hub_fetch, "DOWNLOAD_THREADS", 1)
    config = tmp_path / "config.yml"
    config.write_text(text)
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert engine == [True] and hub.holds == [True]
    if text == ALL_LAYERS:
        out, local = _tensors(tmp_path / "out"), _tensors(base4)
        assert out.keys() == local.keys() and all(out[k].equal(local[k]) for k in out)


def test_a_failed_download_stops_the_torch_free_engine_in_one_line(hub, base4, engine, tmp_path, monkeypatch):  # noqa: F811
    """test_hub_overlap's case, on the torch-free engine."""
    test_hub_overlap.test_a_failed_download_stops_the_merge_in_one_line(hub, base4, tmp_path, monkeypatch)
    assert engine == [True]


@pytest.mark.parametrize("chunk", [16384, None], ids=["read-while-downloading", "read-once-downloaded"])
def test_a_shard_unlike_its_header_stops_the_torch_free_engine(hub, base4, engine, tmp_path, monkeypatch, chunk):  # noqa: F811
    """test_hub_overlap's case, on the torch-free engine."""
    test_hub_overlap.test_a_shard_unlike_its_planned_header_fails_in_one_line(hub, base4, tmp_path, monkeypatch, chunk)
    assert engine == [True]


@pytest.mark.parametrize("method", ["ties", "linear"])
def test_streamed_hub_merges_run_without_torch(hub, engine, tmp_path, monkeypatch, method):
    """--stream-inputs on the torch-free engine: a job's sources read at once in range
    requests, whole tensors (not parts: each range costs a round trip), no file written to the
    cache; the folder is the torch engine's, byte for byte."""
    config = tmp_path / "config.yml"
    config.write_text(CONFIGS[method])
    cut = []
    real = parts.split_jobs
    monkeypatch.setattr(parts, "split_jobs", lambda *a: cut.append(1) or real(*a))
    outs = {run: tmp_path / run / "out" for run in ("free", "torch")}
    for run, env in (("free", None), ("torch", {"MERGEFAST_BACKEND": "cpu-ext"})):
        result = run_cli("yaml", config, outs[run], "--quiet", "--stream-inputs", env=env)
        assert result.exit_code == 0, result.output
    assert engine == [True, False] and not cut
    assert not [p for p in (tmp_path / "hf").rglob("*.safetensors")]
    assert not [t for t in threading.enumerate() if t.name.startswith("stream-read")]  # closed with the run
    _same_folders(outs["free"], outs["torch"])
