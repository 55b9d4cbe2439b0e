"""Slice stacks that config.json rules cannot make right: refused before any tensor is read.

- Models that keep tensors for each layer outside the layer stack (Gemma 3n's per-layer
  inputs, Zamba 2's hybrid-layer adapters) or share tensors across it (Zamba): a stack that
  moves, drops or adds layers would pair those tensors with other layers.
- Families whose transformers config derives a per-layer list by a fixed pattern of positions
  when config.json lacks it: without the list a stack would give layers other kinds.
- Families whose config forces the last layer's kind (Gemma 4: full attention).
"""

from __future__ import annotations

from ..errors import ConfigError
from .config_paths import join_path

# Config keys whose models keep tensors for each layer outside the layer stack, so that a slice
# stack that moves, drops or adds layers would leave those tensors paired with the donor's layers
# (a model that does not load, or pairs each layer with another layer's tensors). key ->
# (families whose transformers default sets it when config.json lacks it, that default, what
# the model keeps outside the layers).
LAYER_BLOCK_KEYS = {
    # Gemma 3n / Gemma 4: embed_tokens_per_layer is vocab x (layers * width)
    "hidden_size_per_layer_input": (
        ("gemma3n", "gemma4"),
        256,
        "a block of per-layer inputs for each layer (embed_tokens_per_layer)",
    ),
    # Zamba 2: shared transformer blocks, with one adapter per listed (hybrid) layer, numbered
    # in the order of the list
    "hybrid_layer_ids": ((), None, "shared attention blocks and an adapter for each hybrid layer"),
}
# Families whose layers share tensors across the stack, whatever their config says: model_type ->
# what they share (Zamba: one attention block, tied into every hybrid layer by index).
LAYER_BLOCK_FAMILIES = {
    "zamba": "one shared attention block tied into its hybrid layers",
    "zaya": "layers whose tensors differ by position (the first layer's router has no scale)",
}
# Families whose transformers config derives these per-layer lists from the layer's position by
# a fixed pattern (no config key) when config.json lacks them: a slice stack needs them listed,
# so that each output layer gets its source layer's entry (transformers 5 writes them).
# model_type -> lists (an alternative key after "|" that mergefast rules on by position).
LISTS_TO_SLICE = {
    **{
        t: ("layer_types",)
        for t in ("vaultgemma", "cwm", "granite_swa", "granitemoe_swa", "mimo_v2_flash", "olmo_hybrid", "lfm3")
    },
    **{t: ("layer_types",) for t in ("beam", "lara_mini", "cohere2_moe", "bailing_hybrid", "inkling_text")},
    "flint": ("layer_types", "mlp_only_layers"),
    "ergo": ("layer_types", "mlp_layer_types"),
    "hy_v4": ("indexer_types",),
    **{t: ("mlp_layer_types|first_k_dense_replace",) for t in ("glm4_moe_lite", "hy_v3", "laguna")},
}


def check_layer_blocks(holder: dict, parent: str, layers: list, module, where: str) -> None:
    """Refuse (ConfigError) a slice stack that changes `module`'s layers (anything but its
    layers 0..n-1 in order) where the output config's `holder` is of a LAYER_BLOCK_FAMILIES
    family, lacks a LISTS_TO_SLICE list of its family, or sets a LAYER_BLOCK_KEYS key."""
    if [source.layer for source in layers] == list(range(module.num_layers)):
        return
    family = str(holder.get("model_type", ""))
    if family in LAYER_BLOCK_FAMILIES:
        raise ConfigError(
            f"{where}: a {family} model has {LAYER_BLOCK_FAMILIES[family]}, which a slice stack of "
            f"the {module.name} module cannot move; merge the whole model (layer_range over all its "
            "layers, or `models:`)"
        )
    for needed in LISTS_TO_SLICE.get(family, ()):
        key, *alternatives = needed.split("|")
        if all(holder.get(name) is None for name in (key, *alternatives)):
            raise ConfigError(
                f"{where}: this {family} config.json has no {parent + '.' if parent else ''}{key}: "
                "transformers derives each layer's entry from the layer's position, which this slice "
                f"stack changes; add the {key} list (transformers 5 writes it into config.json), or "
                "merge the whole model"
            )
    for key, (families, default, kept) in LAYER_BLOCK_KEYS.items():
        value = holder.get(key, default if families and family.startswith(families) else None)
        if value:
            raise ConfigError(
                f"{where}: {parent + '.' if parent else ''}{key} is {value}: this model keeps {kept} "
                f"of the {module.name} module's {module.num_layers} layers outside the layers, "
                "which a slice stack cannot move; merge the whole model (layer_range over all its "
                "layers, or `models:`)"
            )


# Families whose transformers config forces the last layer's kind whatever config.json lists:
# model_type -> (the per-layer list, the kind). Gemma 4 makes its last layer full attention.
LAST_LAYER_KINDS = {"gemma4_text": ("layer_types", "full_attention")}


def check_last_layer(holder: dict, parent: str, layers: list, where: str) -> None:
    """Refuse (ConfigError) a slice stack whose last output layer has another kind than the
    one the output config's family forces on its last layer (LAST_LAYER_KINDS)."""
    forced = LAST_LAYER_KINDS.get(holder.get("model_type"))
    kinds = holder.get(forced[0]) if forced else None
    if not isinstance(kinds, list) or not kinds or kinds[-1] == forced[1]:
        return
    key = join_path(parent, forced[0])
    raise ConfigError(
        f"{where}: this slice stack ends with source layer {layers[-1].layer} ({kinds[-1]} in {key}), "
        f"but a {holder['model_type']} model's last layer is always {forced[1]} (transformers forces "
        "it): end the stack with such a layer"
    )
