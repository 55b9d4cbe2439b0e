"""Config parsing and validation: every error names the key and suggests a fix."""

from pathlib import Path

import pytest

from mergefast.config import parse_config
from mergefast.errors import ConfigError

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yml"))
MODELS = "models:\n  - model: a\n    parameters: {weight: 1}\n"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path):
    config = parse_config(path.read_text(), str(path))
    assert config.merge_method in {"linear", "ties", "slerp", "passthrough", "task_arithmetic"}


def test_full_config_fields():
    config = parse_config(
        "merge_method: ties\nbase_model: org/base@v1\n"
        + MODELS
        + "parameters: {normalize: false, lambda: 0.5}\ndtype: torch.bfloat16\nout_dtype: float16\n"
        "tokenizer_source: base\n"
    )
    assert config.base_model == "org/base@v1"
    assert config.dtype == "bfloat16" and config.out_dtype == "float16"
    assert config.models[0].parameters == {"weight": 1}
    assert config.tokenizer_source == "base"


def test_dict_model_reference():
    config = parse_config(
        "merge_method: linear\nmodels:\n  - model: {path: org/a, revision: r1}\nparameters: {weight: 1}\n"
    )
    assert config.models[0].model == "org/a@r1"


def test_slices_and_bare_conditional():
    config = parse_config(
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n"
        "        parameters: {scale: {filter: o_proj, value: 0}}\n"
    )
    assert config.slices[0].sources[0].layer_range == (0, 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("merge_method: ties\nmodles: []\n", "unknown key 'modles' (did you mean 'models'?)"),
        (
            "merge_method: linear\nmodels:\n  - model: a\n    paramters: {weight: 1}\n",
            "models[0]: unknown key 'paramters' (did you mean 'parameters'?)",
        ),
        (
            "merge_method: linear\n" + MODELS + "parameters: {normalise: true}\n",
            "parameters.normalise: unknown parameter 'normalise' for linear (did you mean 'normalize'?)",
        ),
        (
            "merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n    parameters: {weight: 1, densty: 0.5}\n",
            "models[0].parameters.densty: unknown parameter 'densty' for ties (did you mean 'density'?)",
        ),
        ("merge_method: tie\n" + MODELS, "unknown method 'tie' (did you mean 'ties'?)"),
        (
            "merge_method: dare_ties\n" + MODELS + "parameters: {densty: 0.5}\n",
            "unknown parameter 'densty' for dare_ties (did you mean 'density'?)",
        ),
        ("merge_method: linear\n" + MODELS + "dtype: bf16\n", "unknown dtype 'bf16' (did you mean 'bfloat16'?)"),
        ("merge_method: linear\n" + MODELS + "tokenizer_source: union\ntokenizer: {source: base}\n", "not both"),
        ("merge_method: linear\n", "exactly one of `models`, `slices` or `modules`"),
        ("merge_method: linear\n" + MODELS + "slices: []\n", "exactly one of `models`, `slices` or `modules`"),
        ("merge_method: linear\n" + MODELS + "modules: {}\n", "exactly one of `models`, `slices` or `modules`"),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [3, 1]}\n",
            "slices[0].sources[0].layer_range: layer_range [3, 1] must be [start, end)",
        ),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n"
            "      - {model: b, layer_range: [0, 3]}\n",
            "same number of layers, got [2, 3]",
        ),
        (
            "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n    parameters: {t: 0.5}\n  - model: b\n",
            "'t' applies to the whole merge, not to one model",
        ),
        (
            "merge_method: linear\n" + MODELS + "parameters: {weight: {filter: x}}\n",
            "a conditional needs exactly `value`",
        ),
        (
            "merge_method: linear\n" + MODELS + "parameters: {weight: [0.1, {filter: x, value: 1}]}\n",
            "mixes {filter, value} entries and plain values",
        ),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yml")
    assert message in str(info.value)
    assert str(info.value).startswith("cfg.yml: ")
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_has_line_and_column():
    with pytest.raises(ConfigError, match=r"cfg.yml: invalid YAML at line 2, column 9: mapping values are not allowed"):
        parse_config("merge_method: linear\nmodels: : x\n", "cfg.yml")


def test_several_documents_say_one_merge_per_file():
    """A mergekit-multi file (merges separated by ---) names the way out."""
    text = "merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: linear\nmodels: [{model: b}]\n"
    with pytest.raises(ConfigError, match=r"line 3, column 1: but found another document; mergefast takes one merge"):
        parse_config(text, "multi.yml")


def test_yaml_merge_keys_may_be_overridden_but_keys_not_repeated():
    from mergefast.config import parse_config

    text = "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      <<: {weight: 1}\n      weight: 2\n"
    assert parse_config(text).models[0].parameters["weight"] == 2
    with pytest.raises(ConfigError, match="line 6.*'weight' appears twice"):
        parse_config(text.replace("<<: {weight: 1}", "weight: 1"))
