"""Fuzzing the input models' config.json: values of the wrong type, deleted keys, truncated
files. A merge either fails with one `mergefast: error:` line, or succeeds with an output
config.json that transformers loads (a broken donor value must not reach the output).
`MERGEFAST_FUZZ_EXAMPLES=N` hunts with N fresh examples."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import describe, fuzz_settings, run_cli, scratch
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # whole merges

KEYS = ["num_hidden_layers", "tie_word_embeddings", "architectures", "vocab_size", "hidden_size"]
KEYS += ["layer_types", "torch_dtype", "dtype", "num_attention_heads", "text_config", "head_dim"]
KEYS += ["max_window_layers", "n_layer", "num_layers", "intermediate_size", "num_key_value_heads", "model_type"]
SIZES = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "num_key_value_heads", "head_dim")
SIZES += ("n_layer", "num_layers")
LENIENT = ("intermediate_size", "num_key_value_heads", "head_dim", "n_layer", "num_layers")
VALUES = [None, 0, 1, 3, -1, 1e30, 4.0, float("nan"), "x", "llama", "bfloat16", "float64", "int8", [], {}, True]
VALUES += [False, ["LlamaForCausalLM"], ["X"], {"num_hidden_layers": 3}, ["full_attention"] * 3, [1, 2, 3]]
CONFIGS = {
    "linear": "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
    "  - model: {b}\n    parameters: {{weight: 0.5}}\n",
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
    "  - model: {b}\n    parameters: {{weight: 0.5, density: 0.5}}\n",
    "passthrough": "merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
    "  - sources: [{{model: {b}, layer_range: [1, 3]}}]\n",
}


def _size_like(value: object, lenient: bool) -> bool:
    """Whether `value` is a plausible size: a whole number, or (`lenient`) null or a list of them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return lenient and (value is None or (isinstance(value, list) and bool(value) and isinstance(value[0], int)))


@st.composite
def mutations(draw) -> list[tuple[str, str, object]]:
    """(model, key, new value or "<delete>" / "<truncate>") changes to the models' config.json:
    model_type only to values that are not strings (an unknown model type is merged as any
    other architecture, and transformers would not load it), and the sizes some architectures
    leave null or give per layer (LENIENT) to no such value; the sizes only to values that are
    not whole numbers (mergefast checks the types of config.json's values, and the layer count
    against the weights, but not a size against the tensors' shapes)."""
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS))
        values = VALUES
        if key == "model_type":
            values = [v for v in VALUES if not isinstance(v, str)]
        elif key in SIZES:
            values = [v for v in VALUES if not _size_like(v, key in LENIENT)]
        value = draw(st.sampled_from(values + ["<delete>", "<truncate>"]))
        changes.append((draw(st.sampled_from(["base", "ft-a", "ft-b"])), key, value))
    return changes


def _mutated_family(family: dict, root, changes) -> dict:
    """A copy of `family` under `root` with `changes` made to its config.json files."""
    copies = {name: shutil.copytree(folder, root / name) for name, folder in family.items() if name != "ft-c"}
    for name, key, value in changes:
        path = copies[name] / "config.json"
        text = path.read_text()
        if value == "<truncate>":
            path.write_text(text[: len(text) // 2])
            continue
        try:
            config = json.loads(text)
        except ValueError:
            continue  # truncated by an earlier change
        config.pop(key, None) if value == "<delete>" else config.__setitem__(key, value)
        path.write_text(json.dumps(config))
    return copies


@fuzz_settings(60)
@given(changes=mutations(), method=st.sampled_from(sorted(CONFIGS)))
def test_broken_model_configs_fail_in_one_line_or_merge_loadably(fuzz_families, tmp_path_factory, changes, method):
    from transformers import AutoConfig

    with scratch(tmp_path_factory, "model-configs") as root:
        models = _mutated_family(fuzz_families["bf16"], root, changes)
        (root / "c.yml").write_text(CONFIGS[method].format(base=models["base"], a=models["ft-a"], b=models["ft-b"]))
        result = run_cli("yaml", root / "c.yml", root / "out", "--quiet")
        assert result.exception is None or isinstance(result.exception, SystemExit), describe(result)
        assert "internal error" not in result.output, result.output
        if result.exit_code:
            assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1, result.stderr
            return
        AutoConfig.from_pretrained(root / "out")
