"""The known model families, as data: model_type -> its modules.

Each module lists the prefixes its layer stack may have (checkpoints written by different
transformers versions name the same stack differently; the one present is used), the name
prefixes of the loose weights it owns (the longest matching prefix wins; "" takes every name
no other module owns), the config.json paths of its layer count, and the config paths of lists
of its layer indices. Module names are mergekit's (`default`, `text_decoder`, `vision_tower`,
`multi_modal_projector`, `encoder`, `decoder`, `shared`), so `modules:` configs written for
mergekit work unchanged.

To add a family: add its model_type below with one ModuleSpec per module; a decoder whose
layers are `model.layers.N` and whose count is `num_hidden_layers` needs only its name in
DECODERS. Unknown model types fall back to inference from tensor names (resolve.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleSpec:
    """One module of a family (see the module docstring)."""

    name: str
    stacks: tuple[str, ...] = ()
    owns: tuple[str, ...] = ("",)
    counts: tuple[str, ...] = ()
    index_lists: tuple[str, ...] = ()


def decoder(stack: str = "model.layers.", count: str = "num_hidden_layers", *more: str) -> tuple[ModuleSpec, ...]:
    """A single-module decoder: one stack, every loose weight its own."""
    return (ModuleSpec("default", (stack, *more), ("",), (count,)),)


DECODERS = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "phi3small",
    "baichuan",
    "internlm2",
    "cohere",
    "cohere2",
    "stablelm",
    "stablelm_epoch",
    "starcoder2",
    "solar",
    "granite",
    "granitemoe",
    "granitemoehybrid",
    "olmo",
    "olmo2",
    "olmoe",
    "glm",
    "glm4",
    "glm4_moe",
    "lfm2",
    "apertus",
    "arcee",
    "exaone4",
    "deepseek_v2",
    "deepseek_v3",
    "minicpm",
    "smollm3",
    "ernie4_5",
    "ernie4_5_moe",
    "gpt_oss",
    "seed_oss",
    "afmoe",
    "hunyuan_v1_dense",
)

# Vision-language models: the text decoder owns every name the other modules do not.
TEXT_DECODER = ModuleSpec(
    "text_decoder",
    ("model.layers.", "model.language_model.layers.", "language_model.model.layers."),
    ("",),
    ("text_config.num_hidden_layers", "num_hidden_layers"),
)
_TOWER = (
    "vision_tower.vision_model.encoder.layers.",
    "vision_tower.encoder.layers.",
    "vision_tower.transformer.layers.",
)
VISION_TOWER = ModuleSpec(
    "vision_tower",
    (*_TOWER, *(f"model.{s}" for s in _TOWER)),
    ("vision_tower.", "model.vision_tower."),
    ("vision_config.num_hidden_layers",),
)
PROJECTOR = ModuleSpec("multi_modal_projector", (), ("multi_modal_projector.", "model.multi_modal_projector."))


def qwen_vl(index_list: str) -> tuple[ModuleSpec, ...]:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: `visual.blocks.N` (count vision_config.depth) and the
    merger (with Qwen3-VL's deepstack mergers) as the projector."""
    return (
        TEXT_DECODER,
        ModuleSpec(
            "vision_tower",
            ("visual.blocks.", "model.visual.blocks."),
            ("visual.", "model.visual."),
            ("vision_config.depth",),
            (f"vision_config.{index_list}",),
        ),
        ModuleSpec(
            "multi_modal_projector",
            (),
            (
                "visual.merger.",
                "model.visual.merger.",
                "visual.deepstack_merger_list.",
                "model.visual.deepstack_merger_list.",
            ),
        ),
    )


FAMILIES: dict[str, tuple[ModuleSpec, ...]] = {
    **{name: decoder() for name in DECODERS},
    "gpt2": decoder("transformer.h.", "n_layer", "h."),
    "gpt_bigcode": decoder("transformer.h.", "n_layer"),
    "jais": decoder("transformer.h.", "n_layer"),
    "phi-msft": decoder("transformer.h.", "n_layer"),
    "falcon": decoder("transformer.h.", "num_hidden_layers"),
    "qwen": decoder("transformer.h.", "num_hidden_layers"),
    "exaone": decoder("transformer.h.", "num_layers"),
    "gpt_neox": decoder("gpt_neox.layers.", "num_hidden_layers"),
    "mamba": decoder("backbone.layers.", "num_hidden_layers"),
    "chatglm": decoder("transformer.encoder.layers.", "num_layers"),
    "bert": decoder("bert.encoder.layer.", "num_hidden_layers", "encoder.layer."),
    "roberta": decoder("roberta.encoder.layer.", "num_hidden_layers", "encoder.layer."),
    "distilbert": decoder("distilbert.transformer.layer.", "n_layers", "transformer.layer."),
    "t5": (
        ModuleSpec("encoder", ("encoder.block.",), ("encoder.",), ("num_layers",)),
        ModuleSpec("decoder", ("decoder.block.",), ("decoder.",), ("num_decoder_layers",)),
        ModuleSpec("shared"),
    ),
    "whisper": (
        ModuleSpec("encoder", ("model.encoder.layers.",), ("model.encoder.",), ("encoder_layers", "num_hidden_layers")),
        ModuleSpec("decoder", ("model.decoder.layers.",), ("model.decoder.",), ("decoder_layers",)),
        ModuleSpec("shared"),
    ),
    "qwen2_vl": qwen_vl("fullatt_block_indexes"),
    "qwen2_5_vl": qwen_vl("fullatt_block_indexes"),
    "qwen3_vl": qwen_vl("deepstack_visual_indexes"),
    "qwen3_vl_moe": qwen_vl("deepstack_visual_indexes"),
    **{
        name: (TEXT_DECODER, VISION_TOWER, PROJECTOR)
        for name in ("gemma3", "llava", "llava_next", "llava_onevision", "mistral3", "paligemma", "aya_vision")
    },
    "llama4": (
        TEXT_DECODER,
        ModuleSpec(
            "vision_tower",
            ("vision_model.model.layers.", "model.vision_model.model.layers."),
            ("vision_model.", "model.vision_model."),
            ("vision_config.num_hidden_layers",),
        ),
        PROJECTOR,
    ),
}

# Config keys that give layers a kind by position (a rule, not a per-layer list): a slice
# stack that moves layers would change which layers they describe. Value: the setting under
# which every layer is alike, so slicing is safe.
POSITIONAL_KEYS = {
    "first_k_dense_replace": 0,
    "decoder_sparse_step": 1,
    "moe_layer_freq": 1,
    "interleave_moe_layer_step": 1,
}
# Families whose transformers config derives `layer_types` from the layer's position when
# config.json has none (files written before transformers 4.53): model_type -> (path of the
# text layer count, path of the pattern key or None, default pattern). Layer i is full
# attention when (i + 1) % pattern == 0, else sliding. A sliced output gets the list written
# out, so each layer keeps its source layer's attention kind.
DERIVED_LAYER_TYPES = {
    "gemma2": ("num_hidden_layers", None, 2),
    "gemma3_text": ("num_hidden_layers", "sliding_window_pattern", 6),
    "gemma3": ("text_config.num_hidden_layers", "text_config.sliding_window_pattern", 6),
    "cohere2": ("num_hidden_layers", "sliding_window_pattern", 4),
}
# Lists of layer indices (not per-layer lists): rewritten to the output's indices.
INDEX_LISTS = ("mlp_only_layers", "full_attn_idxs")
