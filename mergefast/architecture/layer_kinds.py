"""Layers that transformers builds alike must hold alike tensors: a plan-time check of each
merged model's layer stacks.

A layer whose checkpoint lacks a tensor (a dropped index entry, a renamed or removed tensor) or
holds one of another shape would be merged as it is by a `passthrough` of that model alone, or a
`models:` merge of it alone, which have no other input to compare it with: an output that loads
with a random weight, or does not load. transformers builds every layer of a stack from the config alone, so
layers that the config does not tell apart must have the same tensors. The config tells layers
apart by its per-layer lists (`layer_types`, DeciLM's `block_configs`, ...), per-layer strings
and dicts, lists of layer indices (`mlp_only_layers`) and positional rules
(`first_k_dense_replace`; positional.py); a layer's *kind* is its entry in each. Within a kind:
no layer may lack a tensor that every other layer has, nor hold one in another shape. Families
whose kinds do not follow from their config (layer_blocks.py) are not checked.
"""

from __future__ import annotations

import json
from collections import Counter

from ..errors import ConfigError, ModelError
from .config_paths import holder_of, join_path
from .layer_blocks import LAYER_BLOCK_FAMILIES, LAYER_BLOCK_KEYS, LISTS_TO_SLICE
from .layer_maps import ONE_BASED_INDEX_LISTS
from .layout import Module
from .positional import RULES, rule_values
from .rewrite import index_paths, layer_setting, with_derived_lists

# Tensors that only some layers of a kind hold: T5's relative position bias lives in the first
# block's attention alone (T5, LongT5, Switch Transformers, Pix2Struct, UDOP).
ONE_LAYER_SUFFIXES = ("relative_attention_bias",)


def layer_kinds(config: dict, module: Module, where: str) -> list[tuple] | None:
    """Per layer of `module`'s stack, its kind (equal for layers the config builds alike), or
    None where the config cannot tell (no known count key, families of layer_blocks.py)."""
    if module.stack is None or not module.count_keys:
        return None
    family = config.get("model_type")
    if family in LISTS_TO_SLICE or family in LAYER_BLOCK_FAMILIES or family in ONE_BASED_INDEX_LISTS:
        return None
    found = holder_of(with_derived_lists(config), module.count_keys[0])
    if found is None or any(found[0].get(key) is not None for key in LAYER_BLOCK_KEYS):
        return None
    # a count key is one whose value is the stack's layer count (config_paths.present_counts)
    holder, count = found[0], module.num_layers
    kinds: list[list] = [[] for _ in range(count)]
    parent = module.count_keys[0].rpartition(".")[0]
    index_keys = index_paths(module, [parent])
    for key, value in holder.items():
        setting = layer_setting(key, value, count, join_path(parent, key) in index_keys)
        for i, entry in enumerate(_entries(setting, value, count)):
            kinds[i].append((key, entry))
    for rule in RULES:
        if not rule.applies(holder, module.name):
            continue
        try:
            values = rule_values(rule, holder, where, f"{parent}." if parent else "")
        except ConfigError:  # a value transformers reads otherwise (ERNIE-VL's lists): kinds unknown
            return None
        if values is None:
            continue
        for i in range(count):
            kinds[i].append((rule.keys, rule.kind(values, i, count, holder)))
    return [tuple(k) for k in kinds]


def _entries(setting: str | None, value, count: int) -> list:
    """Each layer's entry in a config value that rewrite.layer_setting calls `setting` (empty
    when it sets no layer, or its entries cannot be told)."""
    if setting == "indices":
        return [i in value for i in range(count)]
    if setting == "string":
        return list(value)
    if setting == "dict":
        return [json.dumps(value.get(str(i)), sort_keys=True) for i in range(count)] if isinstance(value, dict) else []
    if setting in ("list", "pointers"):
        return [json.dumps(v, sort_keys=True) for v in value]
    return []


def check_layer_tensors(ref: str, model, where: str) -> None:
    """ModelError when a layer of a stack of `model` (an inputs.InputModel) lacks a tensor
    that every other layer of its kind has, or holds one in another shape."""
    for module in model.arch.modules:
        kinds = layer_kinds(model.config, module, where)
        if kinds is None:
            continue
        groups: dict[tuple, list[int]] = {}
        for layer, kind in enumerate(kinds):
            groups.setdefault(kind, []).append(layer)
        for layers in groups.values():
            if len(layers) > 1:
                _check_alike(ref, model, module, layers)


def _check_alike(ref: str, model, module: Module, layers: list[int]) -> None:
    """The tensors of `layers` (one kind) of `module`: the same names and shapes."""
    stack, one_layer = module.stack, tuple(f"{x}.weight" for x in ONE_LAYER_SUFFIXES)
    held = {i: set(stack.layer_suffixes[i]) for i in layers}
    for i in layers:
        others = set.intersection(*(held[j] for j in layers if j != i))
        missing = sorted(s for s in others - held[i] if not s.endswith(one_layer))
        if missing:
            raise ModelError(
                f"model {ref} ({model.folder}): layer {i} ({stack.prefix}{i}.*) lacks {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}, which its other layers of that kind hold; the checkpoint "
                "is incomplete or corrupt: re-download it"
            )
    for suffix in sorted(set.union(*held.values())):
        shapes = {i: tuple(model.reader.info(f"{stack.prefix}{i}.{suffix}").shape) for i in layers if suffix in held[i]}
        counts = Counter(shapes.values())
        if len(counts) > 1:
            common = max(counts, key=counts.get)
            odd = [i for i, shape in shapes.items() if shape != common or counts[shape] * 2 == len(shapes)][:2]
            found = " and ".join(f"{list(shapes[i])} in layer {i}" for i in odd)
            others = f" (its other layers of that kind: {list(common)})" if len(odd) == 1 else ""
            raise ModelError(
                f"model {ref} ({model.folder}): tensor {stack.prefix}N.{suffix} has shape {found}{others}, but "
                "the config builds those layers alike; the checkpoint is corrupt: re-download it"
            )
