"""The non-tensor files of an output folder: config.json, tokenizer, model card, config copy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..architecture import num_layers_key
from ..errors import ConfigError

log = logging.getLogger(__name__)

# Tokenizer and generation files copied from the donor, as mergekit 0.1.5 copies them.
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)


def output_model_config(donor_config: dict, dtype_name: str | None, num_layers: int | None) -> dict:
    """The donor's config.json with the output dtype and (for slices) the layer count set."""
    config = json.loads(json.dumps(donor_config))
    if dtype_name:
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
        for key in keys:
            config[key] = dtype_name
    if num_layers is not None:
        found = num_layers_key(config)
        if found is None:
            raise ConfigError("cannot set the layer count of the output: the donor config.json has no "
                              "num_hidden_layers (or n_layer/num_layers) key")
        holder, key = found
        holder[key] = num_layers
    return config


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, the way transformers writes config.json."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_tokenizer(donor: Path, out: Path) -> list[str]:
    """Copy the donor's tokenizer files into `out`; return the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        src = donor / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")):
        log.warning("no tokenizer files found in %s; the output has no tokenizer", donor)
    return copied
