"""The output config.json of a sliced module: its count keys, per-layer lists and layer-index
lists rebuilt from the source layer of each output layer.

`layers` gives, per output layer, (the source model's config, its Module, its layer index).
A per-layer list is any list in a dict holding one of the module's count keys whose length is
the module's old layer count (`layer_types`, `no_rope_layers`, ...); each output layer takes
its source layer's entry from its source model's config.
"""

from __future__ import annotations

import json

from ..errors import ConfigError
from .config_paths import get_path, holder_of
from .families import DERIVED_LAYER_TYPES, INDEX_LISTS, POSITIONAL_KEYS
from .layout import Module

NOT_PER_LAYER = frozenset({"architectures"})


def rewrite_module_layers(config: dict, module: Module, layers: list[tuple[dict, Module, int]], where: str) -> None:
    """Update `config` (the output's, a copy of the donor's) for `module`'s new `layers`."""
    if not module.count_keys:
        raise ConfigError(
            f"{where} has no layer count for {module.name} (e.g. num_hidden_layers), so the "
            "sliced layer count cannot be written into the output config.json; add the key or "
            "make a model with a complete config.json the base_model"
        )
    holders = []
    for path in module.count_keys:
        holder, key = holder_of(config, path)
        holder[key] = len(layers)
        parent = path.rpartition(".")[0]
        if parent not in [h for h, _ in holders]:
            holders.append((parent, holder))
    moved = [layer for _, _, layer in layers] != list(range(module.num_layers))
    index_keys = set(module.index_keys) | {_join(p, k) for p, _ in holders for k in INDEX_LISTS}
    for parent, holder in holders:
        for key in list(holder):
            path = _join(parent, key)
            if path in index_keys and isinstance(holder[key], list):
                holder[key] = _reindexed(path, layers)
            elif key in POSITIONAL_KEYS and moved and holder[key] not in (None, POSITIONAL_KEYS[key]):
                raise ConfigError(
                    f"{where}: {path} is {holder[key]}: it gives layers a kind by position, and "
                    f"this slice stack moves {module.name}'s layers; keep the layer order or merge "
                    "models without it"
                )
            elif _per_layer(holder[key], module.num_layers) and key not in NOT_PER_LAYER:
                holder[key] = [
                    _entry(path, layer_config, source, layer, where) for layer_config, source, layer in layers
                ]


def with_layer_types(config: dict) -> dict:
    """`config` with the `layer_types` list its transformers class would derive from position
    written out (a copy), for families that derive it and configs that lack it; else `config`."""
    rule = DERIVED_LAYER_TYPES.get(config.get("model_type"))
    if rule is None:
        return config
    count_path, pattern_path, default = rule
    count, found = get_path(config, count_path), holder_of(config, count_path)
    parent = count_path.rpartition(".")[0]
    if not isinstance(count, int) or found is None or get_path(config, _join(parent, "layer_types")) is not None:
        return config
    pattern = get_path(config, pattern_path) if pattern_path else None
    pattern = pattern if isinstance(pattern, int) and pattern > 0 else default
    config = json.loads(json.dumps(config))
    holder, _ = holder_of(config, count_path)
    holder["layer_types"] = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(count)]
    return config


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _per_layer(value, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and count > 0


def _entry(path: str, config: dict, module: Module, layer: int, where: str):
    """Entry `layer` of the per-layer list at `path` in a source model's config."""
    values = get_path(config, path)
    if not _per_layer(values, module.num_layers):
        raise ConfigError(
            f"{where}: {path} is a per-layer list of the output, but a source model's config.json "
            f"has no {module.num_layers}-entry {path} to take layer {layer}'s entry from"
        )
    return values[layer]


def _reindexed(path: str, layers: list[tuple[dict, Module, int]]) -> list[int]:
    """The output indices of the layers whose source layer is listed at `path` in its config."""
    out = []
    for i, (config, _, layer) in enumerate(layers):
        listed = get_path(config, path)
        if isinstance(listed, list) and layer in listed:
            out.append(i)
    return out
