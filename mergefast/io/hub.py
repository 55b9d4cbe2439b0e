"""Model references (`path[@revision]`) and locating them: a local folder, or a Hugging Face
repo downloaded into (or found offline in) the normal huggingface_hub cache.

Downloads are narrower than mergekit's `*.safetensors` / `*.bin`: the repo listing decides the
format in the reader's order (model.safetensors, its index, pytorch_model.bin, its index) and
only the files that format uses are fetched (for an index, the shards its weight_map names),
so a repo that also ships e.g. `consolidated.safetensors` is not downloaded twice.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelError
from .model_files import WEIGHT_FILES, read_model_json

log = logging.getLogger(__name__)

# Config and tokenizer files, always fetched next to the weights.
META_PATTERNS = ["*.json", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt", "vocab.json"]


@dataclass(frozen=True)
class ModelRef:
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.path if self.revision is None else f"{self.path}@{self.revision}"


def parse_model_ref(text: str) -> ModelRef:
    """Parse mergekit's string form `path[@revision]` (a model's; `model+lora` is split first:
    io/lora.py's split_lora_ref)."""
    text = str(text).strip()
    if "+" in text:
        raise ConfigError(
            f"model reference {text!r}: a LoRA reference (model+lora) names a merged model, not a tokenizer "
            "source; name the model alone"
        )
    if text.count("@") > 1:
        raise ConfigError(f"model reference {text!r} has more than one '@'; use path or path@revision")
    path, _, revision = text.partition("@")
    if not path:
        raise ConfigError(f"model reference {text!r} has no path; use a folder or a repo id like org/name[@revision]")
    if "@" in text and not revision:
        raise ConfigError(f"model reference {text!r} ends with '@' but names no revision; remove it or add one")
    return ModelRef(path, revision or None)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def _offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def resolve_model(ref: ModelRef, cache_dir: str | None = None) -> Path:
    """The local folder holding `ref`: an existing directory as is, else a Hugging Face repo
    found in (offline, HF_HUB_OFFLINE=1) or downloaded into the hub cache (`cache_dir`, else
    HF_HUB_CACHE / HF_HOME). Only config, tokenizer and weight files are downloaded.
    (Planning opens repos from their headers instead: io/hub_remote.py.)"""
    if isinstance(ref, str):
        ref = parse_model_ref(ref)
    local = local_folder(ref)
    if local is not None:
        return local
    with no_local_folder_either(ref):
        return _resolve_repo(ref.path, ref.revision, cache_dir)


def local_folder(ref: ModelRef) -> Path | None:
    """The existing local folder `ref` names, or None when it reads as a Hugging Face repo id;
    ModelError/ConfigError for a file, a dangling link, a missing path or a folder@revision."""
    local = Path(ref.path).expanduser()
    if local.is_dir():
        if ref.revision is not None:
            raise ConfigError(
                f"model {ref}: {local} is a local folder, and a revision (@{ref.revision}) only applies to "
                "Hugging Face repos; remove the @revision"
            )
        return local.absolute()
    if local.exists():
        raise ModelError(
            f"model path {local} is a file; point the config at the folder holding config.json and the weights"
        )
    if local.is_symlink():
        raise ModelError(
            f"model path {local} is a symbolic link that leads nowhere (a missing target or a "
            "loop); point it at the model folder"
        )
    if _looks_like_path(ref.path):
        raise ModelError(
            f"model folder {ref.path} does not exist; check the path (a Hugging Face repo id looks like org/name)"
        )
    return None


@contextmanager
def no_local_folder_either(ref: ModelRef):
    """A repo error also says that no local folder of that name was found."""
    try:
        yield
    except ModelError as exc:
        # `models/ft-a` reads as a repo id too: say that no such local folder was found either
        raise ModelError(
            f"{exc} (nor is there a local folder {ref.path} in {Path.cwd()}: "
            "relative model paths are read from the current folder)"
        ) from exc.__cause__


def check_repo_id(repo: str, what: str) -> None:
    """ModelError when `repo` is not a valid Hugging Face repo id."""
    from huggingface_hub import errors as hfe
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except hfe.HFValidationError as e:
        raise ModelError(
            f"model {what}: not a local folder and not a valid Hugging Face repo id ({e}); check the path"
        ) from e


def cached_snapshot(repo: str, revision: str | None, cache_dir: str | None) -> Path:
    """The repo's snapshot folder in the local cache (no network; LocalEntryNotFoundError)."""
    import huggingface_hub as hf

    return Path(
        hf.snapshot_download(
            repo, revision=revision, cache_dir=cache_dir, local_files_only=True, allow_patterns=META_PATTERNS
        )
    )


def cache_when_unreachable(error: Exception, repo: str, revision: str | None, cache_dir: str | None) -> Path:
    """After the listing request failed with `error`: the cached snapshot when the Hub cannot
    be reached and the repo is cached (a warning says so); else `error` is raised again."""
    from huggingface_hub import errors as hfe

    if not is_network_error(error):
        raise error
    try:
        folder = cached_snapshot(repo, revision, cache_dir)
    except hfe.LocalEntryNotFoundError:
        raise error from None
    what = repo if revision is None else f"{repo}@{revision}"
    log.warning("cannot reach the Hugging Face Hub (%s); using the cached %s in %s", error, what, folder)
    return folder


def _resolve_repo(repo: str, revision: str | None, cache_dir: str | None) -> Path:
    what = repo if revision is None else f"{repo}@{revision}"
    check_repo_id(repo, what)
    with hub_errors(repo, revision, cache_dir):
        if _offline():
            return cached_snapshot(repo, revision, cache_dir)
        try:
            files = _repo_files(repo, revision)
        except Exception as e:  # noqa: BLE001 - re-raised unless the Hub is unreachable
            return cache_when_unreachable(e, repo, revision, cache_dir)
        return download_repo(repo, revision, cache_dir, files)


def download_repo(repo: str, revision: str | None, cache_dir: str | None, files: list[str]) -> Path:
    """Download the config, tokenizer and weight files of a repo listing `files` (the weights
    of one format only, see the module docstring); the snapshot folder."""
    import huggingface_hub as hf

    weights = _weight_files(files)
    if weights is None:  # no standard weight file: mergekit's patterns, the reader will complain
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
    elif weights[0].endswith(".index.json"):
        meta = hf.snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=META_PATTERNS)
        weights = _shards_of(Path(meta) / weights[0])
    folder = hf.snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=META_PATTERNS + weights)
    return Path(folder)


@contextmanager
def hub_errors(repo: str, revision: str | None, cache_dir: str | None, file: str | None = None):
    """huggingface_hub's exceptions as one-line ModelErrors naming the repo and what to do."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hfe

    what = repo if revision is None else f"{repo}@{revision}"
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        yield
    except ModelError:
        raise
    except hfe.GatedRepoError as e:
        raise ModelError(
            f"Hugging Face repo {repo} is gated: accept its terms on https://huggingface.co/{repo} "
            "and log in (`hf auth login` or HF_TOKEN)"
        ) from e
    except hfe.RepositoryNotFoundError as e:
        raise ModelError(
            f"Hugging Face repo {repo} not found (or private: log in with `hf auth login` or set HF_TOKEN); "
            "check the model name in the config"
        ) from e
    except hfe.RevisionNotFoundError as e:
        raise ModelError(
            f"revision {revision!r} not found in Hugging Face repo {repo}; check the @revision in the config"
        ) from e
    except hfe.RemoteEntryNotFoundError as e:
        raise ModelError(
            f"file {file or '?'} not found in Hugging Face repo {what}, though the repo lists it (or its index "
            "names it); the repo is incomplete or changing: retry later, or pin a working @revision"
        ) from e
    except hfe.IncompleteSnapshotError as e:
        raise ModelError(
            f"the cached copy of {what} in {cache} is incomplete and the Hub cannot be used; "
            "rerun with network access (HF_HUB_OFFLINE unset) to finish the download"
        ) from e
    except hfe.LocalEntryNotFoundError as e:
        raise ModelError(
            f"Hugging Face repo {what} is not in the local cache {cache} and HF_HUB_OFFLINE is set; "
            f"download it first (`hf download {repo}`) or unset HF_HUB_OFFLINE"
        ) from e
    except Exception as e:
        if is_network_error(e):
            raise ModelError(
                f"cannot reach the Hugging Face Hub for {what} ({type(e).__name__}: {_first_line(e)}) and it is not "
                f"cached in {cache}; check the network or proxy, or download it elsewhere and set HF_HUB_OFFLINE=1"
            ) from e
        if isinstance(e, hfe.HfHubHTTPError):
            raise ModelError(
                f"Hugging Face Hub error for {what}: {_first_line(e)}; retry later, or check your token"
            ) from e
        raise


def _repo_files(repo: str, revision: str | None) -> list[str]:
    """The repo's file names, from one metadata request that is not retried.

    This is the first request of a run, the one that finds out whether the Hub can be
    reached: huggingface_hub's list_repo_files retries a refused connection 5 times with
    backoff (~25 s, each retry a warning line on stderr) before it fails. Downloads, which
    start once this succeeded, keep huggingface_hub's retries."""
    import huggingface_hub as hf
    from huggingface_hub import constants

    info = hf.model_info(repo, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    if info.siblings is None:  # not listed by this Hub (a mirror?): ask for the tree instead
        return hf.list_repo_files(repo, revision=revision)
    return [s.rfilename for s in info.siblings]


def _weight_files(files: list[str]) -> list[str] | None:
    """The first of the reader's weight files present at the repo root."""
    root = {f for f in files if "/" not in f}
    return next(([f] for f in WEIGHT_FILES if f in root), None)


def _shards_of(index: Path) -> list[str]:
    """The shard names of a downloaded index (read under the model-folder rules)."""
    try:
        weight_map = read_model_json(index.parent, index.name)["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(
            f"{index}: cannot read the weight_map of the downloaded index ({e}); the repo is broken"
        ) from e


def is_network_error(e: BaseException) -> bool:
    """Whether `e` is a failure to reach or keep talking to a server (not an HTTP error status)."""
    from huggingface_hub import errors as hfe

    if isinstance(e, hfe.HfHubHTTPError):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return type(e).__module__.split(".")[0] in {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
