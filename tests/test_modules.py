"""Multi-module models on hand-made checkpoints: module resolution, `modules:` configs, the
output config's per-layer lists, layer-count checks and the accounting of every input tensor."""

import json

import pytest
import torch
from checkpoints import random_tensors, write_checkpoint
from helpers import plan_of, run_cli
from safetensors.torch import load_file

from mergefast import methods
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


def test_positional_layer_rules_refuse_a_reordering_slice(tmp_path):
    shapes = {"model.embed_tokens.weight": (16, 8), **{f"model.layers.{i}.w": (8, 8) for i in range(3)}}
    config = {"model_type": "deepseek_v3", "num_hidden_layers": 3, "first_k_dense_replace": 1}
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)
    with pytest.raises(ConfigError, match="first_k_dense_replace is 1: it gives layers a kind by position"):
        plan_of(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {model}, layer_range: [1, 3]}}]\n")


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
