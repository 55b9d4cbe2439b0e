"""A zoo of tiny random models of 44 architectures, built by transformers itself.

Each model type gets a family of three float32 checkpoints: `base` (transformers' own random
initialisation, seeded) and two fine-tunes `ft-a` and `ft-b` (base's tensors plus small seeded
noise, same config). The models are tiny (vocab 128, hidden 32) and their layer stacks have
distinct depths so that a stack can be told apart by its layer count: every text stack has 3
layers, every vision stack 2; the encoders of T5, BART, MBART and Whisper have 3 and their
decoders 2.

Besides building, this module knows where each architecture keeps its layers (`LAYOUTS`): the
checkpoint prefix of the stack(s) a passthrough slice config re-stacks, the tensors that come
after them (final norm, output head: taken from the *last* slice's model, as mergekit does),
and the config.json paths of the layer counts. `build_family` checks that description against
what transformers actually wrote, so a change in transformers' checkpoint format shows up as
a helper error, not as a false product failure.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

TYPES = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi",
    "phi3",
    "gpt2",
    "gpt_neox",
    "gpt_bigcode",
    "falcon",
    "stablelm",
    "starcoder2",
    "olmo2",
    "cohere",
    "cohere2",
    "granite",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "mamba",
    "t5",
    "bert",
    "qwen2_vl",
    "qwen2_5_vl",
    "llava",
    "mistral3",
    "exaone4",
    "deepseek_v3",
    "glm4_moe",
    "gpt_oss",
    "llama4_text",
    "qwen3_next",
    "bamba",
    "lfm2_moe",
    "olmo3",
    "smollm3",
    "granitemoehybrid",
    "bart",
    "mbart",
    "whisper",
]

# model type -> the transformers class that builds (and loads) it
CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "phi": "PhiForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt_bigcode": "GPTBigCodeForCausalLM",
    "falcon": "FalconForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "cohere": "CohereForCausalLM",
    "cohere2": "Cohere2ForCausalLM",
    "granite": "GraniteForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mamba": "MambaForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "bert": "BertForMaskedLM",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "mistral3": "Mistral3ForConditionalGeneration",
    "exaone4": "Exaone4ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "glm4_moe": "Glm4MoeForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM",
    "bamba": "BambaForCausalLM",
    "lfm2_moe": "Lfm2MoeForCausalLM",
    "olmo3": "Olmo3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "bart": "BartForConditionalGeneration",
    "mbart": "MBartForConditionalGeneration",
    "whisper": "WhisperForConditionalGeneration",
}

TEXT_LAYERS, VISION_LAYERS = 3, 2
TEXT = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=TEXT_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=VISION_LAYERS,
    num_attention_heads=4,
    image_size=16,
    patch_size=4,
)
NOISE = 0.02
SEEDS = {"base": 0, "ft-a": 1, "ft-b": 2}
INPUT_IDS = [[1, 5, 9, 12, 3, 7]]
DECODER_INPUT_IDS = [[0, 4, 8]]


# ---------------------------------------------------------------------------------------------
# Configs


def _qwen_vl_config(model_type: str, config_class):
    """Qwen2-VL / Qwen2.5-VL: a 3-layer text stack with mrope, a 2-block vision tower."""
    vision = dict(
        depth=VISION_LAYERS,
        embed_dim=32,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        mlp_ratio=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=32,
    )
    if model_type == "qwen2_5_vl":
        vision["fullatt_block_indexes"] = [1]
    text = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, bos_token_id=1, eos_token_id=2)
    return config_class(text_config=text, vision_config=vision)


def _vlm_config(model_type: str, config_class):
    """Gemma3, LLaVA (Llama + CLIP) and Mistral3 (Mistral + Pixtral)."""
    if model_type == "gemma3":
        return config_class(text_config=dict(TEXT, head_dim=8), vision_config=VISION, mm_tokens_per_image=4)
    if model_type == "llava":
        vision = dict(VISION, model_type="clip_vision_model", projection_dim=32)
        return config_class(text_config=dict(TEXT, model_type="llama"), vision_config=vision, image_token_index=127)
    vision = dict(VISION, model_type="pixtral", head_dim=8)
    return config_class(
        text_config=dict(TEXT, model_type="mistral", head_dim=8),
        vision_config=vision,
        image_token_index=127,
        spatial_merge_size=2,
    )


def _encoder_decoder_kwargs(model_type: str) -> dict:
    """BART, MBART and Whisper: a 3-layer encoder and a 2-layer decoder, as T5's."""
    kw = dict(d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4)
    kw.update(encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "whisper":  # audio in: 8 mel bins, 32 frames (2 x max_source_positions)
        return dict(kw, num_mel_bins=8, max_source_positions=16, max_target_positions=32, decoder_start_token_id=1)
    return dict(kw, max_position_embeddings=64, decoder_start_token_id=2)


def _special_config(model_type: str, config_class):
    """Types whose config does not take the common Llama-style keywords, or None."""
    if model_type in ("gpt2", "gpt_bigcode"):
        return config_class(
            vocab_size=128, n_embd=32, n_layer=TEXT_LAYERS, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    if model_type == "mamba":
        return config_class(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=TEXT_LAYERS,
            state_size=4,
            expand=2,
            conv_kernel=4,
            time_step_rank=4,
        )
    if model_type == "t5":
        return config_class(
            vocab_size=128,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=3,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
        )
    if model_type == "bert":
        return config_class(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    if model_type in ("bart", "mbart", "whisper"):
        return config_class(**_encoder_decoder_kwargs(model_type))
    if model_type == "falcon":
        return config_class(vocab_size=128, hidden_size=32, num_hidden_layers=TEXT_LAYERS, num_attention_heads=4)
    return None


_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
_DEEPSEEK = dict(_MOE, n_routed_experts=4, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1)
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8)
# Newer families, each with layers of several kinds: by a positional rule (first_k_dense_replace,
# interleave_moe_layer_step, num_dense_layers), a list of layer indices (moe_layers,
# attn_layer_indices) or a per-layer list (layer_types, no_rope_layers). The passthrough stack
# (layers 0, 1, 1, 2) keeps every layer's kind, so each merges and loads.
_NEWER = {
    "deepseek_v3": dict(
        _DEEPSEEK,
        num_key_value_heads=4,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    ),
    "glm4_moe": _DEEPSEEK,
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8),
    "llama4_text": dict(
        num_local_experts=4, num_experts_per_tok=2, head_dim=8, interleave_moe_layer_step=2, no_rope_layer_interval=2
    ),
    "qwen3_next": dict(
        _MOE,
        num_experts=4,
        shared_expert_intermediate_size=32,
        head_dim=8,
        full_attention_interval=2,
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    ),
    "bamba": dict(_MAMBA, attn_layer_indices=[1]),
    "lfm2_moe": dict(_MOE, num_experts=4, num_dense_layers=1, layer_types=["conv", "full_attention", "conv"]),
    "granitemoehybrid": dict(
        _MAMBA, num_local_experts=4, num_experts_per_tok=2, layer_types=["mamba", "attention", "mamba"]
    ),
    "olmo3": {},  # layer_types from position
    "smollm3": {},  # no_rope_layers
}


def _text_config(model_type: str, config_class):
    """Decoder-only text models, MoE ones included."""
    kw = dict(TEXT)
    if model_type in _NEWER:
        kw.update(_NEWER[model_type], tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "mixtral":
        kw.update(num_local_experts=4, num_experts_per_tok=2)
    if model_type in ("qwen2_moe", "qwen3_moe"):
        kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    if model_type in ("gemma", "gemma2", "gemma3_text"):
        kw["head_dim"] = 8
    if model_type in ("phi3", "olmo2", "cohere", "cohere2", "starcoder2"):  # ids < vocab
        kw.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return config_class(**kw)


def model_config(model_type: str):
    """A tiny transformers config object for `model_type`."""
    config_class = CONFIG_MAPPING[model_type]
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return _qwen_vl_config(model_type, config_class)
    if model_type in ("gemma3", "llava", "mistral3"):
        return _vlm_config(model_type, config_class)
    special = _special_config(model_type, config_class)
    return special if special is not None else _text_config(model_type, config_class)


def model_class(model_type: str):
    """The transformers class that builds and loads `model_type`."""
    return getattr(transformers, CLASSES[model_type])


# ---------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class Layout:
    """Where one architecture keeps its layers, in the checkpoint and in config.json.

    `stacks`: checkpoint prefix of each stack a passthrough re-stacks -> (layers in the
    inputs, output layer -> (model, source layer)). `post`: tensors after those stacks (final
    norm, output head): a passthrough takes them from the last slice's model (ft-a). `counts`:
    dotted config.json paths of layer counts -> their value after the passthrough merge
    (counts of stacks the merge does not touch keep their value)."""

    stacks: dict[str, tuple[int, tuple[tuple[str, int], ...]]]
    post: tuple[str, ...]
    counts: dict[str, int]


# base layers 0, 1 then ft-a layers 1, 2 (layer_range [0, 2] + [1, 3])
TEXT_SOURCES = (("base", 0), ("base", 1), ("ft-a", 1), ("ft-a", 2))
DECODER_SOURCES = (("base", 0), ("base", 1), ("ft-a", 1))  # [0, 2] + [1, 2]


def _text_layout(
    prefix: str, post: tuple[str, ...], count_key="num_hidden_layers", vision_key: str | None = None
) -> Layout:
    """A model with one re-stacked text stack (3 -> 4 layers), maybe beside a vision tower."""
    counts = {count_key: len(TEXT_SOURCES)}
    if vision_key:
        counts[vision_key] = VISION_LAYERS
    return Layout({prefix: (TEXT_LAYERS, TEXT_SOURCES)}, post, counts)


def _llama_like(norm="model.norm.", head=("lm_head.weight",), bias=False) -> Layout:
    """`model.layers.N.` with a final norm `model.norm` and maybe an untied lm_head."""
    post = (f"{norm}weight",) + ((f"{norm}bias",) if bias else ()) + tuple(head)
    return _text_layout("model.layers.", post)


_UNTIED = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo2",
    "granite",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "exaone4",
    "deepseek_v3",
    "glm4_moe",
    "gpt_oss",
    "llama4_text",
    "qwen3_next",
    "olmo3",
    "smollm3",
    "granitemoehybrid",
)
_TIED = ("gemma", "gemma2", "gemma3_text", "cohere", "cohere2")
_LN_F = ("transformer.ln_f.weight", "transformer.ln_f.bias")
_LM_NORM = "language_model.model.norm.weight"

LAYOUTS: dict[str, Layout] = {
    **{t: _llama_like() for t in _UNTIED},
    **{t: _llama_like(head=()) for t in _TIED},
    "stablelm": _llama_like(bias=True),
    "starcoder2": _llama_like(head=(), bias=True),
    "bamba": _llama_like(norm="model.final_layernorm."),
    "lfm2_moe": _llama_like(norm="model.embedding_norm."),
    "phi": _llama_like(norm="model.final_layernorm.", head=("lm_head.weight", "lm_head.bias"), bias=True),
    "gpt2": _text_layout("transformer.h.", _LN_F, "n_layer"),
    "gpt_bigcode": _text_layout("transformer.h.", _LN_F, "n_layer"),
    "falcon": _text_layout("transformer.h.", _LN_F),
    "gpt_neox": _text_layout(
        "gpt_neox.layers.", ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight")
    ),
    "mamba": _text_layout("backbone.layers.", ("backbone.norm_f.weight",)),
    "bert": _text_layout(
        "bert.encoder.layer.",
        tuple(
            f"cls.predictions.{n}"
            for n in (
                "bias",
                "transform.dense.weight",
                "transform.dense.bias",
                "transform.LayerNorm.weight",
                "transform.LayerNorm.bias",
            )
        ),
    ),
    "gemma3": _text_layout(
        "language_model.model.layers.", (_LM_NORM,), "text_config.num_hidden_layers", "vision_config.num_hidden_layers"
    ),
    "llava": _text_layout(
        "language_model.model.layers.",
        (_LM_NORM, "language_model.lm_head.weight"),
        "text_config.num_hidden_layers",
        "vision_config.num_hidden_layers",
    ),
    "mistral3": _text_layout(
        "language_model.model.layers.", (_LM_NORM,), "text_config.num_hidden_layers", "vision_config.num_hidden_layers"
    ),
    **{
        t: _text_layout(
            "model.layers.",
            ("model.norm.weight", "lm_head.weight"),
            "text_config.num_hidden_layers",
            "vision_config.depth",
        )
        for t in ("qwen2_vl", "qwen2_5_vl")
    },
}
ENCODER_DECODER_COUNTS = ("encoder_layers", "decoder_layers")
# encoder-decoder models: re-stacked through `modules:` (encoder, decoder; T5 and BART: shared)
ENCODER_DECODERS = {"t5": True, "bart": True, "mbart": True, "whisper": False}


def _encoder_decoder_layout(encoder: str, decoder: str, post: tuple[str, ...], counts: tuple[str, str]) -> Layout:
    """An encoder re-stacked 3 -> 4 layers and a decoder 2 -> 3, as T5's."""
    stacks = {encoder: (3, TEXT_SOURCES), decoder: (2, DECODER_SOURCES)}
    return Layout(stacks, post, {counts[0]: len(TEXT_SOURCES), counts[1]: len(DECODER_SOURCES)})


# the final norms of MBART's and Whisper's encoder and decoder
_LAYER_NORMS = tuple(f"model.{part}.layer_norm.{p}" for part in ("encoder", "decoder") for p in ("weight", "bias"))
_ENCODER, _DECODER = "model.encoder.layers.", "model.decoder.layers."
LAYOUTS.update(
    t5=_encoder_decoder_layout(
        "encoder.block.",
        "decoder.block.",
        ("encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"),
        ("num_layers", "num_decoder_layers"),
    ),
    bart=_encoder_decoder_layout(_ENCODER, _DECODER, (), ENCODER_DECODER_COUNTS),
    mbart=_encoder_decoder_layout(_ENCODER, _DECODER, _LAYER_NORMS, ENCODER_DECODER_COUNTS),
    whisper=_encoder_decoder_layout(_ENCODER, _DECODER, _LAYER_NORMS, ENCODER_DECODER_COUNTS),
)


def config_get(config: dict, path: str):
    """The value at a dotted path of a config.json dict (KeyError when absent)."""
    for key in path.split("."):
        config = config[key]
    return config


# ---------------------------------------------------------------------------------------------
# Building


def _save_base(model_type: str, folder: Path) -> None:
    """Build the seeded random base model and save it (safetensors, float32)."""
    torch.manual_seed(SEEDS["base"])
    model = model_class(model_type)(model_config(model_type)).to(torch.float32)
    model.save_pretrained(folder, safe_serialization=True)


def _save_fine_tune(base: Path, folder: Path, seed: int) -> None:
    """base's tensors plus NOISE * randn (seeded) on every floating tensor; same config."""
    folder.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        if (base / name).exists():
            shutil.copy(base / name, folder / name)
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(base / "model.safetensors")
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point():
            tensors[name] = t + NOISE * torch.randn(t.shape, generator=generator, dtype=t.dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _check_layout(model_type: str, folder: Path) -> None:
    """The layout description matches what transformers wrote (a helper error otherwise)."""
    layout = LAYOUTS[model_type]
    names = set(read_tensors(folder))
    config = read_config(folder)
    assert config["architectures"] == [CLASSES[model_type]], config["architectures"]
    missing = [n for n in layout.post if n not in names]
    assert not missing, f"{model_type}: post weights {missing} not in the checkpoint"
    for prefix, (layers, _) in layout.stacks.items():
        found = {int(n[len(prefix) :].split(".")[0]) for n in names if n.startswith(prefix)}
        assert found == set(range(layers)), f"{model_type}: {prefix} has layers {sorted(found)}"
    for path in layout.counts:
        config_get(config, path)  # KeyError: a count path that is not there


def build_family(model_type: str, root: Path) -> dict[str, Path]:
    """Write `base`, `ft-a` and `ft-b` of `model_type` under `root`; returns name -> folder."""
    folders = {name: root / name for name in SEEDS}
    _save_base(model_type, folders["base"])
    _check_layout(model_type, folders["base"])
    for name in ("ft-a", "ft-b"):
        _save_fine_tune(folders["base"], folders[name], SEEDS[name])
    return folders


# ---------------------------------------------------------------------------------------------
# Reading and running


def read_config(folder: Path) -> dict:
    """config.json of a model folder."""
    return json.loads((Path(folder) / "config.json").read_text())


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the *.safetensors files of a model folder (sharded or not)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def load_output(model_type: str, folder: Path):
    """Load a model folder with `model_type`'s class; returns (model, loading_info)."""
    model, info = model_class(model_type).from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


@torch.no_grad()
def logits(model, model_type: str) -> torch.Tensor:
    """Logits of a forward pass on a small fixed text-only input (token ids < 100)."""
    kwargs = {"input_ids": torch.tensor(INPUT_IDS)}
    if model_type == "whisper":  # seeded noise as the audio features
        shape = (1, model.config.num_mel_bins, 2 * model.config.max_source_positions)
        kwargs = {"input_features": torch.randn(shape, generator=torch.Generator().manual_seed(0))}
    if model_type in ENCODER_DECODERS:
        kwargs["decoder_input_ids"] = torch.tensor(DECODER_INPUT_IDS)
    return model.eval()(**kwargs).logits
