import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from checkpoints import write_checkpoint
from helpers import run_cli_process
from huggingface_hub import errors as hfe

from mergefast.errors import ConfigError, ModelError
from mergefast.io.hub import ModelRef, parse_model_ref, resolve_model
from mergefast.io.reader import CheckpointReader

COMMIT = "0123456789abcdef0123456789abcdef01234567"


# -- parse_model_ref --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ref",
    [
        ("org/name", ModelRef("org/name")),
        ("org/name@v1.0", ModelRef("org/name", "v1.0")),
        ("gpt2", ModelRef("gpt2")),
        ("/abs/path", ModelRef("/abs/path")),
        (" ./rel@main ", ModelRef("./rel", "main")),
    ],
)
def test_parse_model_ref(text, ref):
    assert parse_model_ref(text) == ref
    assert str(ref) == text.strip()


@pytest.mark.parametrize(
    "text, match",
    [
        ("org/a@b@c", "more than one '@'"),
        ("org/base+org/lora", r"a LoRA reference \(model\+lora\) names a merged model, not a tokenizer source"),
        ("", "no path"),
        ("@main", "no path"),
        ("org/name@", "no revision"),
    ],
)
def test_parse_model_ref_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_model_ref(text)


# -- local paths: never touch the hub -----------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Hugging Face Hub must not be called")

    for name in ("snapshot_download", "list_repo_files", "hf_hub_download", "repo_info", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, boom)


def test_local_folder(tmp_path, no_hub):
    folder = write_checkpoint(tmp_path / "m", {"a": torch.ones(2)})
    assert resolve_model(ModelRef(str(folder))) == folder
    assert resolve_model(parse_model_ref(str(folder))) == folder


def test_local_relative_folder(tmp_path, no_hub, monkeypatch):
    write_checkpoint(tmp_path / "org" / "name", {"a": torch.ones(2)})
    monkeypatch.chdir(tmp_path)
    # an existing local folder wins over the repo id of the same spelling
    assert resolve_model(ModelRef("org/name")) == tmp_path / "org" / "name"


def test_local_folder_with_revision(tmp_path, no_hub):
    with pytest.raises(ConfigError, match="remove the @revision"):
        resolve_model(ModelRef(str(tmp_path), "main"))


@pytest.mark.parametrize("path", ["/no/such/model", "./missing", "../missing", "~/no-such-model-xyz", "a/b/c"])
def test_missing_local_path_is_not_a_repo(path, no_hub):
    with pytest.raises(ModelError, match=f"model folder {path} does not exist"):
        resolve_model(ModelRef(path))


def test_local_file(tmp_path, no_hub):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(ModelRef(str(tmp_path / "model.safetensors")))


# -- repo ids, offline, from a hub cache laid out like huggingface_hub's -------------------------


def _hub_cache(root: Path, repo="org/name", refs=("main",), sharded=False) -> Path:
    """models--org--name/{refs/<ref>, blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>}"""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    src = write_checkpoint(
        root / "src",
        {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)},
        fmt="sharded" if sharded else "safetensors",
        config={"model_type": "llama"},
    )
    snap = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        blob = repo_dir / "blobs" / f"{i:064x}"
        f.rename(blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo_dir / "refs").mkdir()
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(COMMIT)
    return snap


@pytest.fixture
def offline(monkeypatch, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def real_snapshot_download(monkeypatch):
    from huggingface_hub import _snapshot_download

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _snapshot_download.snapshot_download)


@pytest.mark.parametrize("sharded", [False, True])
def test_repo_offline_from_cache(tmp_path, offline, real_snapshot_download, sharded):
    snap = _hub_cache(tmp_path / "hub", sharded=sharded)
    folder = resolve_model(ModelRef("org/name"), cache_dir=str(tmp_path / "hub"))
    assert folder == snap
    with CheckpointReader(folder) as r:
        assert torch.equal(r.read("w"), torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("rev", ["v1", COMMIT])
def test_repo_offline_revision(tmp_path, offline, real_snapshot_download, rev):
    snap = _hub_cache(tmp_path / "hub", refs=("main", "v1"))
    assert resolve_model(ModelRef("org/name", rev), cache_dir=str(tmp_path / "hub")) == snap


def test_repo_offline_not_cached(tmp_path, offline, real_snapshot_download):
    _hub_cache(tmp_path / "hub")
    with pytest.raises(ModelError, match="org/other.*not in the local cache.*HF_HUB_OFFLINE"):
        resolve_model(ModelRef("org/other"), cache_dir=str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="org/name@v9.*not in the local cache"):
        resolve_model(ModelRef("org/name", "v9"), cache_dir=str(tmp_path / "hub"))


# -- repo ids, online (huggingface_hub mocked) -------------------------------------------------


def _http_error(cls, status):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    return cls("mocked", response=response)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def snapshot_download(repo, *, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False):
        calls.append(
            dict(repo=repo, revision=revision, allow_patterns=allow_patterns, local_files_only=local_files_only)
        )
        folder = Path(cache_dir) / "snap"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors.index.json").write_text(
            '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
        )
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def _listing(monkeypatch, files):
    """The Hub lists `files` for any repo (model_info's siblings, the one listing request)."""

    def model_info(repo, *, revision=None, timeout=None):
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files])

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)


def test_online_downloads_only_the_used_weights(tmp_path, online, monkeypatch):
    listing = [
        "config.json",
        "tokenizer.json",
        "consolidated.safetensors",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "pytorch_model.bin",
    ]
    _listing(monkeypatch, listing)
    folder = resolve_model(ModelRef("org/name", "v2"), cache_dir=str(tmp_path))
    assert folder == tmp_path / "snap"
    assert all(c["revision"] == "v2" and not c["local_files_only"] for c in online)
    last = online[-1]["allow_patterns"]
    assert "model-00001-of-00002.safetensors" in last and "model-00002-of-00002.safetensors" in last
    assert "*.json" in last and "tokenizer.model" in last
    assert not any("consolidated" in p or p.endswith(".bin") or p == "*.safetensors" for p in last)


def test_online_single_file_and_bin_fallback(tmp_path, online, monkeypatch):
    _listing(monkeypatch, ["config.json", "model.safetensors"])
    resolve_model(ModelRef("org/name"), cache_dir=str(tmp_path))
    assert "model.safetensors" in online[-1]["allow_patterns"] and len(online) == 1
    _listing(monkeypatch, ["config.json", "weights.bin"])
    resolve_model(ModelRef("org/name"), cache_dir=str(tmp_path))
    assert "*.bin" in online[-1]["allow_patterns"]


@pytest.mark.parametrize(
    "error, match",
    [
        (lambda: _http_error(hfe.RepositoryNotFoundError, 404), "repo org/name not found.*hf auth login"),
        (lambda: _http_error(hfe.GatedRepoError, 403), "gated: accept its terms on https://huggingface.co/org/name"),
        (
            lambda: _http_error(hfe.RevisionNotFoundError, 404),
            "revision 'main' not found in Hugging Face repo org/name",
        ),
        (lambda: ConnectionError("no route to host"), "cannot reach the Hugging Face Hub for org/name@main"),
    ],
)
def test_online_errors(tmp_path, online, monkeypatch, error, match):
    def fail(repo, *, revision=None, timeout=None):
        raise error()

    monkeypatch.setattr(huggingface_hub, "model_info", fail)

    def not_cached(*a, **k):
        raise hfe.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(ModelError, match=match) as err:
        resolve_model(ModelRef("org/name", "main"), cache_dir=str(tmp_path))
    # `org/name` may have been meant as a relative folder: the message says none was found
    assert "nor is there a local folder org/name in" in str(err.value)


def test_online_network_down_uses_cache(tmp_path, online, monkeypatch):
    def fail(repo, *, revision=None, timeout=None):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "model_info", fail)
    assert resolve_model(ModelRef("org/name"), cache_dir=str(tmp_path)) == tmp_path / "snap"
    assert online[-1]["local_files_only"] is True


def test_invalid_repo_id(no_hub):
    with pytest.raises(ModelError, match="not a valid Hugging Face repo id"):
        resolve_model(ModelRef("bad name!"))


@pytest.mark.parametrize("target", ["missing", "loop"])
def test_a_link_that_leads_nowhere_is_named(tmp_path, target):
    link = tmp_path / "model"
    link.symlink_to(tmp_path / "missing" if target == "missing" else link)
    with pytest.raises(ModelError, match="symbolic link that leads nowhere"):
        resolve_model(ModelRef(str(link)))


def test_listing_is_one_request_without_retries(tmp_path, online, monkeypatch):
    """The listing that finds out whether the Hub can be reached is model_info (one request,
    a timeout), never list_repo_files, whose retries took ~25 s without network."""
    calls = []

    def model_info(repo, *, revision=None, timeout=None):
        calls.append(timeout)
        raise ConnectionError("connection refused")

    def list_repo_files(*a, **k):
        raise AssertionError("list_repo_files retries for ~25 s without network")

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda *a, **k: (_ for _ in ()).throw(hfe.LocalEntryNotFoundError("not cached")),
    )
    with pytest.raises(ModelError, match="cannot reach the Hugging Face Hub for org/name"):
        resolve_model(ModelRef("org/name"), cache_dir=str(tmp_path))
    assert len(calls) == 1 and calls[0] is not None and calls[0] <= 30


@pytest.mark.slow  # a subprocess
def test_hub_without_network_fails_fast_in_one_line(tmp_path):
    """A repo id with the Hub unreachable (HF_ENDPOINT at a local port that refuses: no real
    host is contacted) fails within seconds, with mergefast's one line and nothing from
    huggingface_hub's retries."""
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        config = tmp_path / "config.yml"
        config.write_text("merge_method: linear\nmodels:\n  - model: org/name\n    parameters: {weight: 1}\n")
        env = {
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "*",
            "no_proxy": "*",
        }
        env.pop("HF_HUB_CACHE", None)
        start = time.monotonic()
        proc = run_cli_process("yaml", config, tmp_path / "out", "--quiet", env=env, cwd=tmp_path, timeout=120)
        seconds = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergefast: error: cannot reach the Hugging Face Hub"), lines
    # huggingface_hub's backoff prints "Retrying in 1s [Retry 1/5]" before each of its ~25 s of
    # retries: none may run (time is not asserted: imports alone take seconds on a slow runner)
    assert "org/name" in lines[0] and "Retry" not in proc.stderr, f"{seconds:.1f} s: {proc.stderr}"
    assert not (tmp_path / "out").exists()
