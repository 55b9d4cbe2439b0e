"""Output config.json entries of sliced stacks that are keyed by layer or point at layers
(`per_layer_config`, `kv_source_layers`, Molmo 2's `rope_scaling_layers`), the layer-kind rules
of encoder-decoders (NLLB-MoE, Switch Transformers), and the heads and buffers that the
architecture hunts of transformers' VLMs and encoder-decoders found mishandled."""

from __future__ import annotations

import re

import pytest
import torch
from checkpoints import random_tensors, write_checkpoint
from helpers import plan_of, run_cli
from safetensors.torch import load_file

from mergefast.architecture import resolve_architecture
from mergefast.errors import ConfigError

STACKED = ((0, 2), (1, 3))  # layers 0, 1, 1, 2 of a 3-layer model
DECODER_SHAPES = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(3)}}


def _stack_plan(tmp_path, config: dict, ranges=STACKED):
    """The plan of a passthrough slice stack of `ranges` over a 3-layer decoder with `config`."""
    model = write_checkpoint(tmp_path / "m", random_tensors(DECODER_SHAPES, torch.float32), config=config)
    slices = "".join(f"  - sources: [{{model: {model}, layer_range: [{a}, {b}]}}]\n" for a, b in ranges)
    return plan_of(f"merge_method: passthrough\nslices:\n{slices}")


def test_per_layer_config_follows_the_layers(tmp_path):
    """Gemma 4's per-layer overrides (its full-attention layers' head_dim) move with their
    layers: output layer k takes its source layer's entry, under key k."""
    config = {"model_type": "qwen2", "num_hidden_layers": 3, "per_layer_config": {"1": {"head_dim": 16}, "2": {"x": 1}}}
    out = _stack_plan(tmp_path, config).model_config
    assert out["per_layer_config"] == {"1": {"head_dim": 16}, "2": {"head_dim": 16}, "3": {"x": 1}}


def test_a_per_layer_config_that_is_no_layer_mapping_is_refused(tmp_path):
    config = {"model_type": "qwen2", "num_hidden_layers": 3, "per_layer_config": {"sliding": {"head_dim": 16}}}
    with pytest.raises(ConfigError, match="not a mapping from layer index to overrides"):
        _stack_plan(tmp_path, config)


@pytest.mark.parametrize(
    ("pointers", "ranges", "expected"),
    [
        ([0, 1, 2], STACKED, [0, 1, 2, 3]),  # every layer its own keys and values
        ([0, 0, 2], STACKED, [0, 0, 0, 3]),  # both copies of layer 1 read layer 0's, now output 0's
        ([0, 0, 0], ((0, 2), (0, 3)), [0, 0, 2, 2, 2]),  # the latest earlier copy of layer 0
        ([0, 0, 2], ((1, 3),), "output layer 0 (source layer 1) of the default module reads"),
    ],
)
def test_kv_source_layers_point_at_the_output_layers(tmp_path, pointers, ranges, expected):
    """Mistral Large 4's `kv_source_layers` (per layer, the layer whose keys and values it
    reads): each pointer moves to the output layer made from the layer it points at, or the
    stack is refused where that layer is not placed before it."""
    config = {"model_type": "qwen2", "num_hidden_layers": 3, "kv_source_layers": pointers}
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            _stack_plan(tmp_path, config, ranges)
    else:
        assert _stack_plan(tmp_path, config, ranges).model_config["kv_source_layers"] == expected


@pytest.mark.parametrize("key", ["rope_scaling_layers", "index_layers"])
def test_lists_of_layer_indices_are_reindexed(tmp_path, key):
    """Molmo 2's `rope_scaling_layers` and Kolibri's `index_layers` list layer indices; a
    3-entry one over 3 layers is not a per-layer list."""
    config = {"model_type": "qwen2", "num_hidden_layers": 3, key: [0, 1, 2]}
    assert _stack_plan(tmp_path, config).model_config[key] == [0, 1, 2, 3]
    config[key] = [2]
    assert _stack_plan(tmp_path, config).model_config[key] == [3]


# ---------------------------------------------------------------------------------------------
# Encoder-decoders


def _encoder_decoder_plan(tmp_path, config: dict, encoder: tuple, decoder: tuple):
    """A `modules:` slice stack of a 3-layer encoder and 2-layer decoder in the T5 layout
    (`encoder.block.N`, `decoder.block.N`) or, with `encoder_layers` in `config`, BART's."""
    bart = "encoder_layers" in config
    stack = "model.{}.layers." if bart else "{}.block."
    shapes = {"shared.weight": (16, 8)}
    for part, count in (("encoder", 3), ("decoder", 2)):
        shapes.update({f"{stack.format(part)}{i}.w": (8, 8) for i in range(count)})
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)

    def module(ranges):
        rows = "".join(f"        - sources: [{{model: {model}, layer_range: [{a}, {b}]}}]\n" for a, b in ranges)
        return f"    slices:\n{rows}"

    text = f"merge_method: passthrough\nmodules:\n  encoder:\n{module(encoder)}  decoder:\n{module(decoder)}"
    return plan_of(text)


SWITCH = {"model_type": "switch_transformers", "num_layers": 3, "num_decoder_layers": 2}


@pytest.mark.parametrize(
    ("settings", "encoder", "decoder", "refused"),
    [
        # step 3 // 3 = 1: every layer MoE, in the 3-layer stack 0, 1, 1 too
        ({**SWITCH, "num_sparse_encoder_layers": 3, "num_sparse_decoder_layers": 0}, ((0, 2), (1, 2)), ((0, 2),), None),
        # but 6 // 3 = 2 in 6 layers: only the odd ones
        (
            {**SWITCH, "num_sparse_encoder_layers": 3, "num_sparse_decoder_layers": 0},
            ((0, 3), (0, 3)),
            ((0, 2),),
            "output layer 0 (dense by that rule) from source layer 0 (MoE)",
        ),
        # the decoder's step 2 // 2 = 1 (all MoE) becomes 3 // 2 = 1: all MoE still
        ({**SWITCH, "num_sparse_encoder_layers": 1, "num_sparse_decoder_layers": 2}, ((0, 3),), ((0, 2), (1, 2)), None),
        # 2 // 3 = 0 (a dense decoder) becomes 3 // 3 = 1: every layer MoE
        (
            {**SWITCH, "num_sparse_encoder_layers": 3, "num_sparse_decoder_layers": 3},
            ((0, 3),),
            ((0, 2), (1, 2)),
            "num_sparse_decoder_layers: 3 gives the decoder module's layers a kind by position: this "
            "slice stack makes output layer 0 (MoE by that rule) from source layer 0 (dense)",
        ),
        # a step that config.json holds wins over the derived one (3 // 3 = 1): layer 1 MoE, and
        # in the stack 0, 1, 1 output 2 is dense
        (
            {**SWITCH, "num_sparse_encoder_layers": 3, "encoder_sparse_step": 2, "num_sparse_decoder_layers": 0},
            ((0, 2), (1, 2)),
            ((0, 2),),
            "output layer 2 (dense by that rule) from source layer 1 (MoE)",
        ),
        # 3 // 1 = 3: layer 1 MoE; in the stack 0, 1, 1, 2 the step is 4: output 2 is dense
        (
            {**SWITCH, "num_sparse_encoder_layers": 1, "num_sparse_decoder_layers": 0},
            STACKED,
            ((0, 2),),
            "output layer 2 (dense by that rule) from source layer 1 (MoE)",
        ),
    ],
)
def test_switch_transformers_sparse_layers_keep_their_kind(tmp_path, settings, encoder, decoder, refused):
    """Switch Transformers' MoE layers: transformers derives the step from the layer count
    (layers // sparse layers) and makes layer i MoE where i % step == 1 (or step == 1)."""
    if refused is None:
        _encoder_decoder_plan(tmp_path, settings, encoder, decoder)
    else:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            _encoder_decoder_plan(tmp_path, settings, encoder, decoder)


NLLB = {"model_type": "nllb-moe", "encoder_layers": 3, "decoder_layers": 2, "decoder_sparse_step": 1}


def test_nllb_moe_rules_read_each_stacks_own_step(tmp_path):
    """NLLB-MoE: encoder_sparse_step rules the encoder's layers, decoder_sparse_step the
    decoder's (layer i MoE where (i + 1) % step == 0; step 0: all dense)."""
    dense_encoder = {**NLLB, "encoder_sparse_step": 0}
    _encoder_decoder_plan(tmp_path / "a", dense_encoder, STACKED, ((0, 2), (1, 2)))
    with pytest.raises(ConfigError, match=re.escape("encoder_sparse_step: 2 gives the encoder module's layers")):
        _encoder_decoder_plan(tmp_path / "b", {**NLLB, "encoder_sparse_step": 2}, STACKED, ((0, 2),))


def test_fsmt_head_and_languages(tmp_path):
    """FSMT's untied head is `model.decoder.output_projection.weight` (it was taken for a
    missing `lm_head.weight`), and its `langs` pair is no per-layer list of a 2-layer decoder."""
    config = {"model_type": "fsmt", "encoder_layers": 3, "decoder_layers": 2, "langs": ["en", "de"]}
    config["tie_word_embeddings"] = False
    shapes = {
        "model.encoder.embed_tokens.weight": (16, 8),
        "model.decoder.embed_tokens.weight": (16, 8),
        **{f"model.encoder.layers.{i}.w": (8, 8) for i in range(3)},
        **{f"model.decoder.layers.{i}.w": (8, 8) for i in range(2)},
        "model.decoder.output_projection.weight": (16, 8),
    }
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)
    rows = "".join(f"        - sources: [{{model: {model}, layer_range: [{a}, {b}]}}]\n" for a, b in ((0, 2), (1, 2)))
    plan = plan_of(f"merge_method: passthrough\nmodules:\n  decoder:\n    slices:\n{rows}")
    assert plan.model_config["langs"] == ["en", "de"] and plan.model_config["decoder_layers"] == 3
    assert "model.decoder.output_projection.weight" in {job.name for job in plan.jobs}


def test_an_image_heads_proj_out_is_not_the_text_head():
    """Janus' `model.generation_head.proj_out` is its image head: its text head `lm_head` is
    tied (absent). Taken for the head, it untied the output's config with no `lm_head.weight`:
    a random head on load."""
    names = ["model.language_model.embed_tokens.weight", "model.language_model.layers.0.w"]
    names += ["model.language_model.norm.weight", "model.generation_head.proj_out.weight"]
    arch = resolve_architecture(names, {"model_type": "janus", "text_config": {"num_hidden_layers": 1}})
    assert arch.tied_heads == {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    whisper = resolve_architecture(["model.encoder.layers.0.w", "model.shared.weight", "proj_out.weight"], {})
    assert "proj_out.weight" in whisper.tied_heads


def test_integer_buffers_are_copied_from_the_base(tmp_path):
    """Integer buffers (BatchNorm's num_batches_tracked, in Emu3's VQ model) are copied from the
    base model, not merged; the other models' copies are accounted for (they were reported as
    tensors that would not reach the output, refusing the merge)."""
    floats = {"model.embed_tokens.weight": (16, 8), "model.layers.0.w": (8, 8)}
    models = []
    for i, name in enumerate(("base", "other")):
        tensors = random_tensors(floats, torch.float32, seed=i)
        tensors["vq.norm.num_batches_tracked"] = torch.tensor(10 + i, dtype=torch.int64)
        config = {"model_type": "llama", "num_hidden_layers": 1}
        models.append(write_checkpoint(tmp_path / name, tensors, config=config))
    config = tmp_path / "c.yml"
    config.write_text(
        f"merge_method: linear\nbase_model: {models[0]}\nmodels:\n  - model: {models[0]}\n  - model: {models[1]}\n"
        "parameters: {weight: 0.5}\n"
    )
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert out["vq.norm.num_batches_tracked"].dtype == torch.int64 and int(out["vq.norm.num_batches_tracked"]) == 10


@pytest.mark.parametrize(
    ("settings", "kept"),
    [
        ({"model_type": "gemma3n_text"}, "hidden_size_per_layer_input is 256: this model keeps a block of per-layer"),
        (
            {"model_type": "zamba2", "hybrid_layer_ids": [1]},
            "hybrid_layer_ids is [1]: this model keeps shared attention",
        ),
        ({"model_type": "zamba", "attn_layer_period": 2, "attn_layer_offset": 1}, "a zamba model has one shared"),
    ],
)
def test_models_with_per_layer_tensors_outside_the_layers_are_not_restacked(tmp_path, settings, kept):
    """Gemma 3n's per-layer input embeddings, Zamba 2's hybrid-layer adapters and Zamba's shared
    attention block sit outside the layers: a stack that moves layers is refused; the whole
    model merges."""
    config = {"num_hidden_layers": 3, **settings}
    with pytest.raises(ConfigError, match=re.escape(kept)):
        _stack_plan(tmp_path / "a", config)
    assert _stack_plan(tmp_path / "b", config, ((0, 3),)).model_config["num_hidden_layers"] == 3


def test_per_layer_patterns_and_one_based_lists_follow_the_layers(tmp_path):
    """Nemotron-H's `hybrid_override_pattern` (a character per layer) and Kimi Linear's
    1-based `linear_attn_config` lists, as the Hub's configs have them."""
    nemotron = {"model_type": "nemotron_h", "num_hidden_layers": 3, "hybrid_override_pattern": "M*-"}
    assert _stack_plan(tmp_path / "n", nemotron).model_config["hybrid_override_pattern"] == "M**-"
    kimi = {"model_type": "kimi_linear", "num_hidden_layers": 3}
    kimi["linear_attn_config"] = {"full_attn_layers": [2], "kda_layers": [1, 3], "head_dim": 8}
    out = _stack_plan(tmp_path / "k", kimi).model_config["linear_attn_config"]
    assert out == {"full_attn_layers": [2, 3], "kda_layers": [1, 4], "head_dim": 8}


@pytest.mark.parametrize(
    ("model_type", "stack", "post"),
    [
        ("deepseek_v4", "model.layers.", ("model.norm.weight", "model.hc_head.hc_base", "head.weight")),
        ("rwkv", "rwkv.blocks.", ("rwkv.ln_out.weight", "head.weight")),
        ("biogpt", "biogpt.layers.", ("biogpt.layer_norm.weight",)),
        ("ctrl", "transformer.h.", ("transformer.layernorm.weight",)),
        ("megatron-bert", "bert.encoder.layer.", ("bert.encoder.ln.weight",)),
        ("roberta-prelayernorm", "roberta_prelayernorm.encoder.layer.", ("roberta_prelayernorm.LayerNorm.weight",)),
        ("electra", "electra.encoder.layer.", ("generator_predictions.dense.weight", "generator_lm_head.bias")),
        ("xlnet", "transformer.layer.", ("lm_loss.bias",)),
    ],
)
def test_final_norms_and_heads_under_family_names_come_after_the_layers(model_type, stack, post):
    """Weights these families apply after their layers are post-weights (a passthrough takes
    them from the last slice's model; they came from the first's)."""
    names = ["embed.word_embeddings.weight", f"{stack}0.w", *post]
    arch = resolve_architecture(names, {"model_type": model_type, "num_hidden_layers": 1})
    assert set(post) <= {name for module in arch.modules for name in module.post_weights}


def test_top_level_head_and_output_weights_are_heads():
    """DeepSeek V4 and RWKV write their head as `head.weight`, GIT as `output.weight`: with
    tie_word_embeddings false they were refused as missing an `lm_head.weight`."""
    for head in ("head.weight", "output.weight"):
        arch = resolve_architecture(["model.embed_tokens.weight", "model.layers.0.w", head], {"num_hidden_layers": 1})
        assert arch.tied_heads == {head: "model.embed_tokens.weight"}


def test_exaone_counts_either_key(tmp_path):
    """EXAONE 3.5's own config counts `num_layers`, transformers' `num_hidden_layers`."""
    for key in ("num_layers", "num_hidden_layers"):
        shapes = {"transformer.wte.weight": (16, 8), **{f"transformer.h.{i}.w": (8, 8) for i in range(3)}}
        model = write_checkpoint(
            tmp_path / key, random_tensors(shapes, torch.float32), config={"model_type": "exaone", key: 3}
        )
        text = f"merge_method: passthrough\nslices:\n  - sources: [{{model: {model}, layer_range: [0, 2]}}]\n"
        assert plan_of(text).model_config[key] == 2


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # Qwen3-Next's Hub config: full attention every full_attention_interval-th layer
        (
            {"model_type": "qwen3_next", "full_attention_interval": 2},
            ["linear_attention", "full_attention", "full_attention", "linear_attention"],
        ),
        # ModernBERT's Hub config: global attention on layers 0, n, 2n, ...
        (
            {"model_type": "modernbert", "global_attn_every_n_layers": 2},
            ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        ),
    ],
)
def test_layer_types_derived_from_an_interval_are_written_out(tmp_path, settings, expected):
    """A config.json without `layer_types` whose class derives them from an interval: the
    output gets the sources' kinds written out (the interval read at the output's positions
    would give layers 2 and 3 the other kind)."""
    out = _stack_plan(tmp_path, {"num_hidden_layers": 3, **settings}).model_config
    assert out["layer_types"] == expected


def test_indexer_schedules_keep_each_layers_kind(tmp_path):
    """GLM-5's sparse-attention indexer: a per-layer `index_topk_pattern` string is rebuilt; a
    freq/offset schedule (no list) is read at the output's positions, so a stack that would
    change a layer's kind is refused."""
    pattern = {"model_type": "glm_moe_dsa", "num_hidden_layers": 3, "index_topk_pattern": "FSF"}
    assert _stack_plan(tmp_path / "p", pattern).model_config["index_topk_pattern"] == "FSSF"
    schedule = {"model_type": "glm_moe_dsa", "num_hidden_layers": 3, "index_topk_freq": 2, "index_skip_topk_offset": 1}
    with pytest.raises(ConfigError, match=re.escape("output layer 2 (own indexer by that rule) from source layer 1")):
        _stack_plan(tmp_path / "s", schedule)
    assert _stack_plan(tmp_path / "l", {**schedule, "indexer_types": ["full", "shared", "full"]})


@pytest.mark.parametrize(
    ("settings", "key", "expected"),
    [
        # the Hub configs' intervals (no per-layer list): written out as the sources' kinds
        ({"model_type": "afmoe", "global_attn_every_n_layers": 2}, "layer_types", ["S", "F", "F", "S"]),
        ({"model_type": "exaone4", "sliding_window_pattern": 2}, "layer_types", ["S", "F", "F", "S"]),
        ({"model_type": "smollm3", "no_rope_layer_interval": 2}, "no_rope_layers", [1, 0, 0, 1]),
    ],
)
def test_more_hub_intervals_are_written_out(tmp_path, settings, key, expected):
    """AFMoE, EXAONE 4 and SmolLM3 configs without the per-layer list their class derives."""
    out = _stack_plan(tmp_path, {"num_hidden_layers": 3, **settings}).model_config[key]
    short = {"sliding_attention": "S", "full_attention": "F"}
    assert [short.get(kind, kind) for kind in out] == expected


def test_hash_layers_and_dots1_windows_keep_each_layers_kind(tmp_path):
    """DeepSeek V4's `num_hash_layers` and dots1's `max_window_layers` (no use_sliding_window
    switch) without per-layer lists: a stack that would change a layer's kind is refused."""
    v4 = {"model_type": "deepseek_v4", "num_hidden_layers": 3, "num_hash_layers": 2}
    with pytest.raises(ConfigError, match=re.escape("output layer 2 (MoE by that rule) from source layer 1")):
        _stack_plan(tmp_path / "v4", v4)
    assert _stack_plan(tmp_path / "v4l", {**v4, "mlp_layer_types": ["hash_moe", "hash_moe", "moe"]})
    dots = {"model_type": "dots1", "num_hidden_layers": 3, "max_window_layers": 2, "sliding_window": 8}
    with pytest.raises(ConfigError, match=re.escape("output layer 2 (sliding attention by that rule)")):
        _stack_plan(tmp_path / "dots", dots)


def test_gemma4_stacks_end_with_a_full_attention_layer(tmp_path):
    """transformers makes a Gemma 4's last layer full attention whatever layer_types says."""
    gemma4 = {"model_type": "gemma4_text", "num_hidden_layers": 3, "hidden_size_per_layer_input": 0}
    gemma4["layer_types"] = ["sliding_attention", "full_attention", "full_attention"]
    with pytest.raises(ConfigError, match=re.escape("ends with source layer 0 (sliding_attention in layer_types)")):
        _stack_plan(tmp_path / "a", gemma4, ((0, 3), (0, 1)))
    assert _stack_plan(tmp_path / "b", gemma4, ((0, 2), (1, 3))).model_config["layer_types"][-1] == "full_attention"


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"model_type": "vaultgemma"}, "this vaultgemma config.json has no layer_types"),
        ({"model_type": "hy_v4"}, "this hy_v4 config.json has no indexer_types"),
        ({"model_type": "laguna"}, "this laguna config.json has no mlp_layer_types"),
        ({"model_type": "laguna", "first_k_dense_replace": 1}, None),  # the rule keeps layer 0 at 0
        ({"model_type": "vaultgemma", "layer_types": ["sliding_attention", "full_attention"] * 2}, None),
        ({"model_type": "zaya"}, "a zaya model has layers whose tensors differ by position"),
    ],
)
def test_families_with_fixed_layer_patterns_need_their_lists_to_slice(tmp_path, settings, refused):
    """Families whose transformers config derives per-layer kinds by a fixed pattern (no key)
    when config.json lacks the list: a stack is refused without the list, merges with it."""
    config = {"num_hidden_layers": 3, **settings}
    if "layer_types" in config:
        config["layer_types"] = config["layer_types"][:3]
    if refused is None:
        assert _stack_plan(tmp_path, config).model_config["num_hidden_layers"] == 4
    else:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            _stack_plan(tmp_path, config)
