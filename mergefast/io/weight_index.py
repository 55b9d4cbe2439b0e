"""Reading a sharded checkpoint's `*.index.json`: tensor name -> shard file, kept inside the folder.

A weight_map may only name files inside the model folder (or, for a huggingface_hub cache
snapshot, symlinks into that repo's `blobs/` folder); anything else is refused as corrupt or
malicious before a byte of it is read. The rule is io/model_files.py's, shared by every file
read from a model folder; the index file itself obeys it too.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from ..errors import ModelError
from .model_files import model_file, read_model_json


def read_weight_map(folder: Path, index: Path, remote: Collection[str] = ()) -> dict[str, Path]:
    """Tensor name -> shard path from `index` (a file in model folder `folder`), every shard
    checked to exist and to lie inside the folder; a shard named in `remote` (the files of a
    Hugging Face repo planned before its weights are downloaded) need not exist yet."""
    data = read_model_json(folder, index.name)
    if data is None:
        raise ModelError(f"{index}: the index is missing or not a file; re-download the model")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelError(f"{index}: corrupt index (no 'weight_map' object of tensor name -> file); re-download it")
    if not weight_map:
        raise ModelError(f"{index}: the index's weight_map is empty (it names no tensor); re-download the model")
    files: dict[str, Path] = {}
    out: dict[str, Path] = {}
    for name, rel in weight_map.items():
        if rel not in files:
            files[rel] = _shard_path(folder, index, rel, remote)
        out[name] = files[rel]
    return out


def _shard_path(folder: Path, index: Path, rel: str, remote: Collection[str]) -> Path:
    """`folder / rel`, after checking it exists (or is a `remote` file) and neither it nor its
    symlink target leaves the folder."""
    path = model_file(folder, rel, listed_in=index)
    if path is None and rel in remote and not (folder / rel).is_dir():
        return folder / rel  # downloaded after planning, by io/hub_fetch.py
    if path is None:
        missing = folder / rel
        what = "is a folder, not a weights file" if missing.is_dir() else "does not exist"
        raise ModelError(f"{index}: weight_map names {rel!r} but {missing} {what}; re-download the model")
    return path
