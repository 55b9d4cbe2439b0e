"""The non-tensor files of an output folder: config.json, tokenizer, model card, config copy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..architecture import TIED_HEADS, num_layers_key
from ..errors import ConfigError

log = logging.getLogger(__name__)

# Tokenizer and generation files copied from the donor, as mergekit 0.1.5 copies them.
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)


def output_model_config(donor_config: dict, dtype_name: str | None, num_layers: int | None,
                        vocab_size: int | None = None, tensor_names=None) -> dict:
    """The donor's config.json with the output dtype and (for slices) the layer count set.

    `vocab_size`: the output vocabulary (padded), when a tokenizer was built or rows truncated.
    `tensor_names`: the output's tensors; an untied head among them sets tie_word_embeddings
    false (inputs mixing tied and untied models: the head is merged with tied models' embeddings)."""
    config = json.loads(json.dumps(donor_config))
    if vocab_size is not None:
        text = config.get("text_config")
        holder = text if isinstance(text, dict) and "vocab_size" in text and "vocab_size" not in config else config
        holder["vocab_size"] = vocab_size
    if tensor_names is not None and any(n in TIED_HEADS for n in tensor_names):
        if config.get("tie_word_embeddings") is not False:
            config["tie_word_embeddings"] = False
        text = config.get("text_config")
        if isinstance(text, dict) and text.get("tie_word_embeddings"):
            text["tie_word_embeddings"] = False
    if dtype_name:
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
        for key in keys:
            config[key] = dtype_name
    if num_layers is not None:
        holder, key = layer_count_key(config, "the donor's config.json")
        holder[key] = num_layers
    return config


def layer_count_key(config: dict, where: str) -> tuple[dict, str]:
    """(the dict holding it, the key) of the layer count in donor config `config`; ConfigError
    naming `where` (the donor's config.json) when it has none.

    Planning calls this for `slices:` configs, so the error comes before any tensor is written;
    `output_model_config` calls it again as a backstop."""
    found = num_layers_key(config)
    if found is None:
        raise ConfigError(f"{where} has no num_hidden_layers (or n_layer/num_layers/n_layers) key, so the "
                          "sliced layer count cannot be written into the output config.json; add the key "
                          "(the donor's layer count) or make a model with a complete config.json the base_model")
    return found


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


def write_chat_template(folder: Path, template: str) -> None:
    """Make `template` the chat template of the tokenizer files in `folder` (no transformers)."""
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    (folder / "chat_template.json").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError:
            return
        if isinstance(data, dict) and "chat_template" in data:
            del data["chat_template"]
            write_json(config_path, data)


def write_tokenizer(plan, folder: Path, options) -> None:
    """The output's tokenizer: the built one (tokenizer config), else the donor's or the
    tokenizer_source model's files copied; then the chat template, if any."""
    from ..tokenizer.templates import resolve_chat_template

    config, vocab = plan.config, plan.vocab
    built = getattr(vocab, "built", None)
    folders = [m.folder for m in plan.models.values()]
    template = resolve_chat_template(config.chat_template, folders)
    if built is not None:
        built.save(folder, template)
        return
    if not options.copy_tokenizer:
        if config.chat_template:
            log.warning("chat_template is ignored: no tokenizer is written (--no-copy-tokenizer)")
        return
    source = config.tokenizer_source
    ref = plan.donor if source in (None, "base", "union") else source
    copy_tokenizer(plan.models[ref].folder, folder)
    if template is not None:
        write_chat_template(folder, template)
