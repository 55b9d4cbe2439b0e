"""The input models of a merge: resolved folders, lazy readers, configs and layouts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .architecture import Architecture, infer_architecture
from .config import MergeConfig
from .errors import ConfigError, ModelError
from .io.hub import parse_model_ref, resolve_model
from .io.reader import CheckpointReader


@dataclass
class InputModel:
    """One model named in the config, opened for header-only planning and lazy reads."""

    ref: str
    folder: Path
    reader: CheckpointReader
    config: dict
    arch: Architecture

    def close(self) -> None:
        """Release the model's open files."""
        self.reader.close()


def merged_models(config: MergeConfig) -> list[str]:
    """The models whose tensors are merged (not a tokenizer-only source), in config order."""
    refs: list[str] = []
    for entry in config.models or []:
        refs.append(entry.model)
    for sl in config.slices or []:
        refs.extend(src.model for src in sl.sources)
        if sl.base_model:
            refs.append(sl.base_model)
    if config.base_model:
        refs.append(config.base_model)
    return list(dict.fromkeys(refs))


def referenced_models(config: MergeConfig) -> list[str]:
    """Every model reference in config order: the merged models, then a tokenizer source."""
    refs = merged_models(config)
    if config.tokenizer_source and config.tokenizer_source not in ("base", "union"):
        refs.append(config.tokenizer_source)
    return list(dict.fromkeys(refs))


def read_model_config(folder: Path) -> dict:
    """config.json of a model folder as a dict ({} when absent); never runs model code."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read config.json: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: config.json is not a JSON object")
    return data


def open_model(ref: str, cache_dir: str | None) -> InputModel:
    """Resolve `ref` (local folder or hub repo id) and read its headers and config."""
    folder = resolve_model(parse_model_ref(ref), cache_dir=cache_dir)
    reader = CheckpointReader(folder)
    config = read_model_config(folder)
    return InputModel(ref, folder, reader, config, infer_architecture(reader.names(), config))


def open_models(refs: list[str], cache_dir: str | None, allow_crimes: bool) -> dict[str, InputModel]:
    """Open every referenced model; check they share an architecture unless `allow_crimes`."""
    models: dict[str, InputModel] = {}
    try:
        for ref in refs:
            models[ref] = open_model(ref, cache_dir)
    except BaseException:
        close_models(models)
        raise
    if not allow_crimes:
        _check_same_architecture(models)
    return models


def _check_same_architecture(models: dict[str, InputModel]) -> None:
    seen: dict[tuple, str] = {}
    for ref, model in models.items():
        arch = tuple(model.config.get("architectures") or ())
        if arch:
            seen.setdefault(arch, ref)
    if len(seen) > 1:
        (a, ra), (b, rb) = list(seen.items())[:2]
        close_models(models)
        raise ConfigError(f"models have different architectures: {ra} is {'/'.join(a)} but {rb} is "
                          f"{'/'.join(b)}; pass --allow-crimes to merge them anyway")


def close_models(models: dict[str, InputModel]) -> None:
    """Close every model's reader."""
    for model in models.values():
        model.close()
