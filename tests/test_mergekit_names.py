"""Parameter filters match the names mergekit 0.1.5 gives tensors (architecture/mergekit_names.py):
transformers 5's fused-expert names for mixture-of-experts checkpoints stored one tensor per
expert, `transformer.`-prefixed names for GPT-2's original checkpoints."""

import pytest
import torch
from checkpoints import random_tensors, write_checkpoint
from helpers import plan_of

from mergefast.architecture.mergekit_names import RULES, mergekit_name

# Stored names of each family's layouts: per-expert weights, routers, and tensors no rule renames.
STORED = {
    "block_sparse_moe": [
        "model.layers.3.block_sparse_moe.gate.weight",
        "model.layers.3.block_sparse_moe.experts.0.w1.weight",
        "model.layers.3.block_sparse_moe.experts.7.w2.weight",
        "model.layers.3.block_sparse_moe.experts.12.w3.weight",
    ],
    "mlp": [
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.5.gate_proj.weight",
        "model.layers.0.mlp.experts.5.up_proj.weight",
        "model.layers.0.mlp.experts.63.down_proj.weight",
        "model.layers.0.mlp.shared_expert.up_proj.weight",
        "model.layers.0.mlp.moe_statics.e_score_correction_bias",
        "model.layers.0.mlp.experts.gate_up_proj",
    ],
    "feed_forward": [
        "model.layers.1.feed_forward.router.weight",
        "model.layers.1.feed_forward.experts.2.gate_proj.weight",
        "model.layers.1.feed_forward.experts.2.up_proj.weight",
        "model.layers.1.feed_forward.experts.2.down_proj.weight",
        "model.layers.1.feed_forward.experts.2.w1.weight",
        "model.layers.1.feed_forward.experts.2.w2.weight",
        "model.layers.1.feed_forward.experts.2.w3.weight",
    ],
    "granite": [
        "model.layers.0.block_sparse_moe.input_linear.weight",
        "model.layers.0.block_sparse_moe.output_linear.weight",
        "model.layers.0.block_sparse_moe.router.layer.weight",
    ],
    "plain": ["model.embed_tokens.weight", "model.layers.2.self_attn.q_proj.weight", "model.norm.weight"],
}
MOE_TYPES = sorted(set(RULES) - {"gpt2"})


def _transformers_name(model_type: str, name: str) -> str:
    """`name` through transformers' own checkpoint conversion mapping for `model_type`."""
    mapping = pytest.importorskip("transformers.conversion_mapping")
    for transform in mapping.get_checkpoint_conversion_mapping(model_type) or ():
        name = transform.rename_source_key(name)[0]
    return name


@pytest.mark.parametrize("model_type", MOE_TYPES)
def test_moe_names_are_transformers_conversions(model_type):
    """Every rule table gives the names transformers' conversion mapping gives (mergekit's
    names for these families are the converted model's)."""
    for name in [n for names in STORED.values() for n in names]:
        assert mergekit_name(model_type, name) == _transformers_name(model_type, name), name


def test_gpt2_names_take_the_transformer_prefix():
    assert mergekit_name("gpt2", "h.1.attn.c_attn.weight") == "transformer.h.1.attn.c_attn.weight"
    assert mergekit_name("gpt2", "wte.weight") == "transformer.wte.weight"
    assert mergekit_name("gpt2", "transformer.ln_f.bias") == "transformer.ln_f.bias"
    assert mergekit_name("gpt2", "lm_head.weight") == "lm_head.weight"
    assert mergekit_name("llama", "h.1.attn.c_attn.weight") == "h.1.attn.c_attn.weight"
    assert mergekit_name(None, "model.norm.weight") == "model.norm.weight"


def _mixtral(tmp_path, name: str, seed: int):
    shapes = {"model.embed_tokens.weight": (16, 8), "model.norm.weight": (8,), "lm_head.weight": (16, 8)}
    for i in range(2):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = (8, 8)
        shapes[f"model.layers.{i}.block_sparse_moe.gate.weight"] = (2, 8)
        for e in range(2):
            for w, shape in (("w1", (4, 8)), ("w2", (8, 4)), ("w3", (4, 8))):
                shapes[f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"] = shape
    config = {"model_type": "mixtral", "num_hidden_layers": 2, "num_local_experts": 2}
    return write_checkpoint(tmp_path / name, random_tensors(shapes, torch.float32, seed=seed), config=config)


def test_filters_match_mixtral_experts_by_mergekit_names(tmp_path):
    """`mlp` names the router and every expert of a Mixtral checkpoint stored per expert, as
    in mergekit (`block_sparse_moe` is the stored name only); `up_proj` names both w1 and w3
    (halves of mergekit's fused gate_up_proj), not w2."""
    a, b = _mixtral(tmp_path, "a", 1), _mixtral(tmp_path, "b", 2)
    weight = (
        "[{filter: up_proj, value: 0.9}, {filter: mlp, value: 0.7}, {filter: block_sparse_moe, value: 0.1},"
        " {value: 0.5}]"
    )
    plan = plan_of(
        f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: {weight}}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.5}}\n"
    )
    got = {j.name: j.model_params[0]["weight"] for j in plan.jobs}
    assert got["model.layers.1.block_sparse_moe.gate.weight"] == 0.7
    assert got["model.layers.1.block_sparse_moe.experts.0.w1.weight"] == 0.9
    assert got["model.layers.1.block_sparse_moe.experts.1.w3.weight"] == 0.9
    assert got["model.layers.1.block_sparse_moe.experts.1.w2.weight"] == 0.7
    assert got["model.layers.1.self_attn.q_proj.weight"] == 0.5


def test_filters_match_bare_gpt2_by_mergekit_names(tmp_path):
    """An original GPT-2 checkpoint (`h.1...`, no `transformer.` prefix) matches mergekit's
    `transformer.h.1` filter, for per-model and global parameters alike."""
    shapes = {"wte.weight": (16, 8), "wpe.weight": (8, 8), "ln_f.weight": (8,), "ln_f.bias": (8,)}
    for i in range(2):
        shapes |= {f"h.{i}.attn.c_attn.weight": (8, 24), f"h.{i}.ln_1.weight": (8,), f"h.{i}.mlp.c_fc.weight": (8, 32)}
    config = {"model_type": "gpt2", "n_layer": 2, "tie_word_embeddings": True}
    models = [
        write_checkpoint(tmp_path / n, random_tensors(shapes, torch.float32, seed=s), config=config)
        for n, s in (("a", 1), ("b", 2))
    ]
    t = "[{filter: transformer.h.1, value: 0.2}, {value: 0.6}]"
    plan = plan_of(
        f"merge_method: slerp\nbase_model: {models[0]}\nmodels:\n  - model: {models[0]}\n"
        f"  - model: {models[1]}\nparameters: {{t: {t}}}\n"
    )
    got = {j.name: j.global_params["t"] for j in plan.jobs}
    assert got["h.1.attn.c_attn.weight"] == 0.2 and got["h.0.attn.c_attn.weight"] == 0.6
    assert got["wte.weight"] == 0.6


def test_a_tied_models_head_is_filtered_as_lm_head(tmp_path, family, tied_family):
    """mergekit's per-model filters see a tied model's head as lm_head.weight, not as the
    embedding standing in for it."""
    weight = "[{filter: lm_head, value: 0.25}, {value: 1.0}]"
    plan = plan_of(
        f"merge_method: linear\nmodels:\n  - model: {family['ft-a']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {tied_family['ft-b']}\n    parameters: {{weight: {weight}}}\n"
    )
    jobs = {j.name: j for j in plan.jobs}
    assert jobs["lm_head.weight"].sources[1].tensor == "model.embed_tokens.weight"
    assert jobs["lm_head.weight"].model_params[1]["weight"] == 0.25
    assert jobs["model.embed_tokens.weight"].model_params[1]["weight"] == 1.0
