"""Hugging Face repos opened for planning without their weights (design: "Inputs from the Hub").

`locate_model` returns a local folder as before, or, for a repo id that can be planned from
headers, a `RemoteRepo`: one listing request (file names and sizes, pinned to the commit it
reports), the small side files (config, tokenizer, the weight index) downloaded into the
standard huggingface_hub cache, and each safetensors header (or `.bin` file's zip directory and
pickle, io/hub_bin.py) read with HTTP range requests (io/hub_headers.py). The weights
themselves are downloaded only after the plan has passed (io/hub_fetch.py), into the same
snapshot folder, so the plan's file paths stay valid.

HF_HUB_OFFLINE, a listing without file sizes, and an unreachable Hub with a cached copy keep the
old path: io/hub.py's `resolve_model`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from .hub import (
    META_PATTERNS,
    ModelRef,
    _offline,
    _weight_files,
    cache_when_unreachable,
    check_repo_id,
    download_repo,
    hub_errors,
    local_folder,
    no_local_folder_either,
    resolve_model,
)
from .model_files import WEIGHT_FILES, read_model_json

# Parallel requests for side files and headers: latency-bound, not bandwidth-bound.
REQUEST_THREADS = 8


@dataclass
class RemoteRepo:
    """A Hub repo pinned to one commit, its weights not (all) downloaded yet."""

    repo: str
    revision: str | None  # as the config wrote it
    commit: str
    sizes: dict[str, int]  # every file of the repo -> its size in bytes
    lfs: dict[str, str]  # LFS file -> sha256 (its blob name in the cache)
    weights: str  # model.safetensors or pytorch_model.bin, or the index of either
    cache_dir: str | None
    storage: Path  # <cache>/models--org--name
    raw_headers: dict[str, bytes] = field(default_factory=dict)  # file -> header JSON read over HTTP
    # .bin file -> its records without storages, read over HTTP (io/hub_bin.py)
    raw_bins: dict[str, bytes] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"

    @property
    def folder(self) -> Path:
        """The snapshot folder the files are (or will be) in."""
        return self.storage / "snapshots" / self.commit

    def is_cached(self, name: str) -> bool:
        """Whether file `name` is in the local cache (this snapshot, or its blob from another)."""
        if (self.folder / name).is_file():
            return True
        sha = self.lfs.get(name)
        return sha is not None and (self.storage / "blobs" / sha).is_file()

    def download(self, name: str, tqdm_class=None) -> Path:
        """Download file `name` of this commit into the cache (nothing when cached); its path.
        `tqdm_class`: huggingface_hub's progress bar class (io/hub_arrivals.py's cancels)."""
        import huggingface_hub as hf

        with hub_errors(self.repo, self.revision, self.cache_dir, file=name):
            return Path(
                hf.hf_hub_download(
                    self.repo, name, revision=self.commit, cache_dir=self.cache_dir, tqdm_class=tqdm_class
                )
            )


def locate_model(ref: ModelRef, cache_dir: str | None) -> Path | RemoteRepo:
    """A local folder, a fully resolved hub snapshot (see the module docstring), or a
    RemoteRepo whose side files are downloaded and whose weights are not."""
    local = local_folder(ref)
    if local is not None:
        return local
    if _offline():
        folder = resolve_model(ref, cache_dir)
        _check_cached_weights(folder, ref)
        return folder
    with no_local_folder_either(ref):
        check_repo_id(ref.path, str(ref))
        with hub_errors(ref.path, ref.revision, cache_dir):
            try:
                info = _listing(ref)
            except Exception as e:  # noqa: BLE001 - re-raised unless the Hub is unreachable
                return cache_when_unreachable(e, ref.path, ref.revision, cache_dir)
            remote = _remote_repo(ref, info, cache_dir)
            if remote is None:  # no weights, or a Hub that lists no sizes: download as before
                return download_repo(ref.path, ref.revision, cache_dir, [s.rfilename for s in info.siblings or []])
        _fetch_side_files(remote)
        return remote


def _check_cached_weights(folder: Path, ref: ModelRef) -> None:
    """Offline, a cached snapshot whose weights are missing (`mergefast plan` reads only their
    headers) fails in one line that says how to get them."""
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    missing = [] if present else ["model.safetensors"]
    if present and present[0].endswith(".index.json"):
        data = read_model_json(folder, present[0])
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        shards = sorted({v for v in weight_map.values() if isinstance(v, str)}) if isinstance(weight_map, dict) else []
        missing = [name for name in shards if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"Hugging Face repo {ref}: the cached copy in {folder} lacks its weights ({missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; `mergefast plan` reads "
            "only their headers) and HF_HUB_OFFLINE is set: unset it to download them, or run "
            f"`hf download {ref.path}` first"
        )


def _listing(ref: ModelRef):
    """model_info with file sizes: one request, not retried (see hub._repo_files)."""
    import huggingface_hub as hf
    from huggingface_hub import constants

    return hf.model_info(ref.path, revision=ref.revision, timeout=constants.HF_HUB_ETAG_TIMEOUT, files_metadata=True)


def _remote_repo(ref: ModelRef, info, cache_dir: str | None) -> RemoteRepo | None:
    """The RemoteRepo of a listing, or None when it cannot be planned from headers."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    siblings = info.siblings or []
    weights = _weight_files([s.rfilename for s in siblings])
    if info.sha is None or weights is None:
        return None
    if any(s.size is None for s in siblings):
        return None
    storage = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref.path, repo_type="model")
    return RemoteRepo(
        ref.path,
        ref.revision,
        info.sha,
        {s.rfilename: s.size for s in siblings},
        {s.rfilename: s.lfs.sha256 for s in siblings if s.lfs is not None},
        weights[0],
        cache_dir,
        storage,
    )


def _fetch_side_files(remote: RemoteRepo) -> None:
    """Download the config, tokenizer and index files (small, and needed to plan), and record
    the revision the config named in the cache's refs/ (so HF_HUB_OFFLINE finds it later)."""
    from huggingface_hub.utils import filter_repo_objects

    names = list(filter_repo_objects(list(remote.sizes), allow_patterns=META_PATTERNS))
    with ThreadPoolExecutor(REQUEST_THREADS) as pool:
        list(pool.map(remote.download, names))
    remote.folder.mkdir(parents=True, exist_ok=True)
    revision = remote.revision or "main"
    if revision != remote.commit:
        ref_file = remote.storage / "refs" / revision
        if not ref_file.is_file() or ref_file.read_text().strip() != remote.commit:
            ref_file.parent.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(remote.commit)


def check_listed(remote: RemoteRepo, shards: set[str], index: Path) -> None:
    """ModelError when the index names a shard the repo does not have."""
    missing = sorted(name for name in shards if name not in remote.sizes)
    if missing:
        raise ModelError(
            f"{index}: weight_map names {missing[0]!r}, which Hugging Face repo {remote.what} "
            f"(commit {remote.commit[:12]}) does not have; the repo is incomplete: "
            "pin another @revision or tell its owners"
        )
