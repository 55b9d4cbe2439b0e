"""Files of an untrusted model folder: mergefast reads or copies only files that stay inside it.

A model folder may come from anywhere (a download, an archive, a shared disk). A symlink in it
that leads out (`tokenizer.json -> ~/.ssh/id_ed25519`) would otherwise be read, or copied into
OUT and uploaded with the merged model. So every file taken from a model folder (config.json,
tokenizer files, chat templates, generation_config.json, the weight index and its shards) is
looked up with `model_file`, which refuses a name or a real path (all symlinks followed) that
leaves the folder. A huggingface_hub cache snapshot (`models--org--name/snapshots/<rev>/`) is
made of symlinks into that repo's `blobs/` store: that store counts as inside.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelError

# Detection order, as in mergekit's ShardedTensorIndex.from_disk.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# The safetensors library's limit on a header: at most 100,000,000 bytes (MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000

# Tokenizer and generation files copied from the donor, as mergekit 0.1.5 copies them.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# Every file besides the weights that mergefast reads or copies from a model folder.
SIDE_FILES = ("config.json", *TOKENIZER_FILES)

# Files a tokenizer loader never reads: the weights, governed by the reader's own rules (a
# folder whose weights live on another disk, linked in, can still merge tokenizers).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".index.json")


def model_file(folder: Path, name: str, listed_in: Path | None = None) -> Path | None:
    """`folder / name` when it is a regular file whose real path stays inside `folder` (or its
    hub snapshot's `blobs/`); None when there is none (missing, a folder, a dangling link).

    ModelError, naming the file, when `name` is absolute or climbs out (`..`), or when the file
    is a symlink (or lies under one) leading outside. `listed_in`: the file that named `name`
    (a weight index), for the message."""
    folder = Path(folder)
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        where = f"{listed_in}: names file" if listed_in else f"{folder}: file"
        raise ModelError(
            f"{where} {name!r}, outside the model folder {folder}; the file is corrupt or "
            "malicious: only files inside the folder are read"
        )
    path = folder / rel
    if not path.is_file():
        return None
    check_inside(folder, path, listed_in)
    return path


def check_inside(folder: Path, path: Path, listed_in: Path | None = None) -> None:
    """ModelError when the real path of `path` (in model folder `folder`) lies outside the
    folder and outside its hub snapshot's `blobs/` store."""
    real = path.resolve()
    if _is_within(real, Path(folder).resolve()):
        return
    blobs = hf_blobs_dir(Path(folder))
    if blobs is not None and _is_within(real, blobs):
        return  # huggingface_hub snapshots link every file into ../../blobs
    listed = f" (listed in {listed_in})" if listed_in else ""
    how = "a symlink to" if path.is_symlink() else "under a symlinked folder, is"
    raise ModelError(
        f"{path}: {how} {real}, outside the model folder{listed}; mergefast reads and "
        "copies only files inside a model folder, so that no file from elsewhere reaches OUT: "
        "copy the file into the folder instead"
    )


def check_side_files(folder: Path) -> None:
    """Check every side file of `folder` (SIDE_FILES) with `model_file`, when the model is
    opened: a file leading outside then fails before any tensor is read, not after the merge."""
    for name in SIDE_FILES:
        model_file(folder, name)


def check_tokenizer_folder(folder: Path) -> None:
    """Before a tokenizer library opens `folder` by itself (it picks its files by name): every
    top-level entry but the weights, and every file of `additional_chat_templates/`, must stay
    inside the folder (ModelError naming the first that does not)."""
    folder = Path(folder)
    entries = list(_entries(folder))
    templates = folder / "additional_chat_templates"
    if templates.is_dir():
        check_inside(folder, templates)
        entries += _entries(templates)
    for entry in entries:
        if not entry.name.endswith(_WEIGHT_SUFFIXES) and entry.exists():
            check_inside(folder, entry)


def _entries(folder: Path) -> list[Path]:
    """The entries of `folder` that are symlinks (only a symlink can lead out of it)."""
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if e.is_symlink()]
    except OSError as exc:
        raise ModelError(f"{folder}: cannot list the model folder ({exc.strerror or exc})") from exc


def load_json(path: Path):
    """`path` parsed as UTF-8 JSON. Every failure is a ValueError (as json's own errors are),
    a document nested too deeply for the parser (RecursionError) included."""
    return parse_json(Path(path).read_text(encoding="utf-8"))


def parse_json(text: str):
    """`text` parsed as JSON; every failure a ValueError, as `load_json`'s."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_model_json(folder: Path, name: str, listed_in: Path | None = None):
    """The JSON file `name` of model folder `folder` (checked with `model_file`), or None when
    absent; ModelError naming the file when it cannot be read or is not valid JSON."""
    path = model_file(folder, name, listed_in)
    if path is None:
        return None
    try:
        return load_json(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read {name} ({_reason(exc)}); re-download it") from None


def read_model_object(folder: Path, name: str) -> dict | None:
    """`read_model_json` of a file that must hold a JSON object: None when absent, ModelError
    naming the file when it holds anything else (JSON null included)."""
    data = read_model_json(folder, name)
    if data is None and model_file(folder, name) is None:
        return None
    if not isinstance(data, dict):
        raise ModelError(f"{folder / name}: {name} is not a JSON object; re-download it")
    return data


def hf_blobs_dir(folder: Path) -> Path | None:
    """The `blobs/` folder when `folder` is a huggingface_hub cache snapshot, else None."""
    snapshots = folder.parent
    repo = snapshots.parent
    if snapshots.name == "snapshots" and repo.name.startswith(("models--", "datasets--")):
        return (repo / "blobs").resolve()
    return None


def _is_within(path: Path, root: Path) -> bool:
    """True when `path` is `root` or below it (lexically)."""
    return path == root or root in path.parents


def _reason(exc: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


def header_length(path: Path | str, head: bytes, size: int) -> int:
    """The JSON length declared by a safetensors file's first 8 bytes `head`, checked against
    the library's limit and the file's `size` (ModelError for a bad length)."""
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise ModelError(
            f"{path}: corrupt safetensors header (declared header length {n} bytes, file is {size} bytes); "
            "the file is truncated or not safetensors: re-download it"
        )
    return n
