"""LoRA adapters applied as their base model's tensors are read: mergekit's `model+lora`.

mergekit loads the base with transformers, applies the adapter with peft's `merge_and_unload`
and saves the result into `--lora-merge-cache` before merging. mergefast reads the adapter (a
PEFT LoRA folder or Hub repo: adapter_config.json and adapter_model.safetensors, or .bin read
with `weights_only=True`) and adds each low-rank update to its weight when the merge reads it:
W + scale * (B @ A) in float32 (transposed for embeddings and `fan_in_fan_out`; scale
lora_alpha / r, or / sqrt(r) with `use_rslora`, `alpha_pattern` as peft matches it), rounded
once to the weight's dtype, as peft merges a float32 adapter into a linear layer. Tensors the
adapter saves whole (`modules_to_save`, trained biases, an embedding's `base_layer`) replace the
base's. `--lora-merge-dtype` reads every tensor of the adapted model in that dtype, as
mergekit's load does. Every adapter tensor must name a tensor of the base with a matching
shape; DoRA and other PEFT methods are refused, never half applied.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelError
from .model_files import read_model_object

PREFIX = "base_model.model."
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PAIRS = {".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False)}
_PAIRS |= {".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True)}
# Settings under which the adapter's tensor names or updates do not mean W + scale * B @ A on
# the base's tensor of that name: layer_replication renumbers the layers it copies.
_REFUSED_SETTINGS = {
    "use_dora": "DoRA",
    "layer_replication": "layer-replicating",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
}
_REFUSED = {
    ".lora_magnitude_vector": "DoRA (use_dora) adapters are not supported",
    ".lora_B.bias": "adapters with lora_bias are not supported",
}


def split_lora_ref(text: str) -> tuple[str, str | None]:
    """mergekit's `model[@rev]+lora[@rev]` as (model, lora); (text, None) without a '+'."""
    model, plus, lora = str(text).strip().partition("+")
    if not plus:
        return model, None
    if not model.strip() or not lora.strip() or "+" in lora:
        raise ConfigError(f"model reference {text!r}: write a LoRA reference as model+lora (one '+', both named)")
    return model.strip(), lora.strip()


@dataclass(frozen=True)
class LowRank:
    """One weight's update: adapter tensors `a` and `b`, its scale, whether B @ A is transposed."""

    a: str
    b: str
    scale: float
    transpose: bool


def read_adapter(folder: Path, where: str):
    """(adapter_config.json as a dict, the adapter's tensors by name) of a PEFT LoRA folder."""
    config = read_model_object(folder, "adapter_config.json")
    if config is None:
        raise ModelError(f"LoRA {where}: {folder} has no adapter_config.json; point it at a PEFT LoRA adapter")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ModelError(f"LoRA {where}: peft_type is {kind!r}; only LoRA adapters (peft_type LORA) are supported")
    for key, what in _REFUSED_SETTINGS.items():
        if config.get(key):
            raise ModelError(f"LoRA {where}: {what} adapters ({key} in adapter_config.json) are not supported")
    _check_settings(config, f"LoRA {where}: {folder / 'adapter_config.json'}")
    for name in ADAPTER_WEIGHTS:
        path = folder / name
        if path.is_file():
            return config, _load_tensors(path, where)
    raise ModelError(f"LoRA {where}: {folder} has neither {' nor '.join(ADAPTER_WEIGHTS)}")


def _check_settings(config: dict, where: str) -> None:
    """The switches true/false (a string "false" would read as true), lora_alpha and every
    alpha_pattern entry a finite number, the pattern a module name (letters, digits, '_', '-',
    '.'; a regular expression with other operators could take exponential time to match)."""
    for key in ("fan_in_fan_out", "use_rslora"):
        if config.get(key) not in (None, True, False):
            raise ModelError(f"{where}: {key} is {config[key]!r}; give true or false")
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise ModelError(f"{where}: alpha_pattern is not an object of module names and alphas")
    for key, alpha in [("lora_alpha", config.get("lora_alpha", 8)), *patterns.items()]:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ModelError(f"{where}: {key}'s alpha {alpha!r} is not a finite number")
    for key in patterns:
        if not re.fullmatch(r"[\w.\-]+", key):
            raise ModelError(f"{where}: alpha_pattern key {key!r}: mergefast takes module names, not regexes")


def _load_tensors(path: Path, where: str) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or hostile file: one line, the path
        raise ModelError(f"LoRA {where}: cannot read {path} ({exc}); re-download the adapter") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ModelError(f"LoRA {where}: {path} holds no mapping of tensor names to tensors; re-download the adapter")
    return tensors


def _alpha(config: dict, module: str) -> float:
    """The module's lora_alpha: peft's `alpha_pattern` (a key matching the module name's end)."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return alpha
    return config.get("lora_alpha", 8)


def adapter_updates(config: dict, tensors: dict, base, where: str) -> tuple[dict[str, LowRank], dict[str, str]]:
    """The low-rank updates by weight name and the whole replacements (weight name -> adapter
    tensor name) of an adapter over the model `base` (a reader); ModelError for a tensor that
    names nothing of `base`, a half pair or a shape that does not fit."""
    halves: dict[str, dict[str, str]] = {}
    kinds: dict[str, bool] = {}
    whole: dict[str, str] = {}
    for key in tensors:
        if not key.startswith(PREFIX):
            raise ModelError(f"LoRA {where}: tensor {key} does not start with {PREFIX!r}; not a PEFT LoRA adapter")
        rest = key[len(PREFIX) :]
        refused = next((why for end, why in _REFUSED.items() if rest.endswith(end)), None)
        if refused:
            raise ModelError(f"LoRA {where}: {refused} (tensor {key})")
        end = next((e for e in _PAIRS if rest.endswith(e)), None)
        if end is None:
            whole[rest.replace(".base_layer.", ".")] = key
            continue
        half, embedding = _PAIRS[end]
        module = rest[: -len(end)]
        halves.setdefault(module, {})[half] = key
        kinds[module] = embedding
    updates = {}
    for module, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise ModelError(f"LoRA {where}: {module} has lora_A or lora_B but not both; the adapter is incomplete")
        transpose = kinds[module] or bool(config.get("fan_in_fan_out"))
        update = LowRank(pair["A"], pair["B"], _scale(config, module, tensors[pair["A"]]), transpose)
        target = _stored_name(base, module + ".weight", where, module)
        _check_shape(base, target, _update_shape(tensors, update, where), where, module)
        updates[target] = update
    replaced = {}
    for target, key in whole.items():
        stored = _stored_name(base, target, where, key)
        _check_shape(base, stored, tuple(tensors[key].shape), where, key)
        replaced[stored] = key
    return updates, replaced


def _stored_name(base, target: str, where: str, key: str) -> str:
    """The name `target` (a module's, as peft saw the model) has in the checkpoint: itself, or
    with the model's prefix that transformers adds or drops on load (gpt2's checkpoints store
    `h.0...` for `transformer.h.0...`), when exactly one tensor of the base has it."""
    if target in base:
        return target
    stripped = target.partition(".")[2]
    found = [stripped] if stripped in base else []
    found += [n for n in base.names() if n.endswith("." + target) and "." not in n[: -len(target) - 1]]
    if len(found) != 1:
        raise ModelError(f"LoRA {where}: {key} updates {target}, which the model does not have; wrong base model?")
    return found[0]


def _scale(config: dict, module: str, a) -> float:
    rank = a.shape[0]
    alpha = _alpha(config, module)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _update_shape(tensors: dict, update: LowRank, where: str) -> tuple:
    """The shape of B @ A (transposed where the update says); ModelError unless A and B are
    matrices of one rank (a conv LoRA's 4-D halves are refused)."""
    a, b = tensors[update.a], tensors[update.b]
    if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
        shapes = f"{update.a} {tuple(a.shape)} and {update.b} {tuple(b.shape)}"
        raise ModelError(f"LoRA {where}: {shapes} are no pair of rank-r matrices (conv LoRAs are not supported)")
    return (a.shape[1], b.shape[0]) if update.transpose else (b.shape[0], a.shape[1])


def _check_shape(base, target: str, shape: tuple, where: str, key: str) -> None:
    have = tuple(base.info(target).shape)
    if have != tuple(shape):
        raise ModelError(f"LoRA {where}: {key} gives {target} shape {tuple(shape)}, the model's is {have}")
