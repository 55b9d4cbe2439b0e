"""The input models of a merge: resolved folders, lazy readers, configs and layouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .architecture import Architecture, resolve_architecture
from .architecture.layer_kinds import check_layer_tensors
from .config_values import check_config_values
from .errors import ConfigError, ModelError
from .io.hub import parse_model_ref
from .io.hub_headers import RemoteCheckpointReader
from .io.hub_prefetch import HubPrefetch
from .io.hub_remote import RemoteRepo, locate_model
from .io.lora import split_lora_ref
from .io.lora_reader import with_lora
from .io.model_files import check_side_files, read_model_object
from .io.quantized import Fp8Reader, block_size, check_quantization
from .io.reader import CheckpointReader

# Nested configs of multimodal models (transformers' sub_configs), read as mappings.
SUB_CONFIGS = ("text_config", "vision_config", "audio_config")


@dataclass
class InputModel:
    """One model named in the config, opened for header-only planning and lazy reads."""

    ref: str
    folder: Path
    reader: CheckpointReader  # an io.quantized.Fp8Reader for block-scaled FP8 checkpoints
    config: dict
    arch: Architecture

    def close(self) -> None:
        """Release the model's open files."""
        self.reader.close()


def read_model_config(folder: Path) -> dict:
    """config.json of a model folder as a dict ({} when absent); never runs model code. It must
    stay inside the folder (io/model_files.py), its sub-configs must be objects and its values
    of the types transformers reads (config_values.py). The folder's other side files
    (tokenizer, chat template, generation config) are checked to stay inside it now too, before
    any tensor is read, rather than when OUT is written."""
    check_side_files(folder)
    data = read_model_object(folder, "config.json")
    if data is None:
        return {}
    path = folder / "config.json"
    for key in SUB_CONFIGS:  # read as mappings everywhere (layer counts, vocab size, tying)
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            kind = {str: "a string", list: "a list", bool: "true/false"}.get(type(data[key]), "a number")
            raise ModelError(
                f"{path}: {key} is {kind}, not an object of settings; fix config.json or re-download the model"
            )
    check_config_values(data, str(path), SUB_CONFIGS)
    return data


def open_model(
    ref: str, cache_dir: str | None, prefetch: HubPrefetch | None = None, lora_dtype: str | None = None
) -> InputModel:
    """Resolve `ref` (local folder or hub repo id, `model+lora` with a LoRA adapter applied:
    io/lora.py) and read its headers and config; a hub repo's weights are not downloaded
    (io/hub_remote.py), only its headers read. `prefetch`: the Hub metadata read in the
    background since the config was parsed (io/hub_prefetch.py). `lora_dtype`:
    --lora-merge-dtype."""
    model_ref, lora_ref = split_lora_ref(ref)
    if prefetch is not None:
        found = prefetch.locate(model_ref, cache_dir)
    else:
        found = locate_model(parse_model_ref(model_ref), cache_dir)
    if isinstance(found, RemoteRepo):
        folder, reader = found.folder, RemoteCheckpointReader(found)
    else:
        folder, reader = found, CheckpointReader(found)
    config = read_model_config(folder)
    try:
        scaled = check_quantization(ref, reader, config, str(folder))
        if scaled:
            reader = Fp8Reader(reader, scaled, block_size(config))
        if lora_ref is not None:
            reader = with_lora(reader, lora_ref, cache_dir, lora_dtype, ref)
        arch = resolve_architecture(reader.names(), config, str(folder / "config.json"))
    except BaseException:
        reader.close()
        raise
    return InputModel(ref, folder, reader, config, arch)


def open_models(
    refs: list[str],
    cache_dir: str | None,
    allow_crimes: bool,
    prefetch: HubPrefetch | None = None,
    lora_dtype: str | None = None,
) -> dict[str, InputModel]:
    """Open every referenced model (in order: the first failing one raises); check they share
    an architecture unless `allow_crimes`."""
    models: dict[str, InputModel] = {}
    try:
        for ref in refs:
            models[ref] = open_model(ref, cache_dir, prefetch, lora_dtype)
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
        raise ConfigError(
            f"models have different architectures: {ra} is {'/'.join(a)} but {rb} is "
            f"{'/'.join(b)}; pass --allow-crimes to merge them anyway"
        )


def check_model_folders(models: dict[str, InputModel], refs: list[str], source: str) -> None:
    """Plan-time checks of the merged models `refs`: each has a config.json, none that declares
    an untied head (tie_word_embeddings: false) lacks the head tensor, and the layers of each
    stack that its config builds alike hold alike tensors (architecture/layer_kinds.py)."""
    for ref in refs:
        model = models[ref]
        if not (model.folder / "config.json").is_file():
            # The config gives the layer count and architecture, and the donor's becomes the
            # output's config.json: without it the output would not load (mergekit needs it too).
            raise ConfigError(
                f"{source}: model {ref}: no config.json in {model.folder}; every merged model "
                "needs its Hugging Face config.json (the donor's becomes the output's): copy it "
                "into the folder"
            )
        _check_untied_head(model, ref, source)
        check_layer_tensors(ref, model, str(model.folder / "config.json"))


def check_donor_layer_count(model: InputModel) -> None:
    """The donor's config.json (the output's) gives its text stack's layer count somehow: a
    config with no count at all (ModelError) makes transformers build its class's default
    count (Llama's 32) from the output's copy, the layers the weights lack random. Counts under
    keys mergefast does not read (Marian's `decoder_layers`) or derived from per-layer lists
    (Nemotron-H's `layers_block_type`) pass."""
    text = model.arch.text_module
    if text is None or text.stack is None or text.count_keys or _has_layer_count(model.config, text.num_layers):
        return
    raise ModelError(
        f"{model.folder / 'config.json'}: no layer count for the {text.num_layers} layers of {text.layer_prefix}N "
        "(num_hidden_layers, or the key its model type reads), so transformers would build its default count "
        "from the output's copy of it; add the count to config.json, or make another model the base_model"
    )


def _has_layer_count(config: dict, layers: int) -> bool:
    """Whether `config` (or its text_config) holds anything that may give a layer count: an
    integer under a key ending in "layers" / "layer" or naming a depth, or a list or string
    of one entry per layer."""
    for holder in (config, config.get("text_config")):
        for key, value in holder.items() if isinstance(holder, dict) else ():
            if isinstance(value, int) and not isinstance(value, bool) and key.endswith(("layers", "layer", "depth")):
                return True
            if isinstance(value, (list, str)) and len(value) == layers:
                return True
    return False


def declared_tie(config: dict) -> bool | None:
    """tie_word_embeddings as config.json states it (top level, else text_config), or None
    when it is not stated (the architecture's default then applies)."""
    for holder in (config, config.get("text_config")):
        if isinstance(holder, dict) and isinstance(holder.get("tie_word_embeddings"), bool):
            return holder["tie_word_embeddings"]
    return None


def _check_untied_head(model: InputModel, ref: str, source: str) -> None:
    """A model stating tie_word_embeddings: false must hold its head: planning would otherwise
    treat it as tied and merge its embedding matrix into the output's head."""
    if declared_tie(model.config) is not False:
        return
    reader = model.reader
    for head, embedding in model.arch.tied_heads.items():
        if head in reader or embedding not in reader:
            continue  # the head is there, or the model does not use these names at all
        weights = reader.index_file or model.folder / (
            "model.safetensors" if reader.format == "safetensors" else "pytorch_model.bin"
        )
        raise ConfigError(
            f"{source}: model {ref}: tensor {head} is missing from {weights} but "
            f"{model.folder / 'config.json'} sets tie_word_embeddings: false; the checkpoint "
            "is incomplete: re-download or re-save it (or set tie_word_embeddings: true if "
            "its head really is the embedding)"
        )


def close_models(models: dict[str, InputModel]) -> None:
    """Close every model's reader."""
    for model in models.values():
        model.close()
