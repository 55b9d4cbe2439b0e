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
    "vision_tower.encoder.layer.",  # InternVL
    "vision_tower.transformer.layers.",
)
VISION_TOWER = ModuleSpec(
    "vision_tower",
    (*_TOWER, *(f"model.{s}" for s in _TOWER)),
    ("vision_tower.", "model.vision_tower."),
    ("vision_config.num_hidden_layers",),
)
PROJECTOR = ModuleSpec("multi_modal_projector", (), ("multi_modal_projector.", "model.multi_modal_projector."))


def encoder_decoder(encoder_counts: tuple[str, ...], decoder_counts: tuple[str, ...]) -> tuple[ModuleSpec, ...]:
    """Whisper, BART and their kin: `model.encoder.layers.N`, `model.decoder.layers.N`, and the
    shared embedding and head (`shared`)."""
    return (
        ModuleSpec("encoder", ("model.encoder.layers.",), ("model.encoder.",), encoder_counts),
        ModuleSpec("decoder", ("model.decoder.layers.",), ("model.decoder.",), decoder_counts),
        ModuleSpec("shared"),
    )


def connector_vlm() -> tuple[ModuleSpec, ...]:
    """Idefics2/3 and SmolVLM: `model.text_model.layers.N`, `model.vision_model.encoder.layers.N`
    and the connector (Idefics2's perceiver resampler included) as the projector."""
    return (
        ModuleSpec("text_decoder", ("model.text_model.layers.",), ("",), ("text_config.num_hidden_layers",)),
        ModuleSpec(
            "vision_tower",
            ("model.vision_model.encoder.layers.",),
            ("model.vision_model.",),
            ("vision_config.num_hidden_layers",),
        ),
        ModuleSpec("multi_modal_projector", (), ("model.connector.",)),
    )


def qwen_vl(index_list: str | None) -> tuple[ModuleSpec, ...]:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 / GLM-4V: `visual.blocks.N` (count vision_config.depth)
    and the merger (with Qwen3-VL's deepstack mergers) as the projector."""
    return (
        TEXT_DECODER,
        ModuleSpec(
            "vision_tower",
            ("visual.blocks.", "model.visual.blocks."),
            ("visual.", "model.visual."),
            ("vision_config.depth",),
            (f"vision_config.{index_list}",) if index_list else (),
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
    # EXAONE 3.5's own code counts num_layers, transformers' num_hidden_layers
    "exaone": (ModuleSpec("default", ("transformer.h.",), ("",), ("num_layers", "num_hidden_layers")),),
    "gpt_neox": decoder("gpt_neox.layers.", "num_hidden_layers"),
    "mamba": decoder("backbone.layers.", "num_hidden_layers"),
    "chatglm": decoder("transformer.encoder.layers.", "num_layers"),
    "bert": decoder("bert.encoder.layer.", "num_hidden_layers", "encoder.layer."),
    "roberta": decoder("roberta.encoder.layer.", "num_hidden_layers", "encoder.layer."),
    "distilbert": decoder("distilbert.transformer.layer.", "n_layers", "transformer.layer."),
    **{
        name: (
            ModuleSpec("encoder", ("encoder.block.",), ("encoder.",), ("num_layers",)),
            ModuleSpec("decoder", ("decoder.block.",), ("decoder.",), ("num_decoder_layers",)),
            ModuleSpec("shared"),
        )
        for name in ("t5", "mt5", "umt5", "longt5", "switch_transformers")
    },
    **{
        name: encoder_decoder(("encoder_layers", "num_hidden_layers"), ("decoder_layers",))
        for name in (
            "whisper",
            "bart",
            "mbart",
            "pegasus",
            "pegasus_x",
            "marian",
            "m2m_100",
            "nllb-moe",
            "plbart",
            "blenderbot",
            "blenderbot-small",
            "bigbird_pegasus",
            "mvp",
            "fsmt",
        )
    },
    "t5gemma": encoder_decoder(("encoder.num_hidden_layers",), ("decoder.num_hidden_layers",)),
    "qwen2_vl": qwen_vl("fullatt_block_indexes"),
    "qwen2_5_vl": qwen_vl("fullatt_block_indexes"),
    "qwen3_vl": qwen_vl("deepstack_visual_indexes"),
    "qwen3_vl_moe": qwen_vl("deepstack_visual_indexes"),
    "qwen3_5": qwen_vl("deepstack_visual_indexes"),
    "qwen3_5_moe": qwen_vl("deepstack_visual_indexes"),
    "glm4v": qwen_vl(None),
    "glm4v_moe": qwen_vl(None),
    "glm46v": qwen_vl(None),
    **{name: connector_vlm() for name in ("idefics2", "idefics3", "smolvlm")},
    **{
        name: (TEXT_DECODER, VISION_TOWER, PROJECTOR)
        for name in (
            "gemma3",
            "llava",
            "llava_next",
            "llava_onevision",
            "mistral3",
            "paligemma",
            "aya_vision",
            "internvl",
        )
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

# Per-layer lists that a family's transformers config derives from the layer's position when
# config.json has none (files written before the list existed; Qwen3-Next's and ModernBERT's Hub
# configs): model_type -> (path of the layer count, the list's key beside it, path of the
# pattern key or None, default pattern, entry of layer i when (i + offset) % pattern == 0, entry
# otherwise[, offset: 1 unless given]). A sliced output gets the list written out, so each
# layer keeps its source layer's kind.
_SLIDING = ("full_attention", "sliding_attention")
_LINEAR = ("full_attention", "linear_attention")
DERIVED_LISTS = {
    **{
        t: ("num_hidden_layers", "layer_types", "full_attention_interval", 4, *_LINEAR)
        for t in ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
    },
    **{
        t: ("text_config.num_hidden_layers", "layer_types", "text_config.full_attention_interval", 4, *_LINEAR)
        for t in ("qwen3_5", "qwen3_5_moe")
    },
    **{
        t: ("num_hidden_layers", "layer_types", "global_attn_every_n_layers", 3, *_SLIDING, 0)
        for t in ("modernbert", "modernbert-decoder")
    },
    "afmoe": ("num_hidden_layers", "layer_types", "global_attn_every_n_layers", 4, *_SLIDING),
    **{
        t: ("num_hidden_layers", "layer_types", "sliding_window_pattern", 4, *_SLIDING)
        for t in ("exaone4", "exaone_moe")
    },
    "gemma4_text": ("num_hidden_layers", "layer_types", None, 6, *_SLIDING),
    "gemma4": ("text_config.num_hidden_layers", "layer_types", None, 6, *_SLIDING),
    # SmolLM3: 0 (no RoPE) every interval-th layer, as Llama 4
    "smollm3": ("num_hidden_layers", "no_rope_layers", "no_rope_layer_interval", 4, 0, 1),
    "gemma2": ("num_hidden_layers", "layer_types", None, 2, *_SLIDING),
    "gemma3_text": ("num_hidden_layers", "layer_types", "sliding_window_pattern", 6, *_SLIDING),
    "gemma3": ("text_config.num_hidden_layers", "layer_types", "text_config.sliding_window_pattern", 6, *_SLIDING),
    "gemma3n_text": ("num_hidden_layers", "layer_types", None, 5, *_SLIDING),
    "gemma3n": ("text_config.num_hidden_layers", "layer_types", None, 5, *_SLIDING),
    "cohere2": ("num_hidden_layers", "layer_types", "sliding_window_pattern", 4, *_SLIDING),
    "gpt_oss": ("num_hidden_layers", "layer_types", None, 2, *_SLIDING),
    "olmo3": ("num_hidden_layers", "layer_types", None, 4, *_SLIDING),
    "minimax": ("num_hidden_layers", "layer_types", None, 2, "linear_attention", "full_attention"),
    # Llama 4: 0 (no RoPE) every interval-th layer; an empty list counts as none
    "llama4_text": ("num_hidden_layers", "no_rope_layers", "no_rope_layer_interval", 4, 0, 1),
    "llama4": ("text_config.num_hidden_layers", "no_rope_layers", "text_config.no_rope_layer_interval", 4, 0, 1),
}
# Loose weights that families apply after their layers under names resolve.POST_PATTERN does not
# know (LFM2's final norm is `model.embedding_norm`; Whisper's and MBART's encoder and decoder
# end in `layer_norm`): model_type -> dotted name parts that make a loose weight a post-weight.
POST_NAMES = {
    **{t: ("embedding_norm",) for t in ("lfm2", "lfm2_moe", "lfm2_vl")},
    **{
        t: ("layer_norm",)
        for t in ("whisper", "mbart", "pegasus", "pegasus_x", "m2m_100", "nllb-moe", "blenderbot", "biogpt", "xglm")
    },
    "distilbert": ("vocab_transform", "vocab_layer_norm", "vocab_projector"),
    "modernbert": ("head", "decoder"),
    "fsmt": ("output_projection",),
    "modernbert-decoder": ("head", "decoder"),
    "ctrl": ("layernorm",),
    "megatron-bert": ("encoder.ln",),
    "xlm-roberta-xl": ("encoder.LayerNorm",),
    "roberta-prelayernorm": ("roberta_prelayernorm.LayerNorm",),
    "cpmant": ("output_layernorm",),
    "electra": ("generator_predictions", "generator_lm_head"),
    "xlnet": ("lm_loss",),
    "rwkv": ("ln_out",),
    **{t: ("hc_head",) for t in ("deepseek_v4", "hy_v4")},  # hyper-connections' head after the layers
}
# The output head's name in families that do not call it `lm_head.weight`, for checkpoints that
# leave it out (tied to the input embedding).
TIED_HEAD_NAMES = {
    "whisper": "proj_out.weight",
    "distilbert": "vocab_projector.weight",
    "roberta": "lm_head.decoder.weight",
    "xlm-roberta": "lm_head.decoder.weight",
    "bert": "cls.predictions.decoder.weight",
    "fsmt": "model.decoder.output_projection.weight",
}
# Lists of layer indices (not per-layer lists): rewritten to the output's indices.
INDEX_LISTS = (
    "mlp_only_layers",
    "full_attn_idxs",
    "moe_layers",
    "attn_layer_indices",
    "cross_attention_layers",
    "rope_scaling_layers",  # Molmo 2: the layers with scaled RoPE
    "index_layers",  # Kolibri: the indexer layers
    "local_layer_ids",  # Inkling: the sliding-window layers
)
# Index lists whose entries are paired, in order, with tensors outside the layers (Qwen3-VL's
# `deepstack_merger_list.i` serves the i-th listed vision layer): a slice stack must list the
# same source layers, once each and in order, or the pairs would change.
PAIRED_INDEX_LISTS = ("deepstack_visual_indexes",)
