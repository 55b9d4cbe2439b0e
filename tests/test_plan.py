"""The planner: sources, layer mapping, gradient positions, parameters, from headers only."""

import pytest
import torch
from helpers import plan_of, write_family

from mergefast.errors import ConfigError


def jobs_by_name(plan):
    return {j.name: j for j in plan.jobs}


def test_models_appends_base_and_resolves_per_model_params(family):
    plan = plan_of(f"""
merge_method: ties
base_model: {family["base"]}
models:
  - model: {family["ft-a"]}
    parameters: {{weight: 0.7, density: [0.2, 0.8]}}
  - model: {family["ft-b"]}
    parameters: {{weight: 0.3}}
parameters: {{density: 0.5, normalize: false}}
""")
    jobs = jobs_by_name(plan)
    job = jobs["model.layers.3.mlp.up_proj.weight"]
    assert [s.model for s in job.sources] == [str(family[k]) for k in ("ft-a", "ft-b", "base")]
    assert job.base_index == 2
    assert job.model_params[0] == {"weight": 0.7, "density": pytest.approx(0.8)}  # t = 3/3
    assert job.model_params[1] == {"weight": 0.3, "density": 0.5}  # top-level density
    assert job.model_params[2] == {}  # the base takes no per-model parameters in TIES
    assert job.global_params["normalize"] is False and job.global_params["lambda"] == 1.0
    # layer 1 of 4: t = 1/3 -> 0.2 + (0.8 - 0.2) / 3 = 0.4
    assert jobs["model.layers.1.mlp.up_proj.weight"].model_params[0]["density"] == pytest.approx(0.4)
    # pre- and post-weights sit at t = 0
    assert jobs["model.embed_tokens.weight"].model_params[0]["density"] == pytest.approx(0.2)
    assert jobs["lm_head.weight"].model_params[0]["density"] == pytest.approx(0.2)
    names = [j.name for j in plan.jobs]
    assert names[0] == "model.embed_tokens.weight" and set(names[-2:]) == {"model.norm.weight", "lm_head.weight"}
    assert len(names) == 1 + 4 * 9 + 2
    assert plan.num_layers is None and plan.donor == str(family["base"])


def test_slices_renumber_layers_and_filters_use_the_right_names(family):
    plan = plan_of(f"""
merge_method: passthrough
slices:
  - sources:
      - model: {family["ft-a"]}
        layer_range: [0, 2]
  - sources:
      - model: {family["ft-b"]}
        layer_range: [3, 4]
        parameters:
          scale: [{{filter: layers.3.self_attn.o_proj, value: 0.5}}, {{value: 2.0}}]
""")
    jobs = jobs_by_name(plan)
    assert plan.num_layers == 3
    o_proj = jobs["model.layers.2.self_attn.o_proj.weight"]
    assert o_proj.sources[0].tensor == "model.layers.3.self_attn.o_proj.weight"
    assert o_proj.sources[0].model == str(family["ft-b"])
    assert o_proj.model_params[0]["scale"] == 0.5  # per-model filter matched the input name
    assert jobs["model.layers.2.mlp.up_proj.weight"].model_params[0]["scale"] == 2.0
    assert jobs["model.layers.0.mlp.up_proj.weight"].copy  # no scale: plain byte copy
    assert jobs["model.embed_tokens.weight"].sources[0].model == str(family["ft-a"])  # first slice
    assert jobs["lm_head.weight"].sources[0].model == str(family["ft-b"])  # last slice


def test_global_filters_match_output_names_and_gradient_restarts_per_slice(family):
    plan = plan_of(f"""
merge_method: slerp
base_model: {family["base"]}
slices:
  - sources:
      - {{model: {family["base"]}, layer_range: [0, 2]}}
      - {{model: {family["ft-a"]}, layer_range: [0, 2]}}
  - sources:
      - {{model: {family["base"]}, layer_range: [3, 4]}}
      - {{model: {family["ft-a"]}, layer_range: [3, 4]}}
parameters:
  t: [{{filter: layers.2., value: 0.9}}, {{value: [0.0, 1.0]}}]
""")
    jobs = jobs_by_name(plan)
    assert jobs["model.layers.0.mlp.up_proj.weight"].global_params["t"] == 0.0
    assert jobs["model.layers.1.mlp.up_proj.weight"].global_params["t"] == 1.0
    # output layer 2 comes from source layer 3; the filter sees the output name
    assert jobs["model.layers.2.mlp.up_proj.weight"].global_params["t"] == 0.9
    assert jobs["model.layers.2.mlp.up_proj.weight"].sources[1].tensor == "model.layers.3.mlp.up_proj.weight"
    assert jobs["model.layers.0.mlp.up_proj.weight"].base_index == 0


def test_one_layer_slice_sits_at_t_1(family):
    plan = plan_of(f"""
merge_method: linear
slices:
  - sources:
      - {{model: {family["ft-a"]}, layer_range: [2, 3]}}
parameters: {{weight: [0.5, 1.0]}}
""")
    assert jobs_by_name(plan)["model.layers.0.mlp.up_proj.weight"].model_params[0]["weight"] == 1.0
    assert jobs_by_name(plan)["model.embed_tokens.weight"].model_params[0]["weight"] == 0.5


def test_dtype_rules(family):
    text = f"merge_method: linear\nmodels:\n  - model: {family['ft-a']}\nparameters: {{weight: 1}}\n"
    assert plan_of(text).jobs[0].dtype == torch.bfloat16
    assert plan_of(text + "dtype: float32\n").jobs[0].dtype == torch.float32
    assert plan_of(text + "dtype: float32\nout_dtype: float16\n").jobs[0].dtype == torch.float16


def test_tied_embeddings_have_no_lm_head(tied_family):
    plan = plan_of(
        f"merge_method: linear\nmodels:\n  - model: {tied_family['ft-a']}\n"
        f"  - model: {tied_family['ft-b']}\nparameters: {{weight: 1}}\n"
    )
    assert "lm_head.weight" not in jobs_by_name(plan)


def test_mixed_tied_and_untied_heads_use_the_embedding(family, tied_family):
    plan = plan_of(
        f"merge_method: linear\nmodels:\n  - model: {family['ft-a']}\n"
        f"  - model: {tied_family['ft-b']}\nparameters: {{weight: 1}}\n"
    )
    head = jobs_by_name(plan)["lm_head.weight"]
    assert [s.tensor for s in head.sources] == ["lm_head.weight", "model.embed_tokens.weight"]


def test_a_passthrough_ending_in_a_tied_model_under_an_untied_donor_gets_a_head(family, tied_family):
    """The output copies the first model's (untied) config.json, so it needs lm_head.weight
    although the last slice's model is tied: its embedding stands in, as transformers ties it."""
    plan = plan_of(
        "merge_method: passthrough\nslices:\n"
        f"  - sources: [{{model: {family['ft-a']}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {tied_family['ft-b']}, layer_range: [2, 4]}}]\n"
    )
    head = jobs_by_name(plan)["lm_head.weight"]
    assert [(s.model, s.tensor) for s in head.sources] == [(str(tied_family["ft-b"]), "model.embed_tokens.weight")]
    assert plan.model_config.get("tie_word_embeddings") is False


@pytest.mark.parametrize(
    "body, message",
    [
        ("merge_method: linear\nmodels:\n  - model: {a}\n", "missing required parameter 'weight'"),
        ("merge_method: ties\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n", "ties needs a base_model"),
        (
            "merge_method: slerp\nbase_model: {b}\nmodels:\n  - model: {a}\n  - model: {c}\nparameters: {{t: 0.5}}\n",
            "slerp takes exactly 2 model(s)",
        ),
        ("merge_method: passthrough\nmodels:\n  - model: {a}\n  - model: {c}\n", "passthrough takes exactly 1"),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [2, 5]}}\n",
            "slices[0].sources[0].layer_range: [2, 5] goes past the end of",
        ),
        (
            "merge_method: ties\nbase_model: {b}\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [0, 4]}}\n"
            "parameters: {{weight: 1}}\n",
            "base_model {b} must be one of the slice's sources",
        ),
        (  # mergekit refuses duplicate merge inputs; adding the weights silently would differ
            "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.3}}\n  - model: {c}\n"
            "    parameters: {{weight: 0.2}}\n  - model: {a}\n    parameters: {{weight: 0.5}}\n",
            "models: model {a} is listed twice (models[0] and models[2])",
        ),
        (
            "merge_method: ties\nbase_model: {b}\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {b}\n"
            "parameters: {{weight: 1, density: 0.5}}\n",
            "models: model {b} is listed twice (models[1] and models[2])",
        ),
        (
            "merge_method: linear\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [0, 2]}}\n"
            "      - {{model: {a}, layer_range: [2, 4]}}\nparameters: {{weight: 1}}\n",
            "slices[0]: model {a} is listed twice (slices[0].sources[0] and slices[0].sources[1])",
        ),
    ],
)
def test_plan_errors(family, body, message):
    f = {"a": family["ft-a"], "b": family["base"], "c": family["ft-c"]}
    with pytest.raises(ConfigError) as info:
        plan_of(body.format(**f))
    assert message.format(**f) in str(info.value)


def test_shape_mismatch_and_layer_count_mismatch(tmp_path, family):
    other = write_family(tmp_path / "wide", layers=2)
    text = (
        f"merge_method: linear\nmodels:\n  - model: {family['ft-a']}\n  - model: {other['ft-a']}\n"
        "parameters: {weight: 1}\n"
    )
    with pytest.raises(ConfigError, match="models have different layer counts"):
        plan_of(text)
    text = (
        f"merge_method: linear\nslices:\n  - sources:\n      - {{model: {family['ft-a']}, layer_range: [0, 2]}}\n"
        f"      - {{model: {other['ft-a']}, layer_range: [0, 2]}}\nparameters: {{weight: 1}}\n"
    )
    assert len(plan_of(text).jobs) == 1 + 2 * 9 + 2


def test_different_architectures_need_allow_crimes(tmp_path, family):
    import json
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(family["ft-b"], odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    text = f"merge_method: linear\nmodels:\n  - model: {family['ft-a']}\n  - model: {odd}\nparameters: {{weight: 1}}\n"
    with pytest.raises(ConfigError, match="different architectures.*--allow-crimes"):
        plan_of(text)
    assert plan_of(text, allow_crimes=True).jobs
