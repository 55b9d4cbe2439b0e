"""The output config.json of a sliced module: its count keys, per-layer lists and layer-index
lists rebuilt from the source layer of each output layer.

`layers` gives, per output layer, its LayerSource (the source model's config, its Module,
its layer index, where that config is).
A per-layer list is any list in a dict holding one of the module's count keys whose length is
the module's old layer count (`layer_types`, `no_rope_layers`, ...); each output layer takes
its source layer's entry from its source model's config.
"""

from __future__ import annotations

import json

from ..errors import ConfigError
from .config_paths import get_path, holder_of, join_path
from .families import DERIVED_LISTS, INDEX_LISTS, PAIRED_INDEX_LISTS
from .layer_blocks import check_last_layer, check_layer_blocks
from .layer_maps import (
    LAYER_POINTER_LISTS,
    ONE_BASED_INDEX_LISTS,
    PER_LAYER_DICTS,
    PER_LAYER_STRINGS,
    rebuilt_pattern,
    rebuilt_per_layer_dict,
    repointed,
    source_entry,
)
from .layout import LayerSource, Module
from .positional import check_layer_kinds

# Lists that are never per layer, whatever their length (a model with as many layers as its
# image has sides, or its eos_token_id has ids, keeps them as they are).
NOT_PER_LAYER = frozenset(
    {
        "architectures",
        "eos_token_id",
        "image_size",
        "patch_size",
        "mrope_section",
        "supported_aspect_ratios",
        "image_grid_pinpoints",
        "out_indices",
        "out_features",
        "stage_names",
        "langs",  # FSMT: source and target language
    }
)


def rewrite_module_layers(config: dict, module: Module, layers: list[LayerSource], where: str) -> None:
    """Update `config` (the output's, a copy of the donor's) for `module`'s new `layers`."""
    if not module.count_keys:
        raise ConfigError(
            f"{where}: no key of it is known to hold the {module.name} module's layer count "
            f"({module.num_layers}; mergefast knows the count keys of the model types in "
            "docs/architectures.md and, for other types, the text decoder's num_hidden_layers or "
            "the like), so the sliced count cannot be written into the output config.json; merge "
            "that module whole (`models:`), or make a model whose config.json has the key the base_model"
        )
    holders = []
    for path in module.count_keys:
        holder, key = holder_of(config, path)
        holder[key] = len(layers)
        parent = path.rpartition(".")[0]
        if parent not in [h for h, _ in holders]:
            holders.append((parent, holder))
    index_keys = index_paths(module, [p for p, _ in holders])
    for parent, holder in holders:
        for key in list(holder):
            path = join_path(parent, key)
            setting = layer_setting(key, holder[key], module.num_layers, path in index_keys)
            if setting == "indices":
                holder[key] = _reindexed(path, holder[key], layers, module.name, where)
            elif setting == "dict":
                holder[key] = rebuilt_per_layer_dict(path, layers)
            elif setting == "pointers":
                holder[key] = repointed(path, layers, module.name, where)
            elif setting == "string":
                holder[key] = rebuilt_pattern(path, layers)
            elif setting == "list":
                holder[key] = [source_entry(path, source) for source in layers]
        check_layer_kinds(holder, parent, layers, module.name, where)
        check_layer_blocks(holder, parent, layers, module, where)
        check_last_layer(holder, parent, layers, where)
    for path in ONE_BASED_INDEX_LISTS.get(config.get("model_type"), ()):
        found = holder_of(config, path)
        if found is not None and isinstance(found[0].get(found[1]), list):
            found[0][found[1]] = _reindexed(path, found[0][found[1]], layers, module.name, where, first=1)


def index_paths(module: Module, parents: list[str]) -> set[str]:
    """The config paths of `module`'s lists of layer indices: its own `index_keys` and the
    INDEX_LISTS keys beside its count keys (under `parents`)."""
    return set(module.index_keys) | {join_path(p, k) for p in parents for k in INDEX_LISTS}


def layer_setting(key: str, value, count: int, indexed: bool) -> str | None:
    """How config key `key`, beside a stack's count of `count` layers, sets each layer:
    "indices" (a list of layer indices; `indexed`: the key is one of index_paths), "dict"
    (overrides keyed by layer index), "pointers" (per layer, the layer it points at),
    "string" (a character per layer), "list" (an entry per layer), or None (no per-layer
    setting)."""
    if indexed and isinstance(value, list):
        return "indices"
    if key in PER_LAYER_DICTS and value is not None:
        return "dict"
    if key in LAYER_POINTER_LISTS and _per_layer(value, count):
        return "pointers"
    if key in PER_LAYER_STRINGS and isinstance(value, str) and len(value) == count:
        return "string"
    if _per_layer(value, count) and key not in NOT_PER_LAYER:
        return "list"
    return None


def with_derived_lists(config: dict) -> dict:
    """`config` with the per-layer list its transformers class would derive from position
    (`layer_types`, Llama 4's `no_rope_layers`) written out (a copy), for the families of
    DERIVED_LISTS whose config lacks it (or has it empty); else `config` itself."""
    rule = DERIVED_LISTS.get(config.get("model_type"))
    if rule is None:
        return config
    count_path, key, pattern_path, default, on_pattern, otherwise, *offset = rule
    offset = offset[0] if offset else 1
    count, found = get_path(config, count_path), holder_of(config, count_path)
    if not isinstance(count, int) or found is None or found[0].get(key):
        return config
    pattern = get_path(config, pattern_path) if pattern_path else None
    pattern = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0 else default
    config = json.loads(json.dumps(config))
    holder, _ = holder_of(config, count_path)
    holder[key] = [on_pattern if (i + offset) % pattern == 0 else otherwise for i in range(count)]
    return config


def _per_layer(value, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and count > 0


def _reindexed(
    path: str, listed: list, layers: list[LayerSource], module: str, where: str, first: int = 0
) -> list[int]:
    """The output indices of the layers whose source layer is listed at `path` in its config
    (`listed`: the donor's list), layers numbered from `first` (ONE_BASED_INDEX_LISTS: 1). A
    PAIRED_INDEX_LISTS list must keep its source layers."""
    out = []
    for i, source in enumerate(layers):
        in_source = get_path(source.config, path)
        if isinstance(in_source, list) and source.layer + first in in_source:
            out.append(i + first)
    sources = [layers[i - first].layer for i in out]
    if path.rpartition(".")[2] in PAIRED_INDEX_LISTS and sources != listed:
        raise ConfigError(
            f"{where}: {path} lists the {module} layers {listed} that tensors outside the layers "
            f"(deepstack mergers) serve, one each and in order; this slice stack would give them "
            f"source layers {sources}; keep those layers once each and in order, or slice another module"
        )
    return out
