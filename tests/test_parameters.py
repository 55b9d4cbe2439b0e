"""Filters, gradients and precedence, with expected values worked out by hand."""

import pytest

from mergefast.errors import ConfigError
from mergefast.methods.registry import Param
from mergefast.parameters import evaluate_setting, interpolate, resolve

WEIGHT = Param("weight")
DENSITY = Param("density", "float", 1.0)
NORMALIZE = Param("normalize", "bool", True)


@pytest.mark.parametrize(
    "gradient, t, expected",
    [
        ([0.0, 1.0], 0.5, 0.5),
        ([0.0, 1.0], 0.0, 0.0),
        ([0.0, 1.0], 1.0, 1.0),
        ([0.0, 1.0, 0.5], 0.75, 0.75),  # pos = 1.5: halfway between 1.0 and 0.5
        ([0.0, 1.0, 0.5], 0.25, 0.5),  # pos = 0.5
        ([2.0, 4.0, 6.0, 8.0], 1 / 3, 4.0),
        ([7.0], 0.3, 7.0),
        (["a", "b", "c"], 0.9, "b"),  # non-numeric: index floor(0.9 * 2) = 1, no interpolation
    ],
)
def test_interpolate(gradient, t, expected):
    assert interpolate(gradient, t) == pytest.approx(expected)


def test_filters_first_match_wins_and_star():
    setting = [{"filter": "self_attn", "value": 0.1}, {"filter": "q_proj", "value": 0.2}, {"filter": "*", "value": 0.3}]
    assert evaluate_setting(setting, "model.layers.0.self_attn.q_proj.weight", 0) == 0.1
    assert evaluate_setting(setting, "model.layers.0.mlp.up_proj.weight", 0) == 0.3


def test_filter_is_a_substring_not_a_regex():
    setting = [{"filter": "layers.1.", "value": 1.0}]
    assert evaluate_setting(setting, "model.layers.1.mlp.weight", 0) == 1.0
    assert evaluate_setting(setting, "model.layers.11.mlp.weight", 0) is None
    assert evaluate_setting([{"filter": "q.proj", "value": 1}], "q_proj", 0) is None


def test_conditional_with_gradient_value_and_no_filter():
    setting = [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.5}]
    assert evaluate_setting(setting, "x.mlp.y", 0.25) == pytest.approx(0.25)
    assert evaluate_setting(setting, "x.attn.y", 0.25) == 0.5
    assert evaluate_setting({"filter": "mlp", "value": 2}, "x.mlp.y", 0) == 2  # bare conditional


def test_precedence_source_over_slice_over_top():
    source, sl, top = {"weight": 1.0}, {"weight": 2.0}, {"weight": 3.0}
    assert resolve(WEIGHT, [source, sl, top], "t", 0, "w") == 1.0
    assert resolve(WEIGHT, [None, sl, top], "t", 0, "w") == 2.0
    assert resolve(WEIGHT, [{}, None, top], "t", 0, "w") == 3.0
    assert resolve(DENSITY, [{}, None, None], "t", 0, "w") == 1.0


def test_unmatched_filter_falls_through_to_next_level():
    source = {"weight": [{"filter": "mlp", "value": 0.9}]}
    assert resolve(WEIGHT, [source, {"weight": 0.4}], "attn", 0, "w") == 0.4
    assert resolve(WEIGHT, [source, {"weight": 0.4}], "mlp", 0, "w") == 0.9


def test_missing_required_names_where():
    with pytest.raises(ConfigError, match="cfg.yml: models\\[0\\].*missing required parameter 'weight'"):
        resolve(WEIGHT, [{}, None], "t", 0, "cfg.yml: models[0] (a), tensor t")


def test_coercion():
    assert resolve(WEIGHT, [{"weight": "1e-3"}], "t", 0, "w") == pytest.approx(0.001)
    assert resolve(WEIGHT, [{"weight": 2}], "t", 0, "w") == 2.0
    assert resolve(NORMALIZE, [{"normalize": 0}], "t", 0, "w") is False
    with pytest.raises(ConfigError, match="'normalize' must be true or false"):
        resolve(NORMALIZE, [{"normalize": "yes"}], "t", 0, "w")
    with pytest.raises(ConfigError, match="'weight' must be a number"):
        resolve(WEIGHT, [{"weight": "heavy"}], "t", 0, "w")


def test_a_bad_value_names_the_block_it_came_from():
    """It named the first tensor's model or slice even when the value was a global one."""
    with pytest.raises(ConfigError, match="tensor t, from parameters: 'normalize' must be"):
        resolve(
            NORMALIZE,
            [None, {"normalize": "yes"}],
            "t",
            0,
            "cfg.yml: models, tensor t",
            ["models.parameters", "parameters"],
        )
