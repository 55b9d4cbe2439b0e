"""architecture/layer_kinds.py: the layers a config builds alike must hold alike tensors, so a
layer that lacks a tensor, or holds one of another shape, is refused at plan time (a passthrough
of that model alone would merge it as it is: an output with a random weight, or one that does not
load)."""

from __future__ import annotations

import re

import pytest
import torch
from checkpoints import random_tensors, write_checkpoint
from helpers import plan_of

from mergefast.errors import ModelError

LLAMA = {"model_type": "llama", "num_hidden_layers": 3}
SUFFIXES = ("self_attn.q_proj.weight", "mlp.up_proj.weight")
SHAPES = {
    "model.embed_tokens.weight": (16, 8),
    **{f"model.layers.{i}.{s}": (8, 8) for i in range(3) for s in SUFFIXES},
    "model.norm.weight": (8,),
}


def _plan(tmp_path, config: dict, shapes: dict):
    """The plan of a passthrough of layers 0-2 of one model with `config` and tensors `shapes`."""
    model = write_checkpoint(tmp_path / "m", random_tensors(shapes, torch.float32), config=config)
    return plan_of(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {model}, layer_range: [0, 3]}}]\n")


def _without(name: str) -> dict:
    return {k: v for k, v in SHAPES.items() if k != name}


def test_a_layer_without_a_tensor_its_kind_has_is_refused(tmp_path):
    message = "layer 1 (model.layers.1.*) lacks mlp.up_proj.weight, which its other layers of that kind hold"
    with pytest.raises(ModelError, match=re.escape(message)):
        _plan(tmp_path, LLAMA, _without("model.layers.1.mlp.up_proj.weight"))


def test_a_renamed_tensor_is_refused(tmp_path):
    shapes = {**_without("model.layers.0.mlp.up_proj.weight"), "model.layers.0.mlp.up_proj.weight\u200b": (8, 8)}
    with pytest.raises(ModelError, match=re.escape("layer 0 (model.layers.0.*) lacks mlp.up_proj.weight")):
        _plan(tmp_path, LLAMA, shapes)


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 64), "[1, 64] in layer 2 (its other layers of that kind: [8, 8])")]
)
def test_a_tensor_of_another_shape_is_refused(tmp_path, shape, message):
    with pytest.raises(
        ModelError, match=re.escape(f"tensor model.layers.N.self_attn.q_proj.weight has shape {message}")
    ):
        _plan(tmp_path, LLAMA, {**SHAPES, "model.layers.2.self_attn.q_proj.weight": shape})


@pytest.mark.parametrize(
    "settings",
    [
        {"layer_types": ["full_attention", "linear_attention", "full_attention"]},  # a per-layer list
        {"mlp_only_layers": [1]},  # a list of layer indices
        {"first_k_dense_replace": 2},  # a positional rule: layers 0-1 dense, 2 MoE
        {"per_layer_config": {"1": {"head_dim": 4}}},  # a per-layer dict
    ],
)
def test_layers_the_config_tells_apart_may_differ(tmp_path, settings):
    """Layer 1 without mlp.up_proj and layer 2 with q_proj of another shape: each alone of
    its kind, or the kinds' tensors equal (first_k_dense_replace: layers 0 and 1 differ)."""
    shapes = {**_without("model.layers.1.mlp.up_proj.weight")}
    if "first_k_dense_replace" in settings:
        shapes = {**_without("model.layers.2.mlp.up_proj.weight"), "model.layers.2.mlp.experts.weight": (2, 8, 8)}
    _plan(tmp_path, {**LLAMA, **settings}, shapes)


def test_t5s_first_block_alone_holds_the_relative_attention_bias(tmp_path):
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    shapes = {
        "shared.weight": (16, 8),
        **{f"encoder.block.{i}.layer.0.SelfAttention.q.weight": (8, 8) for i in range(2)},
        bias: (32, 2),
        "encoder.final_layer_norm.weight": (8,),
    }
    model = write_checkpoint(
        tmp_path / "t5", random_tensors(shapes, torch.float32), config={"model_type": "t5", "num_layers": 2}
    )
    plan = plan_of(f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1}}\n")
    assert bias in {job.name for job in plan.jobs}


def test_a_modules_own_index_lists_tell_its_layers_apart():
    """Module.index_keys (a vision tower's `fullatt_block_indexes`) mark kinds like INDEX_LISTS."""
    from mergefast.architecture import Module, Stack
    from mergefast.architecture.layer_kinds import layer_kinds

    stack = Stack("visual.blocks.", {i: ("attn.qkv.weight",) for i in range(3)})
    module = Module("visual", stack, (), (), ("vision_config.depth",), ("vision_config.fullatt_block_indexes",))
    config = {"model_type": "qwen2_5_vl", "vision_config": {"depth": 3, "fullatt_block_indexes": [1]}}
    kinds = layer_kinds(config, module, "config.json")
    assert kinds[0] == kinds[2] != kinds[1]
