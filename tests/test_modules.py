"""Multi-module models on hand-made checkpoints: module resolution, `modules:` configs, the
output config's per-layer lists, layer-count checks and the accounting of every input tensor."""

import json
import re

import pytest
import torch
from checkpoints import random_tensors, write_checkpoint
from helpers import plan_of, run_cli
from safetensors.torch import load_file

from mergefast import methods
from mergefast.architecture import resolve_architecture
from mergefast.errors import ConfigError, ModelError
from mergefast.report import format_plan

VL_CONFIG = {
    "model_type": "qwen2_vl",
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "tie_word_embeddings": False,
    "text_config": {"num_hidden_layers": 3, "layer_types": ["full", "sliding", "full"], "vocab_size": 16},
    "vision_config": {"depth": 4, "fullatt_block_indexes": [1, 3]},
}


def vl_shapes(text_layers=3, vision_layers=4):
    """A Qwen2-VL-shaped checkpoint whose vision stack is deeper than its text stack."""
    shapes = {"model.embed_tokens.weight": (16, 8)}
    shapes.update({f"model.layers.{i}.mlp.weight": (8, 8) for i in range(text_layers)})
    shapes.update({"model.norm.weight": (8,), "lm_head.weight": (16, 8), "visual.patch_embed.proj.weight": (8, 4)})
    shapes.update({f"visual.blocks.{i}.attn.weight": (8, 8) for i in range(vision_layers)})
    shapes.update({"visual.merger.mlp.0.weight": (8, 8), "visual.merger.mlp.2.weight": (8, 8)})
    return shapes


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    """base, ft-a and ft-b of the Qwen2-VL-shaped checkpoint, float32."""
    root = tmp_path_factory.mktemp("vl")
    return {
        name: write_checkpoint(root / name, random_tensors(vl_shapes(), torch.float32, seed), config=VL_CONFIG)
        for seed, name in enumerate(("base", "ft-a", "ft-b"))
    }


def merge(text, tmp_path):
    config = tmp_path / "cfg.yml"
    config.write_text(text)
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp_path / "out"


def test_models_merge_every_module_and_every_vision_block(vl, tmp_path):
    out = merge(
        f"merge_method: linear\nmodels:\n  - model: {vl['ft-a']}\n  - model: {vl['ft-b']}\n"
        "parameters: {weight: 0.5}\n",
        tmp_path,
    )
    merged = load_file(out / "model.safetensors")
    assert set(merged) == set(vl_shapes())  # visual.blocks.3 included: 4 vision blocks, 3 text layers
    a, b = (load_file(vl[k] / "model.safetensors")["visual.blocks.3.attn.weight"] for k in ("ft-a", "ft-b"))
    assert torch.allclose(merged["visual.blocks.3.attn.weight"], (a + b) / 2)


def test_slices_slice_the_text_stack_and_carry_the_vision_tower(vl, tmp_path):
    text = (
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {vl['base']}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {vl['ft-a']}, layer_range: [1, 3]}}]\n"
    )
    plan = plan_of(text)
    report = format_plan(plan)
    assert "text_decoder (model.layers.N): 3 -> 4 layers, sliced" in report
    assert (
        "vision_tower (visual.blocks.N): 4 layers, carried through passthrough from the models of slices[0]" in report
    )
    assert f"left out: {vl['ft-a']}: 1 tensor(s) left out: layers of text_decoder that no slice takes" in report
    out = merge(text, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["text_config"]["layer_types"] == ["full", "sliding", "sliding", "full"]
    assert config["vision_config"] == VL_CONFIG["vision_config"]
    merged, base = load_file(out / "model.safetensors"), load_file(vl["base"] / "model.safetensors")
    ft_a = load_file(vl["ft-a"] / "model.safetensors")
    assert torch.equal(merged["model.layers.3.mlp.weight"], ft_a["model.layers.2.mlp.weight"])
    assert torch.equal(merged["visual.blocks.3.attn.weight"], base["visual.blocks.3.attn.weight"])


def test_modules_syntax_slices_the_vision_tower_and_reindexes_its_lists(vl, tmp_path):
    out = merge(
        f"""merge_method: passthrough
modules:
  text_decoder:
    models: [{{model: {vl["base"]}}}]
  vision_tower:
    slices:
      - sources: [{{model: {vl["base"]}, layer_range: [0, 2]}}]
      - sources: [{{model: {vl["ft-a"]}, layer_range: [1, 4]}}]
  multi_modal_projector:
    slices: [{{sources: [{{model: {vl["ft-b"]}, layer_range: [0, 0]}}]}}]
""",
        tmp_path,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["depth"] == 5
    assert config["vision_config"]["fullatt_block_indexes"] == [1, 2, 4]  # sources 0, 1, 1, 2, 3
    assert config["text_config"] == VL_CONFIG["text_config"]
    merged = load_file(out / "model.safetensors")
    ft_b = load_file(vl["ft-b"] / "model.safetensors")
    assert torch.equal(merged["visual.merger.mlp.2.weight"], ft_b["visual.merger.mlp.2.weight"])
    assert "visual.blocks.4.attn.weight" in merged


def test_module_parameters_rank_between_slice_and_top_level(vl):
    plan = plan_of(f"""merge_method: linear
modules:
  text_decoder:
    models: [{{model: {vl["ft-a"]}}}, {{model: {vl["ft-b"]}, parameters: {{weight: 0.9}}}}]
    parameters: {{weight: 0.25}}
  vision_tower:
    models: [{{model: {vl["ft-a"]}}}, {{model: {vl["ft-b"]}}}]
parameters: {{weight: 0.5}}
""")
    jobs = {j.name: j for j in plan.jobs}
    assert [p["weight"] for p in jobs["model.layers.1.mlp.weight"].model_params] == [0.25, 0.9]
    assert [p["weight"] for p in jobs["visual.blocks.1.attn.weight"].model_params] == [0.5, 0.5]
    # the projector, not configured, comes from the text decoder's models and parameters
    assert [p["weight"] for p in jobs["visual.merger.mlp.0.weight"].model_params] == [0.25, 0.9]


def test_mergekit_normalised_default_module_form(family, tmp_path):
    text = f"""merge_method: passthrough
modules:
  default:
    slices:
      - sources: [{{model: {family["ft-a"]}, layer_range: [0, 3]}}]
      - sources: [{{model: {family["ft-b"]}, layer_range: [2, 4]}}]
"""
    out = merge(text, tmp_path)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "modules:\n  vision:\n    models: [{model: BASE}]\n",
            "modules.vision: BASE has no such module (did you mean 'vision_tower'?)",
        ),
        (
            "modules:\n  text_decoder:\n    models: [{model: BASE}]\n    slices: []\n",
            "exactly one of `models` or `slices`",
        ),
        ("slices:\n  - sources: [{model: BASE, layer_range: [0, 0]}]\n", "[0, 0] selects no layer of text_decoder"),
    ],
)
def test_module_config_errors(vl, body, message):
    text = "merge_method: passthrough\n" + body.replace("BASE", str(vl["base"]))
    with pytest.raises(ConfigError) as info:
        plan_of(text)
    assert message.replace("BASE", str(vl["base"])) in str(info.value)


def test_two_stacks_without_a_text_decoder_need_modules(tmp_path):
    shapes = {
        "shared.weight": (16, 8),
        "encoder.block.0.w": (8, 8),
        "encoder.block.1.w": (8, 8),
        "decoder.block.0.w": (8, 8),
        "encoder.final_layer_norm.weight": (8,),
    }
    config = {"model_type": "t5", "num_layers": 2, "num_decoder_layers": 1}
    model = write_checkpoint(tmp_path / "t5", random_tensors(shapes, torch.float32), config=config)
    with pytest.raises(ConfigError, match="none of them is a text decoder, so a plain `slices:` is ambiguous"):
        plan_of(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {model}, layer_range: [0, 1]}}]\n")


@pytest.mark.parametrize("count", [5, 10**12, -1])
def test_layer_counts_in_config_json_must_match_the_tensors(tmp_path, count):
    config = json.loads(json.dumps(VL_CONFIG))
    config["vision_config"]["depth"] = count
    model = write_checkpoint(tmp_path / "m", random_tensors(vl_shapes(), torch.float32), config=config)
    with pytest.raises(ModelError, match="vision_config.depth is"):
        plan_of(f"merge_method: linear\nmodels:\n  - model: {model}\n")


def test_a_tensor_the_output_has_no_place_for_is_an_error(vl, tmp_path):
    shapes = {**vl_shapes(), "model.rotary.extra": (4,)}
    odd = write_checkpoint(tmp_path / "odd", random_tensors(shapes, torch.float32), config=VL_CONFIG)
    with pytest.raises(ConfigError, match=r"1 input tensor\(s\) would not reach the output: model.rotary.extra"):
        plan_of(
            f"merge_method: linear\nmodels:\n  - model: {vl['base']}\n  - model: {odd}\nparameters: {{weight: 1}}\n"
        )


def test_inference_finds_every_numbered_stack(tmp_path):
    """An unknown model type whose vision stack has more tensors than its text stack."""
    shapes = {"emb.weight": (16, 8), **{f"text.layers.{i}.w": (8, 8) for i in range(2)}}
    shapes.update({f"vision.blocks.{i}.{p}": (8, 8) for i in range(5) for p in ("a", "b")})
    shapes.update({"proj.mlp.0.weight": (8, 8), "proj.mlp.2.weight": (8, 8)})  # an nn.Sequential, not a stack
    config = {"model_type": "brand_new_vlm", "text_config": {"num_hidden_layers": 2}}
    models = [
        write_checkpoint(tmp_path / n, random_tensors(shapes, torch.float32, s), config=config)
        for s, n in enumerate("ab")
    ]
    plan = plan_of(
        f"merge_method: linear\nmodels:\n  - model: {models[0]}\n  - model: {models[1]}\nparameters: {{weight: 1}}\n"
    )
    assert {j.name for j in plan.jobs} == set(shapes)
    assert [m.name for m in plan.modules] == ["default", "vision.blocks"]
    sliced = plan_of(
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {models[0]}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {models[0]}, layer_range: [1, 2]}}]\n"
    )
    assert sliced.model_config["text_config"]["num_hidden_layers"] == 3
    assert "vision.blocks.4.b" in {j.name for j in sliced.jobs}


STACKED = ((0, 2), (1, 3))  # layers 0, 1, 1, 2 of a 3-layer model
REPEATED = ((0, 2), (0, 2))  # layers 0, 1, 0, 1
QWEN_SLIDING = {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 2}


def _sliced_plan(tmp_path, config: dict, ranges):
    """The plan of a passthrough slice stack of `ranges` over a 3-layer model with `config`."""
    shapes = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(3)}}
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)
    slices = "".join(f"  - sources: [{{model: {model}, layer_range: [{a}, {b}]}}]\n" for a, b in ranges)
    return plan_of(f"merge_method: passthrough\nslices:\n{slices}")


@pytest.mark.parametrize(
    ("settings", "ranges", "refused"),
    [
        ({"model_type": "deepseek_v3", "first_k_dense_replace": 1}, ((1, 3),), "output layer 0 (dense by that rule)"),
        ({"model_type": "deepseek_v3", "first_k_dense_replace": 1}, STACKED, None),  # dense layer 0 stays at 0
        ({"model_type": "qwen2_moe", "decoder_sparse_step": 2}, STACKED, "output layer 2 (dense"),
        ({"model_type": "qwen2_moe", "decoder_sparse_step": 2}, REPEATED, None),
        # ERNIE 4.5 as transformers writes it (the end index made the last layer's): layer 3 is past it
        (
            {"model_type": "ernie4_5_moe", "moe_layer_start_index": 1, "moe_layer_end_index": 2},
            STACKED,
            "output layer 3 (dense by that rule) from source layer 2 (MoE)",
        ),
        ({"model_type": "ernie4_5_moe", "moe_layer_start_index": 1, "moe_layer_end_index": -1}, STACKED, None),
        ({"model_type": "jamba", "attn_layer_period": 2, "attn_layer_offset": 1}, STACKED, "layer 2 (Mamba"),
        ({"model_type": "jamba", "attn_layer_period": 2, "attn_layer_offset": 1}, REPEATED, None),
        ({"model_type": "afmoe", "num_dense_layers": 2}, STACKED, "layer 2 (MoE by that rule) from source layer 1"),
        # Qwen2 without layer_types: layers from max_window_layers on slide, if use_sliding_window
        ({"model_type": "qwen2", **QWEN_SLIDING}, STACKED, "layer 2 (sliding attention by that rule)"),
        ({"model_type": "qwen2", **QWEN_SLIDING, "use_sliding_window": False}, STACKED, None),
        ({"model_type": "qwen2", **QWEN_SLIDING, "layer_types": ["full_attention"] * 3}, STACKED, None),
        # the last layer of a truncated Gemma 3n would reuse KV that its source computed itself
        ({"model_type": "gemma3n_text", "num_kv_shared_layers": 1}, ((0, 2),), "layer 1 (shared KV"),
        ({"model_type": "qwen2_moe", "decoder_sparse_step": 0}, STACKED, "decoder_sparse_step is 0: not a layer rule"),
    ],
)
def test_positional_layer_rules_keep_each_layers_kind(tmp_path, settings, ranges, refused):
    """A slice stack merges where every output layer keeps its source layer's kind under the
    config's positional rules, and is refused where one would change."""
    config = {"num_hidden_layers": 3, **settings}
    if refused is None:
        assert _sliced_plan(tmp_path, config, ranges).model_config["num_hidden_layers"] == 2 * len(ranges)
    else:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            _sliced_plan(tmp_path, config, ranges)


def test_llama4_lists_follow_their_layers(tmp_path):
    """Llama 4's `moe_layers` (layer indices) is re-indexed; `no_rope_layers`, derived from
    `no_rope_layer_interval` when config.json has it empty, is written out per layer."""
    config = {"model_type": "llama4_text", "num_hidden_layers": 3, "interleave_moe_layer_step": 2}
    config.update(moe_layers=[1], no_rope_layers=[], no_rope_layer_interval=2)
    out = _sliced_plan(tmp_path, config, STACKED).model_config
    assert out["moe_layers"] == [1, 2]
    assert out["no_rope_layers"] == [1, 0, 0, 1]  # source layers 0, 1, 1, 2 of [1, 0, 1]


def test_per_layer_lists_come_from_each_layers_source_model(tmp_path):
    shapes = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(2)}}
    models = []
    for name, kinds in (("a", ["x0", "x1"]), ("b", ["y0", "y1"])):
        config = {"model_type": "qwen2", "num_hidden_layers": 2, "layer_types": kinds, "mlp_only_layers": [1]}
        models.append(write_checkpoint(tmp_path / name, random_tensors(shapes, torch.float32), config=config))
    plan = plan_of(
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {models[0]}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {models[1]}, layer_range: [1, 2]}}]\n"
    )
    assert plan.model_config["layer_types"] == ["x0", "x1", "y1"]
    assert plan.model_config["mlp_only_layers"] == [1, 2]


def _two_model_stack(tmp_path, donor_config: dict, other_config: dict):
    """The plan of a passthrough stack of layers 0, 1 of model `a` (the donor) and layer 1 of
    model `b`, both 2-layer models with the given config.json settings; and b's folder."""
    shapes = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(2)}}
    models = []
    for name, settings in (("a", donor_config), ("b", other_config)):
        config = {"model_type": "qwen2", "num_hidden_layers": 2, **settings}
        models.append(write_checkpoint(tmp_path / name, random_tensors(shapes, torch.float32), config=config))
    text = (
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {models[0]}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {models[1]}, layer_range: [1, 2]}}]\n"
    )
    return (lambda: plan_of(text)), models[1]


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({}, "layer_types is a per-layer list of the output"),  # the donor has it, b has none
        ({"layer_types": ["x"] * 2, "decoder_sparse_step": "2"}, "decoder_sparse_step is '2': not a layer rule"),
    ],
)
def test_a_sources_bad_layer_setting_is_named_by_its_own_config(tmp_path, other, message):
    """An error about a source layer's setting names that source's config.json (not the donor's)."""
    plan, other_folder = _two_model_stack(tmp_path, {"layer_types": ["x"] * 2, "decoder_sparse_step": 1}, other)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        plan()
    assert str(other_folder / "config.json") in str(caught.value)


def test_merged_slices_take_per_layer_entries_from_the_donor(tmp_path):
    """A slice merging several models takes each layer's entries from its source that is the
    output config's donor (the base_model), else its first source: a whole-model slice merge
    keeps the donor's layer_types, as the same `models:` merge and mergekit 0.1.5 do."""
    shapes = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(3)}}
    models = []
    for name, kinds in (("a", ["x0", "x1", "x2"]), ("b", ["y0", "y1", "y2"]), ("c", ["z0", "z1", "z2"])):
        config = {"model_type": "qwen2", "num_hidden_layers": 3, "layer_types": kinds}
        models.append(write_checkpoint(tmp_path / name, random_tensors(shapes, torch.float32), config=config))
    a, b, c = models
    whole = "  - sources: [{{model: {0}, layer_range: [0, 3]}}, {{model: {1}, layer_range: [0, 3]}}]\n"
    slerp = f"merge_method: slerp\nbase_model: {b}\nparameters: {{t: 0.5}}\nslices:\n" + whole.format(a, b)
    assert plan_of(slerp).model_config["layer_types"] == ["y0", "y1", "y2"]
    models_form = (
        f"merge_method: slerp\nbase_model: {b}\nparameters: {{t: 0.5}}\nmodels: [{{model: {a}}}, {{model: {b}}}]\n"
    )
    assert plan_of(models_form).model_config["layer_types"] == ["y0", "y1", "y2"]
    # no base: the donor is the first model named; a slice without it takes its first source
    linear = (
        "merge_method: linear\nparameters: {weight: 0.5}\nslices:\n"
        f"  - sources: [{{model: {b}, layer_range: [0, 1]}}, {{model: {a}, layer_range: [1, 2]}}]\n"
        f"  - sources: [{{model: {c}, layer_range: [2, 3]}}, {{model: {a}, layer_range: [0, 1]}}]\n"
    )
    assert plan_of(linear).model_config["layer_types"] == ["y0", "z2"]


def test_fused_expert_tensors_merge_per_stored_tensor(tmp_path):
    """MoE experts stored as one [experts, out, in] tensor: TIES selects over the whole tensor."""
    shapes = {
        "model.embed_tokens.weight": (16, 8),
        "model.layers.0.mlp.experts.gate_up_proj": (4, 16, 8),
        "model.layers.0.mlp.router.weight": (4, 8),
    }
    config = {"model_type": "qwen3_moe", "num_hidden_layers": 1}
    folders = {
        n: write_checkpoint(tmp_path / n, random_tensors(shapes, torch.float32, s), config=config)
        for s, n in enumerate(("base", "a", "b"))
    }
    out = merge(
        f"merge_method: ties\nbase_model: {folders['base']}\nmodels:\n"
        f"  - model: {folders['a']}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
        f"  - model: {folders['b']}\n    parameters: {{weight: 0.4, density: 0.3}}\n",
        tmp_path,
    )
    merged = load_file(out / "model.safetensors")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    load = lambda k: load_file(folders[k] / "model.safetensors")[name]  # noqa: E731
    expected = methods.ties(
        load("base"), [load("a"), load("b")], [0.6, 0.4], [0.5, 0.3], normalize=True, out_dtype=torch.float32
    )
    assert merged[name].shape == (4, 16, 8) and torch.equal(merged[name], expected)


def test_layer_types_a_config_leaves_to_position_are_written_out(tmp_path):
    """An older Gemma 2 config.json has no layer_types (odd layers are full attention by
    position): a slice stack keeps each layer's own kind."""
    shapes = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(3)}}
    config = {"model_type": "gemma2", "num_hidden_layers": 3}
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)
    plan = plan_of(
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: {model}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {model}, layer_range: [1, 3]}}]\n"
    )
    assert plan.model_config["layer_types"] == [
        "sliding_attention",
        "full_attention",
        "full_attention",
        "sliding_attention",
    ]


def _qwen3_vl(tmp_path) -> dict:
    """base and ft-a of a Qwen3-VL-shaped checkpoint: deepstack mergers 0 and 1 serve vision
    layers 1 and 3."""
    config = json.loads(json.dumps(VL_CONFIG))
    config["model_type"] = "qwen3_vl"
    config["vision_config"] = {"depth": 4, "deepstack_visual_indexes": [1, 3]}
    shapes = vl_shapes()
    shapes.update({f"model.visual.deepstack_merger_list.{i}.weight": (8, 8) for i in range(2)})
    return {
        n: write_checkpoint(tmp_path / n, random_tensors(shapes, torch.float32, seed), config=config)
        for seed, n in enumerate(("base", "ft-a"))
    }


@pytest.mark.parametrize(
    ("ranges", "listed"),
    [(((0, 2), (2, 4)), [1, 3]), (((0, 2), (3, 4)), [1, 2]), (((0, 2), (1, 4)), None), (((0, 3),), None)],
)
def test_deepstack_layers_keep_their_mergers(tmp_path, ranges, listed):
    """Qwen3-VL's deepstack_visual_indexes pairs, in order, with the projector's mergers: a
    vision slice stack may move or drop other layers, not repeat, drop or reorder listed ones."""
    models = _qwen3_vl(tmp_path)
    slices = "".join(
        f"      - sources: [{{model: {models['ft-a' if k else 'base']}, layer_range: [{a}, {b}]}}]\n"
        for k, (a, b) in enumerate(ranges)
    )
    text = f"merge_method: passthrough\nmodules:\n  text_decoder:\n    models: [{{model: {models['base']}}}]\n"
    text += f"  vision_tower:\n    slices:\n{slices}"
    if listed is None:
        with pytest.raises(ConfigError, match="deepstack mergers"):
            plan_of(text)
    else:
        assert plan_of(text).model_config["vision_config"]["deepstack_visual_indexes"] == listed


def test_cross_attention_layers_follow_their_layers(tmp_path):
    """Mllama's text_config.cross_attention_layers lists layer indices: re-indexed (a list of
    the layer count's length that is never per layer, eos_token_id, stays)."""
    text_config = {"num_hidden_layers": 3, "cross_attention_layers": [1], "eos_token_id": [5, 6, 7]}
    config = {"model_type": "mllama", "text_config": text_config}
    shapes = {f"language_model.model.layers.{i}.w": (8, 8) for i in range(3)}
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)
    text = "".join(f"  - sources: [{{model: {model}, layer_range: [{a}, {b}]}}]\n" for a, b in STACKED)
    plan = plan_of(f"merge_method: passthrough\nslices:\n{text}")
    assert plan.model_config["text_config"]["cross_attention_layers"] == [1, 2]
    assert plan.model_config["text_config"]["eos_token_id"] == [5, 6, 7]


def _linear_plan(tmp_path, shapes: dict, config: dict):
    """The plan of a linear merge of two random checkpoints of `shapes` and `config`."""
    a, b = (
        write_checkpoint(tmp_path / n, random_tensors(shapes, torch.float32, s), config=config)
        for s, n in [(0, "a"), (1, "b")]
    )
    return plan_of(f"merge_method: linear\nparameters: {{weight: 1}}\nmodels: [{{model: {a}}}, {{model: {b}}}]\n")


def test_an_unknown_encoder_decoder_merges_without_a_text_count(tmp_path):
    """Two stacks, no count key mergefast knows (BART writes encoder_layers, decoder_layers): a
    `models:` merge plans every tensor."""
    shapes = {"model.shared.weight": (16, 8), "final_logits_bias": (1, 16)}
    shapes.update({f"model.{part}.layers.{i}.w": (8, 8) for part in ("encoder", "decoder") for i in range(2)})
    config = {"model_type": "brand_new_encoder_decoder", "encoder_layers": 2, "decoder_layers": 2}
    plan = _linear_plan(tmp_path, shapes, config)
    assert {j.name for j in plan.jobs} == set(shapes)


@pytest.mark.parametrize("tied", [True, False])
def test_heads_not_called_lm_head(tmp_path, tied):
    """Whisper's head is proj_out: an untied checkpoint holds it (merged once), a tied one
    leaves it out; the final layer norms are post-weights."""
    shapes = {"model.decoder.embed_tokens.weight": (16, 8), "model.encoder.conv1.weight": (8, 8)}
    shapes.update({f"model.{part}.layers.{i}.w": (8, 8) for part in ("encoder", "decoder") for i in range(2)})
    shapes.update({f"model.{part}.layer_norm.weight": (8,) for part in ("encoder", "decoder")})
    shapes.update({} if tied else {"proj_out.weight": (16, 8)})
    config = {"model_type": "whisper", "encoder_layers": 2, "decoder_layers": 2, "tie_word_embeddings": tied}
    plan = _linear_plan(tmp_path, shapes, config)
    assert sorted(j.name for j in plan.jobs) == sorted(shapes)
    arch = next(iter(plan.models.values())).arch
    assert arch.tied_heads == {"proj_out.weight": "model.decoder.embed_tokens.weight"}
    assert set(arch.post_weights) >= {"model.encoder.layer_norm.weight", "model.decoder.layer_norm.weight"}


@pytest.mark.parametrize(
    ("model_type", "name", "post"),
    [
        ("lfm2", "model.embedding_norm.weight", True),  # LFM2 applies it after the layers
        ("modernbert", "model.embeddings.norm.weight", False),  # an input norm
        ("modernbert", "head.dense.weight", True),
        ("distilbert", "vocab_projector.weight", True),
        ("llama", "model.norm.weight", True),
    ],
)
def test_loose_weights_after_the_layers(model_type, name, post):
    stack = "distilbert.transformer.layer." if model_type == "distilbert" else "model.layers."
    names = ["model.embed_tokens.weight", name, *(f"{stack}{i}.w" for i in range(2))]
    arch = resolve_architecture(names, {"model_type": model_type, "num_hidden_layers": 2, "n_layers": 2})
    assert (name in arch.post_weights) is post


@pytest.mark.parametrize(
    ("model_type", "text", "vision", "projector"),
    [
        ("idefics3", "model.text_model.layers.", "model.vision_model.encoder.layers.", "model.connector.proj.weight"),
        ("internvl", "language_model.model.layers.", "vision_tower.encoder.layer.", "multi_modal_projector.w"),
        ("glm4v", "model.language_model.layers.", "model.visual.blocks.", "model.visual.merger.proj.weight"),
    ],
)
def test_vision_language_families_have_mergekits_module_names(model_type, text, vision, projector):
    names = [*(f"{text}{i}.w" for i in range(3)), *(f"{vision}{i}.w" for i in range(2)), projector, "lm_head.weight"]
    config = {"model_type": model_type, "text_config": {"num_hidden_layers": 3}}
    config["vision_config"] = {"depth" if model_type == "glm4v" else "num_hidden_layers": 2, "image_size": [16, 16]}
    arch = resolve_architecture(names, config)
    assert [(m.name, m.num_layers) for m in arch.modules] == [
        ("text_decoder", 3),
        ("vision_tower", 2),
        ("multi_modal_projector", 0),
    ]
    assert arch.module("multi_modal_projector").pre_weights == (projector,)
