"""Hub inputs planned from their headers (io/hub_remote.py, io/hub_headers.py) and downloaded
after the plan passed (io/hub_fetch.py), against a fake Hub served from local folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub, use_fake_hub
from helpers import run_cli
from make_models import make_tiny_llama
from safetensors.torch import load_file, save_file

import mergefast
from mergefast.errors import ConfigError, ModelError
from mergefast.io import hub_fetch, hub_headers, hub_prefetch
from mergefast.io.reader import CheckpointReader

# Big enough that tensor data outweighs headers and side files ~300:1 (the 1% test).
SIZES = {"hidden": 256, "intermediate": 512, "vocab": 128, "layers": 4}
LOCAL = {"org/base": "base", "org/ft-a": "ft-a", "org/ft-b": "ft-b"}

TIES = """merge_method: ties
base_model: {base}
models:
  - model: {ft-a}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {ft-b}
    parameters: {{weight: 0.4, density: 0.7}}
dtype: bfloat16
"""
BAD_RANGE = """merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 2]}}]
  - sources: [{{model: {ft-a}, layer_range: [2, 9]}}]
"""
MIXED = """merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {wide}
    parameters: {{weight: 0.5}}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """base and ft-a sharded, ft-b one file, and `wide` of another hidden size."""
    root = tmp_path_factory.mktemp("hubmodels")
    base = make_tiny_llama(root / "base", seed=0, fmt="sharded", **SIZES)
    make_tiny_llama(root / "ft-a", seed=1, base=base, fmt="sharded", **SIZES)
    make_tiny_llama(root / "ft-b", seed=2, base=base, **SIZES)
    make_tiny_llama(root / "wide", seed=3, **{**SIZES, "hidden": 128})
    return {name: root / name for name in ("base", "ft-a", "ft-b", "wide")}


@pytest.fixture
def hub(monkeypatch, tmp_path, models):
    fake = FakeHub().start()
    for name, folder in models.items():
        fake.add_repo(f"org/{name}", folder, revisions=("main", "v1"))
    use_fake_hub(monkeypatch, fake, tmp_path / "hf")
    yield fake
    fake.stop()


def _config(text: str, **refs) -> str:
    return text.format(**{"base": "org/base", "ft-a": "org/ft-a", "ft-b": "org/ft-b", "wide": "org/wide", **refs})


def _total_bytes(hub: FakeHub) -> int:
    return sum(len(d) for repo in hub.repos.values() for d in repo.files.values())


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _plan_cli(config_text: str, tmp_path: Path):
    path = tmp_path / "config.yml"
    path.write_text(config_text)
    result = run_cli("plan", path)
    return result.exit_code, result.stdout, result.stderr


def test_plan_reads_headers_only(hub, tmp_path, models):
    code, text, err = _plan_cli(_config(TIES), tmp_path)
    assert code == 0, err
    assert hub.served["tensor"] == 0 and hub.served["header"] > 0
    assert "from the Hugging Face Hub" in text and "org/ft-b (org/ft-b, commit" in text
    local = mergefast.merge(
        _config(TIES, **{n: str(models[n]) for n in ("base", "ft-a", "ft-b")}), tmp_path / "unused", dry_run=True
    )
    same = ("output:", "bytes:", "estimated peak memory:", "  [")  # jobs, bytes and samples as planned locally
    pick = lambda t: [line.split(" -> ")[0] for line in t.splitlines() if line.startswith(same)]
    assert pick(text) == pick(local) and pick(text)


@pytest.mark.parametrize("text, match", [(BAD_RANGE, "layer_range"), (MIXED, "shape")])
def test_a_bad_hub_config_fails_at_plan_time(hub, tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        mergefast.merge(_config(text), tmp_path / "out")
    served = sum(hub.served.values())
    assert hub.served["tensor"] == 0 and served < 0.01 * _total_bytes(hub), hub.served
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # three merges
def test_merge_from_the_hub_equals_the_local_merge(hub, tmp_path, models):
    local = {f"{k}": str(models[k]) for k in ("base", "ft-a", "ft-b")}
    mergefast.merge(_config(TIES, **local), tmp_path / "local")
    mergefast.merge(_config(TIES), tmp_path / "hub")
    a, b = _tensors(tmp_path / "local"), _tensors(tmp_path / "hub")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    weights = sum(
        len(d)
        for n in ("base", "ft-a", "ft-b")
        for p, d in hub.repos[f"org/{n}"].files.items()
        if p.endswith(".safetensors")
    )
    assert hub.served["tensor"] + hub.served["header"] <= 2 * weights  # each header twice at most

    # a second run fetches nothing again: one listing request per repo
    text = _plan_cli(_config(TIES), tmp_path)[1]
    assert "org/ft-a (org/ft-a, commit" in text and text.count("download 0 file(s), 0 B; cached") == 3
    hub.reset_counts()
    mergefast.merge(_config(TIES), tmp_path / "again")
    assert hub.served == {"tensor": 0, "header": 0, "other": 0}
    assert sorted(p for _, p in hub.requests if p.startswith("/api/models")) == [
        "/api/models/org/base",
        "/api/models/org/ft-a",
        "/api/models/org/ft-b",
    ]
    assert all(not p.startswith("/org/") for _, p in hub.requests)


def _drop_mid_data(hub: FakeHub, repo: str) -> tuple[str, int]:
    """Cut the connection once in the middle of the tensor data of `repo`'s first weight file."""
    name = min(p for p in hub.repos[repo].files if p.endswith(".safetensors"))
    data = hub.repos[repo].files[name]
    data_start = 8 + int.from_bytes(data[:8], "little")
    hub.drop_at[f"{repo}/{name}"] = (data_start + len(data)) // 2
    return f"{repo}/{name}", len(data) - data_start


@pytest.mark.slow  # huggingface_hub waits 1 s before it resumes
def test_a_dropped_download_is_resumed(hub, tmp_path, models, monkeypatch):
    """A shard whose connection drops mid-body is resumed (huggingface_hub's retry) from its
    last whole chunk (DOWNLOAD_CHUNK_SIZE: 10 MB by default, 64 kB here): the merge equals the
    local one and at most one chunk is sent twice."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    local = {k: str(models[k]) for k in ("base", "ft-a", "ft-b")}
    mergefast.merge(_config(TIES, **local), tmp_path / "local")
    key, _ = _drop_mid_data(hub, "org/ft-a")
    summary = mergefast.merge(_config(TIES), tmp_path / "hub")
    assert key not in hub.drop_at  # the connection was cut
    a, b = _tensors(tmp_path / "local"), _tensors(tmp_path / "hub")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sent_twice = hub.served["tensor"] - (summary.downloaded_bytes - _header_bytes(hub))
    assert 0 <= sent_twice < 1 << 16


def _header_bytes(hub: FakeHub) -> int:
    """The header bytes (length prefix included) of every weight file of the fake Hub."""
    return sum(
        8 + int.from_bytes(d[:8], "little")
        for n in ("base", "ft-a", "ft-b")
        for p, d in hub.repos[f"org/{n}"].files.items()
        if p.endswith(".safetensors")
    )


def test_offline_from_the_cache(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    mergefast.merge(_config(TIES, **{"ft-b": "org/ft-b@v1"}), tmp_path / "first")
    hub.reset_counts()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    mergefast.merge(_config(TIES, **{"ft-b": "org/ft-b@v1"}), tmp_path / "offline")
    assert hub.requests == []
    a, b = _tensors(tmp_path / "first"), _tensors(tmp_path / "offline")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_only_the_shards_a_slice_reads_are_downloaded(hub, tmp_path, models, monkeypatch):
    """Layer 0 of a 4-shard model: the first shard (embeddings, layer 0) and the last (norm,
    head) are downloaded, in the order the jobs read them; the two in between are not."""
    with CheckpointReader(models["base"]) as reader:
        tensors = {name: reader.read(name) for name in reader.names()}
    folder = tmp_path / "base4"
    shutil.copytree(models["base"], folder, ignore=shutil.ignore_patterns("model*"))
    parts = {
        1: ("model.embed_tokens.", "model.layers.0."),
        2: ("model.layers.1.",),
        3: ("model.layers.2.", "model.layers.3."),
        4: ("model.norm.", "lm_head."),
    }
    weight_map = {}
    for i, prefixes in parts.items():
        shard = f"model-0000{i}-of-00004.safetensors"
        save_file({k: v for k, v in tensors.items() if k.startswith(prefixes)}, str(folder / shard))
        weight_map.update({k: shard for k in tensors if k.startswith(prefixes)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    hub.add_repo("org/base4", folder)
    text = "merge_method: passthrough\nslices:\n  - sources: [{model: org/base4, layer_range: [0, 1]}]\n"
    monkeypatch.setattr(hub_fetch, "DOWNLOAD_THREADS", 1)  # arrival order = the order asked for
    mergefast.merge(text, tmp_path / "out")
    got = [p for p in hub.downloads if p.endswith(".safetensors")]
    assert got == ["org/base4/model-00001-of-00004.safetensors", "org/base4/model-00004-of-00004.safetensors"]
    assert hub.served["tensor"] < 0.6 * sum(t.numel() * t.element_size() for t in tensors.values())
    out = _tensors(tmp_path / "out")
    assert all(torch.equal(out[k], tensors[k]) for k in out) and "model.layers.0.mlp.up_proj.weight" in out


Case = namedtuple("Case", "refs setup match")
ERRORS = [
    Case({"ft-a": "org/nope"}, None, "Hugging Face repo org/nope not found"),
    Case({"ft-a": "org/ft-a@v9"}, None, "revision 'v9' not found in Hugging Face repo org/ft-a"),
    Case({}, lambda hub: setattr(hub.repos["org/ft-a"], "gated", True), "Hugging Face repo org/ft-a is gated"),
    Case(
        {},
        lambda hub: hub.repos["org/ft-b"].hidden.add("model.safetensors"),
        "file model.safetensors not found in Hugging Face repo org/ft-b",
    ),
    Case(
        {},
        lambda hub: hub.repos["org/ft-a"].files.pop("model-00002-of-00002.safetensors"),
        "names 'model-00002-of-00002.safetensors', which Hugging Face repo org/ft-a",
    ),
]


@pytest.mark.parametrize("case", ERRORS, ids=["repo", "revision", "gated", "file", "shard"])
def test_hub_errors_are_one_line_at_plan_time(hub, tmp_path, case):
    if case.setup:
        case.setup(hub)
    code, _, err = _plan_cli(_config(TIES, **case.refs), tmp_path)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and case.match in lines[0], err
    assert hub.served["tensor"] == 0


@pytest.mark.parametrize("delta", [-9, -8, -1, 0, 1, 64])
def test_headers_near_the_first_range_size(hub, tmp_path, models, monkeypatch, delta):
    """The first range ending just before, at or after the header's end: read whole."""
    header = 8 + int.from_bytes((models["ft-b"] / "model.safetensors").read_bytes()[:8], "little")
    monkeypatch.setattr(hub_prefetch, "FIRST_RANGE", max(1, header + delta))
    code, _, err = _plan_cli(_config(TIES), tmp_path)
    assert code == 0, err  # a header cut short would fail the strict JSON parse


def test_not_enough_disk_fails_before_any_download(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_fetch, "free_bytes", lambda path: 1000)
    code, text, _ = _plan_cli(_config(TIES), tmp_path)
    assert code == 0 and "NOT ENOUGH" in text
    with pytest.raises(ModelError, match="not enough free disk space: the downloads \\+ output need") as err:
        mergefast.merge(_config(TIES), tmp_path / "out")
    assert "\n" not in str(err.value) and hub.served["tensor"] == 0
    assert not (tmp_path / "out").exists()


def test_local_merges_never_touch_the_hub(hub, tmp_path, models):
    local = {k: str(models[k]) for k in ("base", "ft-a", "ft-b")}
    mergefast.merge(_config(TIES, **local), tmp_path / "out", dry_run=True)
    assert hub.requests == []


def test_hub_down_uses_the_cache(hub, tmp_path):
    """The listing request refused (the Hub unreachable): the cached copy, as before."""
    mergefast.merge(_config(TIES), tmp_path / "first")
    hub.stop()
    mergefast.merge(_config(TIES), tmp_path / "again")
    a, b = _tensors(tmp_path / "first"), _tensors(tmp_path / "again")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_offline_after_a_plan_only_says_what_is_missing(hub, tmp_path, monkeypatch):
    """`plan` cached the side files only: offline, the merge names the missing weights."""
    from huggingface_hub import constants

    assert _plan_cli(_config(TIES), tmp_path)[0] == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = _plan_cli(_config(TIES), tmp_path)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "lacks its weights (model-00001-of-00002.safetensors and 1 more" in lines[0]
    assert "HF_HUB_OFFLINE is set: unset it" in lines[0]


def test_what_runs_before_the_planner_imports_no_torch():
    """The Hub metadata is read while torch is imported (io/hub_prefetch.py): the modules that
    run before the parameter checks must not import it themselves."""
    code = (
        "import sys, mergefast.run, mergefast.config, mergefast.options, mergefast.io.hub_prefetch, mergefast.cli\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prefetched_headers_are_not_read_again(hub, tmp_path):
    with hub_prefetch.HubPrefetch(None) as prefetch:
        prefetch.start(["org/ft-a", "org/ft-b"])
        remote, other = prefetch.locate("org/ft-a", None), prefetch.locate("org/ft-b", None)  # both done
        assert sorted(remote.raw_headers) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        assert other.raw_headers.keys() == {"model.safetensors"}
        before = list(hub.requests)
        reader = hub_headers.RemoteCheckpointReader(remote)
        assert hub.requests == before and len(reader.names()) > 0  # every header came from the prefetch
        reader.close()
    assert hub.served["tensor"] == 0


def test_the_first_bad_repo_in_config_order_is_reported(hub, tmp_path):
    """Every repo is located at once; the error is the first one in config order, and no
    prefetch thread outlives the failed plan."""
    hub.repos["org/ft-b"].gated = True
    code, _, err = _plan_cli(_config(TIES, **{"ft-a": "org/nope"}), tmp_path)
    assert code == 1 and "Hugging Face repo org/nope not found" in err, err
    assert not [t for t in threading.enumerate() if t.name.startswith("mergefast-hub")]


def test_offline_starts_no_prefetch(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_prefetch, "_offline", lambda: True)
    with hub_prefetch.HubPrefetch(None) as prefetch:
        prefetch.start(["org/ft-a"])
        assert prefetch._pool is None and hub.requests == []
