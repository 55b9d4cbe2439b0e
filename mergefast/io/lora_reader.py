"""A model with a LoRA adapter applied, read like any model (io/lora.py says how)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from ..dtypes import ITEMSIZE
from ..errors import ModelError
from .hub import _offline, check_repo_id, hub_errors, local_folder, parse_model_ref
from .lora import ADAPTER_WEIGHTS, LowRank, adapter_updates, read_adapter
from .reader import TensorInfo


class LoraReader:
    """The reader of a base model (`reader`) with an adapter's updates added as tensors are
    read; names and shapes are the base's, dtypes too unless `dtype` (--lora-merge-dtype)."""

    def __init__(self, reader, updates: dict[str, LowRank], whole: dict[str, str], tensors: dict, dtype=None):
        self._reader, self._updates, self._whole, self._tensors = reader, updates, whole, tensors
        self._dtype = dtype

    def __getattr__(self, attr):
        return getattr(self._reader, attr)

    @property
    def lora_summary(self) -> str:
        """What the adapter changes, for the plan's text."""
        return f"LoRA: {len(self._updates)} weights updated, {len(self._whole)} replaced"

    def names(self) -> list[str]:
        """The base model's tensor names."""
        return self._reader.names()

    def __contains__(self, name: str) -> bool:
        return name in self._reader

    def info(self, name: str) -> TensorInfo:
        """The base's info, in the --lora-merge-dtype when given."""
        info = self._reader.info(name)
        if self._dtype is None or info.dtype_name == self._dtype or info.dtype_name not in ITEMSIZE:
            return info
        return replace(info, dtype_name=self._dtype, nbytes=math.prod(info.shape) * ITEMSIZE[self._dtype])

    def read(self, name: str, *, out=None):
        """The tensor with the adapter applied (into `out`'s bytes when given)."""
        import torch

        dtype = getattr(torch, self.info(name).dtype_name)
        if name not in self._whole and name not in self._updates and self._dtype is None:
            return self._reader.read(name, out=out)
        value = self._tensors[self._whole[name]] if name in self._whole else self._reader.read(name)
        if name in self._updates:  # on the saved base layer, where the adapter has one (embeddings)
            value = value.float() + self._delta(self._updates[name])
        value = value.to(dtype)
        if out is None:
            return value
        dst = out.reshape(-1).view(torch.uint8)[: value.numel() * value.element_size()].view(dtype)
        return dst.view(value.shape).copy_(value)

    def read_into(self, name: str, *args, **kwargs):
        """Not taken: the torch-free engine's raw reads (read_into, map_whole) would bypass
        the adapter, so a plan with a LoRA runs on the torch engine (host.refusal)."""
        raise TypeError(f"{name}: a LoRA model's tensors are read with read(), never as raw bytes")

    map_whole = read_into

    def _delta(self, update: LowRank):
        """scale * (B @ A) in float32 (transposed where the update says), as peft computes it."""
        delta = self._tensors[update.b].float() @ self._tensors[update.a].float()
        delta = delta.T if update.transpose else delta
        return delta.mul_(update.scale)

    def close(self) -> None:
        """Release the base model's open files."""
        self._reader.close()


def with_lora(reader, lora_ref: str, cache_dir: str | None, dtype: str | None, where: str) -> LoraReader:
    """`reader` with the adapter `lora_ref` (a folder or Hub repo) applied; `dtype`: the
    --lora-merge-dtype (a float dtype's name, checked with the options), or None."""
    folder = adapter_folder(lora_ref, cache_dir)
    config, tensors = read_adapter(folder, where)
    updates, whole = adapter_updates(config, tensors, reader, where)
    return LoraReader(reader, updates, whole, tensors, dtype.removeprefix("torch.") if dtype else None)


def adapter_folder(lora_ref: str, cache_dir: str | None) -> Path:
    """The local folder of an adapter: the folder itself, else the Hub repo's adapter files
    downloaded into (or, offline, found in) the Hugging Face cache."""
    ref = parse_model_ref(lora_ref)
    local = local_folder(ref)
    if local is not None:
        return local
    import huggingface_hub as hf

    check_repo_id(ref.path, str(ref))
    patterns = ["adapter_config.json", *ADAPTER_WEIGHTS]
    with hub_errors(ref.path, ref.revision, cache_dir):
        folder = hf.snapshot_download(
            ref.path, revision=ref.revision, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=_offline()
        )
    if not (Path(folder) / "adapter_config.json").is_file():
        raise ModelError(f"Hugging Face repo {ref} has no adapter_config.json; it is not a PEFT LoRA adapter")
    return Path(folder)
