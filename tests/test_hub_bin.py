"""Hub repos with PyTorch .bin weights planned from their metadata read over HTTP (io/hub_bin.py,
io/hub_headers.py), downloaded after the plan passed, against the fake Hub of tests/fake_hub.py."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import test_hub_stream
import torch
from helpers import run_cli
from test_hub_stream import BAD_RANGE, TIES, _config, _tensors, _total_bytes

import mergefast
from mergefast.errors import ConfigError, ModelError
from mergefast.io import hub_bin
from mergefast.io.reader import CheckpointReader

hub, models = test_hub_stream.hub, test_hub_stream.models  # its fixtures, shared
BIN_REPOS = {"org/ft-a-bin": "ft-a-bin", "org/ft-b-bins": "ft-b-bins"}


@pytest.fixture(scope="module")
def bins(models, tmp_path_factory) -> dict[str, Path]:
    """ft-a as one pytorch_model.bin, ft-b as two .bin shards and their index."""
    root = tmp_path_factory.mktemp("binmodels")
    out = {}
    for name, shards in (("ft-a", 1), ("ft-b", 2)):
        with CheckpointReader(models[name]) as reader:
            tensors = {n: reader.read(n).clone() for n in reader.names()}
        folder = root / f"{name}-bin{'s' if shards > 1 else ''}"
        shutil.copytree(models[name], folder, ignore=shutil.ignore_patterns("model*"))
        if shards == 1:
            torch.save(tensors, folder / "pytorch_model.bin")
        else:
            names = list(tensors)
            files = [f"pytorch_model-0000{i + 1}-of-00002.bin" for i in range(2)]
            halves = [names[: len(names) // 2], names[len(names) // 2 :]]
            for file, part in zip(files, halves):
                torch.save({n: tensors[n] for n in part}, folder / file)
            weight_map = {n: files[i] for i, part in enumerate(halves) for n in part}
            (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
        out[folder.name] = folder
    return out


def _add(hub, bins) -> None:
    for repo, name in BIN_REPOS.items():
        hub.add_repo(repo, bins[name])


BIN_TIES = {"ft-a": "org/ft-a-bin", "ft-b": "org/ft-b-bins"}


def test_a_bin_repo_is_planned_from_its_metadata(hub, bins, tmp_path):
    """`plan` of .bin repos, one file and sharded: no weight file is downloaded, under 1% of
    their bytes is read, and the plan is the local plan."""
    _add(hub, bins)
    config = tmp_path / "config.yml"
    config.write_text(_config(TIES, **BIN_TIES))
    result = run_cli("plan", config)
    assert result.exit_code == 0, result.stderr
    assert not any(d.endswith(".bin") for d in hub.downloads), hub.downloads
    assert sum(hub.served.values()) < 0.01 * _total_bytes(hub), hub.served
    bin_gets = [p for m, p in hub.requests if m == "GET" and p.endswith(".bin")]
    assert len(bin_gets) <= 3 * 3, bin_gets  # the end of each file (maybe two spans), its start
    assert "org/ft-b-bins (org/ft-b-bins, commit" in result.stdout
    local = mergefast.merge(
        _config(TIES, base="org/base", **{"ft-a": str(bins["ft-a-bin"]), "ft-b": str(bins["ft-b-bins"])}),
        tmp_path / "unused",
        dry_run=True,
    )
    same = ("output:", "bytes:", "  [")
    pick = lambda t: [line.split(" -> ")[0] for line in t.splitlines() if line.startswith(same)]  # noqa: E731
    assert pick(result.stdout) == pick(local) and pick(local)


@pytest.mark.slow  # two merges
def test_merge_from_bin_repos_equals_the_local_merge(hub, bins, models, tmp_path):
    _add(hub, bins)
    local = {"base": str(models["base"]), "ft-a": str(bins["ft-a-bin"]), "ft-b": str(bins["ft-b-bins"])}
    mergefast.merge(_config(TIES, **local), tmp_path / "local")
    mergefast.merge(_config(TIES, **BIN_TIES), tmp_path / "hub")
    a, b = _tensors(tmp_path / "local"), _tensors(tmp_path / "hub")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(d for d in hub.downloads if d.endswith(".bin")) == [
        "org/ft-a-bin/pytorch_model.bin",
        "org/ft-b-bins/pytorch_model-00001-of-00002.bin",
        "org/ft-b-bins/pytorch_model-00002-of-00002.bin",
    ]


def test_a_bad_config_of_a_bin_repo_fails_at_plan_time(hub, bins, tmp_path):
    _add(hub, bins)
    with pytest.raises(ConfigError, match="layer_range"):
        mergefast.merge(_config(BAD_RANGE, **BIN_TIES), tmp_path / "out")
    assert not any(d.endswith(".bin") for d in hub.downloads)
    assert sum(hub.served.values()) < 0.01 * _total_bytes(hub), hub.served


def test_stream_inputs_refuses_a_bin_repo_before_reading_it(hub, bins, tmp_path):
    _add(hub, bins)
    config = tmp_path / "config.yml"
    config.write_text(_config(TIES, **BIN_TIES))
    result = run_cli("yaml", config, tmp_path / "out", "--stream-inputs")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert "--stream-inputs reads safetensors weights only" in lines[0] and "org/ft-a-bin" in lines[0]
    assert not any(d.endswith(".bin") for d in hub.downloads) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"not a zip at all, an old pickle", b"PK\x03\x04 cut short"])
def test_a_bin_file_that_is_not_a_zip_fails_at_plan_time_in_one_line(hub, bins, tmp_path, content):
    _add(hub, bins)
    hub.repos["org/ft-a-bin"].files["pytorch_model.bin"] = content
    config = tmp_path / "config.yml"
    config.write_text(_config(TIES, **BIN_TIES))
    result = run_cli("plan", config)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert "pytorch_model.bin of Hugging Face repo org/ft-a-bin" in lines[0] and "safetensors" in lines[0]


def test_bin_metadata_reads_no_storage_and_loads_as_meta_tensors(tmp_path, monkeypatch):
    """The zip io/hub_bin.py writes: the pickle and small records whole, every storage empty;
    loaded, the tensors' names, dtypes and shapes (a view's too); a cap on the bytes read."""
    from mergefast.io.torch_bin import load_bin_metadata

    tensors = {"a": torch.randn(300, 200), "b": torch.zeros(7, dtype=torch.bfloat16)}
    tensors["view"] = tensors["a"][:, :3]
    torch.save(tensors, tmp_path / "w.bin")
    data = (tmp_path / "w.bin").read_bytes()
    reads = []

    def fetch(start: int, end: int) -> bytes:
        reads.append((start, end))
        return data[start:end]

    raw = hub_bin.bin_metadata(fetch, len(data), "w.bin")
    assert sum(e - s for s, e in reads) < len(data) // 4
    with zipfile.ZipFile(tmp_path / "w.bin") as z:
        storages = [m for m in z.namelist() if m.partition("/")[2].startswith("data/")]
    written = zipfile.ZipFile(io.BytesIO(raw))
    assert storages and all(written.getinfo(m).file_size == 0 for m in storages)
    meta = load_bin_metadata(raw, "w.bin")
    assert {k: (v.dtype, tuple(v.shape), v.device.type) for k, v in meta.items()} == {
        "a": (torch.float32, (300, 200), "meta"),
        "b": (torch.bfloat16, (7,), "meta"),
        "view": (torch.float32, (300, 3), "meta"),
    }
    monkeypatch.setattr(hub_bin, "MAX_METADATA", hub_bin.BLOCK)
    with pytest.raises(ModelError, match="records besides the tensors pass"):
        hub_bin.bin_metadata(fetch, len(data), "w.bin")


def test_a_downloaded_bin_unlike_its_metadata_fails_in_one_line(tmp_path):
    """What the merge reads of a downloaded .bin must be what was planned: a tensor of
    another shape, dtype or name is one line naming it (io/hub_headers.py)."""
    from mergefast.io.hub_headers import check_as_planned

    planned = {"a": torch.empty(3, 4, device="meta"), "b": torch.empty(2, dtype=torch.bfloat16, device="meta")}
    check_as_planned(tmp_path / "w.bin", {"a": torch.zeros(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)}, planned)
    for loaded, name in (
        ({"a": torch.zeros(4, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}, "'a'"),
        ({"a": torch.zeros(3, 4), "b": torch.zeros(2)}, "'b'"),
        ({"a": torch.zeros(3, 4)}, "'b'"),
        ({"a": torch.zeros(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16), "c": torch.zeros(1)}, "'c'"),
    ):
        with pytest.raises(ModelError, match=f"w.bin: tensor {name} is not as the file's metadata"):
            check_as_planned(tmp_path / "w.bin", loaded, planned)
