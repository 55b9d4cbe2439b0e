"""Reading a sharded checkpoint's `*.index.json`: tensor name -> shard file, kept inside the folder.

A weight_map may only name files inside the model folder (or, for a huggingface_hub cache
snapshot, symlinks into that repo's `blobs/` folder); anything else is refused as corrupt or
malicious before a byte of it is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError


def read_weight_map(folder: Path, index: Path) -> dict[str, Path]:
    """Tensor name -> shard path from `index` (a file in model folder `folder`), every shard
    checked to exist and to lie inside the folder."""
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{index}: cannot read the index ({e}); re-download it") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelError(f"{index}: corrupt index (no 'weight_map' object of tensor name -> file); re-download it")
    root = folder.resolve()
    blobs = _hf_blobs_dir(folder)
    files: dict[str, Path] = {}
    out: dict[str, Path] = {}
    for name, rel in weight_map.items():
        if rel not in files:
            files[rel] = _check_shard_path(folder, index, root, blobs, rel)
        out[name] = files[rel]
    return out


def _check_shard_path(folder: Path, index: Path, root: Path, blobs: Path | None, rel: str) -> Path:
    """`folder / rel`, after checking it exists and neither it nor its symlink target leaves the folder."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel == "" or not _is_within((folder / p).absolute(), folder):
        raise ModelError(
            f"{index}: weight_map names file {rel!r}, outside the model folder; "
            "the index is corrupt or malicious: only files inside the folder are read"
        )
    path = folder / p
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise ModelError(f"{index}: weight_map names {rel!r} but {path} {what}; re-download the model")
    real = path.resolve()
    # huggingface_hub snapshots are symlinks into the repo's blobs/ folder: allowed.
    if not (_is_within(real, root) or (blobs is not None and _is_within(real, blobs))):
        raise ModelError(
            f"{index}: weight_map file {rel!r} is a symlink to {real}, outside the model folder; "
            "copy the file into the folder instead"
        )
    return path


def _hf_blobs_dir(folder: Path) -> Path | None:
    """The `blobs/` folder when `folder` is a huggingface_hub cache snapshot, else None."""
    snapshots = folder.parent
    repo = snapshots.parent
    if snapshots.name == "snapshots" and repo.name.startswith(("models--", "datasets--")):
        return (repo / "blobs").resolve()
    return None


def _is_within(path: Path, root: Path) -> bool:
    """True when `path` is `root` or below it (lexically)."""
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False
