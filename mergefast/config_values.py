"""The values of a model's config.json that mergefast reads or that the output's config.json
carries from the donor: a broken one (a size that is not a whole number, a dtype that names no
dtype, `architectures` that is not a list of names) fails when the model is opened, naming the
file and key, instead of failing inside the planner or giving an output transformers cannot load."""

from __future__ import annotations

import json

from .errors import ModelError

# Sizes and counts transformers' config classes read as integers. Null is allowed (head_dim,
# num_key_value_heads and intermediate_size may be null), and so is a list of whole numbers
# (per-layer sizes: OpenELM's, Nemotron-NAS's), but for REQUIRED_SIZES
SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "n_layer",
    "n_head",
    "n_embd",
    "n_positions",
    "num_layers",
    "num_decoder_layers",
    "encoder_layers",
    "decoder_layers",
    "d_model",
    "d_ff",
)
REQUIRED_SIZES = frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"})
# sizes that are never 0 (the others may be: an attention-free model's head counts)
POSITIVE_SIZES = frozenset({"vocab_size", "hidden_size", "n_embd", "d_model"})
# names transformers turns into a torch dtype (`getattr(torch, name)`), and "auto"
DTYPE_NAMES = frozenset(
    {"auto", "float16", "float32", "float64", "bfloat16", "half", "float", "double", "float8_e4m3fn"}
    | {"float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "int8", "uint8", "int16", "int32", "int64", "bool"}
)


def check_config_values(data: dict, path: str, sub_configs: tuple[str, ...]) -> None:
    """Raise ModelError for the first broken value of config.json `data` (read from `path`),
    at the top level or in one of its `sub_configs` (already checked to be objects)."""
    holders = [("", data)] + [(f"{key}.", data[key]) for key in sub_configs if isinstance(data.get(key), dict)]
    for prefix, holder in holders:
        problem = _problem(holder)
        if problem is not None:
            key, value, expected = problem
            raise ModelError(
                f"{path}: {prefix}{key} is {_shown(value)}, not {expected}; fix config.json or re-download the model"
            )


def _problem(holder: dict) -> tuple[str, object, str] | None:
    """(key, value, what it should be) of the first broken value of one config object."""
    for key in SIZES:
        if key in holder and not _whole(holder[key], key not in REQUIRED_SIZES, int(key in POSITIVE_SIZES)):
            return key, holder[key], "a positive whole number" if key in POSITIVE_SIZES else "a whole number"
    for key in ("torch_dtype", "dtype"):
        value = holder.get(key)
        if value is not None and (not isinstance(value, str) or value.removeprefix("torch.") not in DTYPE_NAMES):
            return key, value, "the name of a dtype (bfloat16, float16, float32, ...)"
    if holder.get("model_type") is not None and not isinstance(holder["model_type"], str):
        return "model_type", holder["model_type"], "a model type's name"
    for key in ("architectures", "layer_types"):
        value = holder.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return key, value, "a list of names"
    types, count = holder.get("layer_types"), holder.get("num_hidden_layers")
    if isinstance(types, list) and isinstance(count, int) and len(types) != count:  # transformers checks it too
        return "layer_types", types, f"a list of {count} names (num_hidden_layers is {count})"
    return None


def _whole(value: object, lenient: bool, least: int = 0) -> bool:
    """Whether `value` is a whole number of at least `least` (an int: transformers 5's config
    classes refuse 4096.0), or, when `lenient`, null or a non-empty list of such numbers."""
    if value is None or isinstance(value, list):
        return lenient and (value is None or (bool(value) and all(_whole(v, False, least) for v in value)))
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _shown(value: object) -> str:
    """`value` as the error message shows it (JSON's words, long values cut)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
