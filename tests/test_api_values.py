"""Values Python callers put in a config dict: pathlib paths, numpy numbers (a
weight sweep with np.linspace gives np.float64), numpy ints and bools, 0-d and 1-d arrays,
tuples. They merge exactly as the plain Python values do. NaN and infinite parameters, values
YAML cannot hold and seeds outside 0..2**64 - 1 are ConfigErrors naming what is wrong."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from safetensors.torch import load_file

import mergefast
from mergefast.errors import ConfigError


def ties_config(family: dict[str, Path], *, weights=(0.6, 0.4), density=0.5, normalize=True, to_path=Path) -> dict:
    """A TIES config dict over `family` with the given values, model folders as `to_path`."""
    return {
        "merge_method": "ties",
        "base_model": to_path(family["base"]),
        "models": [
            {"model": to_path(family[name]), "parameters": {"weight": w, "density": density}}
            for name, w in zip(("ft-a", "ft-b"), weights)
        ],
        "parameters": {"normalize": normalize},
        "dtype": "float32",
    }


def merged(config: dict, out: Path, **options) -> dict:
    mergefast.merge(config, out, quiet=True, write_model_card=False, copy_tokenizer=False, **options)
    return load_file(out / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize(
    "values",
    [
        dict(),  # pathlib.Path model folders only
        dict(weights=tuple(np.linspace(0.6, 0.4, 2))),  # np.float64, as a weight sweep gives them
        dict(weights=(np.float32(0.75), np.float16(0.25)), density=np.float64(0.5)),
        dict(weights=(np.array(0.6), np.array(0.4)), density=np.array(0.5)),  # 0-d arrays
        dict(normalize=np.bool_(True)),
    ],
    ids=["path", "linspace", "float32-float16", "0-d-arrays", "numpy-bool"],
)
def test_python_values_merge_like_plain_ones(family, tmp_path, values):
    weights = [float(w) for w in values.get("weights", (0.6, 0.4))]  # float32(0.75) is 0.75 exactly
    plain = merged(ties_config(family, weights=weights, to_path=str), tmp_path / "plain")
    assert same(merged(ties_config(family, **values), tmp_path / "out"), plain)


def test_numpy_ints_and_arrays_as_gradients(family, tmp_path):
    """np.int64 weights and a 1-d array (a gradient) equal their Python lists."""

    def config(weight, density):
        data = ties_config(family, to_path=str)
        data["models"][0]["parameters"] = {"weight": weight, "density": density}
        return data

    python = merged(config([1, 0], [0.2, 0.8]), tmp_path / "python")
    numpy = merged(config(np.array([1, 0], dtype=np.int64), np.linspace(0.2, 0.8, 2)), tmp_path / "numpy")
    assert same(numpy, python)


def test_a_merge_config_holding_numpy_values(family, tmp_path):
    """A MergeConfig built from such a dict keeps the numpy values; it is dumped the same way."""
    from mergefast.config import MergeConfig, load_config

    config = MergeConfig.model_validate(ties_config(family, to_path=str, weights=np.linspace(0.6, 0.4, 2)))
    _, text, _ = load_config(config)
    assert "weight: 0.6\n" in text and "np." not in text


def test_a_tuple_layer_range_is_a_list(family, tmp_path):
    data = {
        "merge_method": "passthrough",
        "dtype": "float32",
        "slices": [{"sources": [{"model": family["base"], "layer_range": (np.int64(0), 2)}]}],
    }
    out = merged(data, tmp_path / "out")
    assert not any(".layers.2." in name for name in out)


@pytest.mark.parametrize(
    "where, bad",
    [
        ("density", float("nan")),
        ("density", np.float64("nan")),
        ("weight", float("nan")),
        ("weight", float("inf")),
        ("weight", [0.5, float("nan")]),
        ("weight", [{"filter": "mlp", "value": math.nan}, {"value": 1.0}]),
    ],
)
def test_a_non_finite_parameter_names_it(family, tmp_path, where, bad):
    data = ties_config(family)
    data["models"][1]["parameters"][where] = bad
    with pytest.raises(ConfigError, match=rf"models\[1\]\.parameters\.{where}: must be a finite number"):
        mergefast.merge(data, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_a_value_yaml_cannot_hold_is_a_config_error(family, tmp_path):
    data = ties_config(family)
    data["models"][0]["parameters"]["weight"] = complex(0.5, 1)
    with pytest.raises(ConfigError, match=r"\(0\.5\+1j\) \(complex\) is not YAML data"):
        mergefast.merge(data, tmp_path / "out")


@pytest.mark.parametrize("seed", [2**64, -1])
def test_a_seed_out_of_range_names_it(family, tmp_path, seed):
    with pytest.raises(ConfigError, match="random_seed"):
        mergefast.merge(ties_config(family), tmp_path / "out", random_seed=seed)
    assert not (tmp_path / "out").exists()


def test_a_nan_in_yaml_is_a_usage_error_naming_it(family, tmp_path):
    text = (
        "merge_method: ties\n"
        f"base_model: {family['base']}\n"
        f"models:\n  - model: {family['ft-a']}\n    parameters: {{weight: 1.0, density: .nan}}\n"
    )
    (tmp_path / "c.yml").write_text(text)
    result = run_cli("yaml", tmp_path / "c.yml", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "models[0].parameters.density: must be a finite number, got nan" in lines[0]
