"""Plan-time checks of the input model folders, on tiny models written here:

- a model whose config.json says tie_word_embeddings: false but whose weights lack lm_head is
  an error (it used to be treated as tied: its embedding was merged into the output head);
- a merged model without config.json is an error (the output got `{"tie_word_embeddings":
  false}` as its config.json, which transformers cannot load);
- with `slices:`, a donor config.json without a layer-count key is an error at plan time,
  naming that file (it used to fail after every tensor was written, naming no file).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import describe, run_cli
from make_models import make_tiny_llama
from safetensors.torch import load_file, save_file

SIZES = dict(hidden=16, intermediate=32, heads=2, kv_heads=1, layers=2, vocab=32, dtype=torch.float32)
HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


def error_line(result, code: int = 2) -> str:
    """The one `mergefast: error:` line of an error (exit `code`: 2 a config error, 1 a model
    problem; `result` of helpers.run_cli), without a traceback."""
    assert result.exit_code == code, describe(result)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("mergefast: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_config(tmp_path: Path, body: str) -> Path:
    config = tmp_path / "config.yml"
    config.write_text(body)
    return config


def linear(good: Path, other: Path) -> str:
    return (
        f"merge_method: linear\nbase_model: {good}\nmodels:\n  - model: {good}\n  - model: {other}\n"
        "parameters: {weight: 0.5}\ndtype: float32\n"
    )


@pytest.fixture()
def good(tmp_path) -> Path:
    make_tiny_llama(tmp_path / "good", seed=0, **SIZES)
    return tmp_path / "good"


def edit_config(folder: Path, **changes) -> None:
    """Set (value) or remove (None) top-level keys of a model's config.json."""
    path = folder / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# -- an untied head missing ---------------------------------------------------------------


def test_untied_model_without_lm_head_in_its_index(tmp_path, good):
    broken = tmp_path / "broken"
    make_tiny_llama(broken, seed=1, fmt="sharded", **SIZES)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"][HEAD]  # the shard still holds it: only the index leaves it out
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    line = error_line(run_cli("yaml", write_config(tmp_path, linear(good, broken)), out, "--quiet"))
    assert str(broken) in line and HEAD in line and "tie_word_embeddings: false" in line
    assert "model.safetensors.index.json" in line
    assert not out.exists()


def test_untied_single_file_model_without_lm_head(tmp_path, good):
    broken = tmp_path / "broken"
    make_tiny_llama(broken, seed=1, **SIZES)
    tensors = load_file(broken / "model.safetensors")
    del tensors[HEAD]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    config = write_config(tmp_path, linear(good, broken))
    line = error_line(run_cli("plan", config))  # found by `mergefast plan`: no tensor is read
    assert str(broken) in line and HEAD in line and "model.safetensors" in line
    # Without the key the architecture's default applies, as before: the model counts as tied
    # and its embedding stands in for the head (what tied-by-default models such as Gemma need).
    edit_config(broken, tie_word_embeddings=None)
    out = tmp_path / "out"
    result = run_cli("yaml", config, out, "--quiet")
    assert result.exit_code == 0, result.stderr
    merged, a = load_file(out / "model.safetensors"), load_file(good / "model.safetensors")
    assert torch.allclose(merged[HEAD], 0.5 * a[HEAD] + 0.5 * tensors[EMBED])


# -- a merged model without config.json ------------------------------------------------


@pytest.mark.parametrize("which", ["donor", "other"])
def test_model_without_config_json(tmp_path, good, which):
    other = tmp_path / "other"
    make_tiny_llama(other, seed=1, **SIZES)
    bare = good if which == "donor" else other
    (bare / "config.json").unlink()
    out = tmp_path / "out"
    line = error_line(run_cli("yaml", write_config(tmp_path, linear(good, other)), out, "--quiet"))
    assert str(bare) in line and "config.json" in line
    assert not out.exists()


# -- slices with a donor config.json without a layer count -----------------------------


def test_slices_donor_config_without_layer_count(tmp_path, good):
    other = tmp_path / "other"
    make_tiny_llama(other, seed=1, **SIZES)
    edit_config(good, num_hidden_layers=None)
    config = write_config(
        tmp_path,
        (
            f"merge_method: passthrough\nslices:\n  - sources:\n      - {{model: {good}, layer_range: [0, 2]}}\n"
            f"  - sources:\n      - {{model: {other}, layer_range: [1, 2]}}\ndtype: float32\n"
        ),
    )
    plan_line = error_line(run_cli("plan", config), 1)
    out = tmp_path / "out"
    line = error_line(run_cli("yaml", config, out, "--quiet"), 1)
    assert line == plan_line
    assert str(good / "config.json") in line and "no layer count for the 2 layers of model.layers.N" in line
    assert not out.exists()
    assert not list(tmp_path.glob(".out.mergefast-partial-*"))


def test_donor_config_without_layer_count(tmp_path, good):
    """A plain merge copies the donor's config.json too: without a layer count transformers
    would build Llama's default 32 layers, 30 of them random."""
    other = tmp_path / "other"
    make_tiny_llama(other, seed=1, **SIZES)
    edit_config(good, num_hidden_layers=None)
    body = f"merge_method: linear\nmodels:\n  - model: {good}\n    parameters: {{weight: 0.5}}\n"
    config = write_config(tmp_path, body + f"  - model: {other}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    out = tmp_path / "out"
    assert "no layer count" in error_line(run_cli("yaml", config, out, "--quiet"), 1)
    assert not out.exists()
