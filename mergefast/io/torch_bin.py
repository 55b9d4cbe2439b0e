"""Opening a PyTorch `.bin` checkpoint lazily: the pickle is read, tensor data is memory-mapped."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from ..errors import ModelError


def load_bin_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Memory-map a .bin checkpoint: the pickle is read, tensor data is not touched. A file of
    torch's legacy format (before torch 1.6, no zip: torch cannot map it, transformers and
    mergekit load it) is read whole."""
    advice = "re-save it with torch.save (zip format) or convert it to safetensors"
    if not zipfile.is_zipfile(path):
        return _load(path, path, "weights_only=True (torch's legacy format)", advice, map_location="cpu")
    return _load(path, path, "weights_only=True, mmap=True", advice, mmap=True, map_location="cpu")


def load_bin_metadata(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a .bin checkpoint as meta tensors (names, dtypes, shapes; no data), from
    the zip of its records without their storages that io/hub_bin.py reads over HTTP. `where`
    names the file in errors."""
    return _load(io.BytesIO(raw), where, "weights_only=True", "convert the repo to safetensors", map_location="meta")


def _load(source, where, how: str, advice: str, **options) -> dict[str, torch.Tensor]:
    """torch.load(source, weights_only=True, **options) as a dict of tensors; a failure is one
    ModelError line naming `where`, `how` it was loaded and the `advice`."""
    try:
        sd = torch.load(source, weights_only=True, **options)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad pickles/zips
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"{where}: cannot load as a PyTorch checkpoint with {how} ({msg}); {advice}") from e
    return _state_dict_of(sd, where)


def _state_dict_of(sd, where) -> dict[str, torch.Tensor]:
    """The dict of tensors a loaded checkpoint holds (a {"state_dict": ...} wrapper unwrapped);
    ModelError naming `where` when it holds anything else."""
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelError(f"{where}: holds a {type(sd).__name__}, not a dict of tensors; convert it to safetensors")
    named = next((k for k in sd if not isinstance(k, str)), None)
    if named is not None:
        raise ModelError(
            f"{where}: key {named!r} is a {type(named).__name__}, not a tensor name; convert the checkpoint"
        )
    bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ModelError(f"{where}: entry {bad!r} is a {type(sd[bad]).__name__}, not a tensor; convert the checkpoint")
    return sd
