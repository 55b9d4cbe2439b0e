"""Quantized checkpoints: block-scaled FP8 merges as its dequantized float32 copy; every
other quantized format is refused at plan time, naming the tensor and the format."""

import json

import pytest
import torch
from checkpoints import write_checkpoint
from helpers import run_cli
from safetensors.torch import load_file

from mergefast.config import parse_config
from mergefast.errors import ConfigError, ModelError
from mergefast.options import MergeOptions
from mergefast.plan import build_plan

FP8 = torch.float8_e4m3fn
BLOCK = 128
CONFIG = {"model_type": "llama", "num_hidden_layers": 1, "tie_word_embeddings": True}
QUANT = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]}
SHAPES = {"model.layers.0.mlp.down_proj.weight": (256, 200), "model.layers.0.self_attn.q_proj.weight": (128, 256)}


def fp8_tensors(seed: int) -> dict[str, torch.Tensor]:
    """An FP8 checkpoint's tensors: e4m3 weights with one float32 scale per 128x128 block."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.rand(8, generator=g).to(torch.bfloat16),
    }
    for name, (rows, cols) in SHAPES.items():
        tensors[name] = (torch.randn(rows, cols, generator=g) * 50).to(FP8)
        blocks = (-(-rows // BLOCK), -(-cols // BLOCK))
        tensors[name + "_scale_inv"] = torch.rand(blocks, generator=g) * 1e-3 + 1e-4
    return tensors


def dequantized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 copy, block by block (the scales dropped)."""
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype != FP8:
            out[name] = t
            continue
        w, scale = t.to(torch.float32), tensors[name + "_scale_inv"]
        for i in range(scale.shape[0]):
            for j in range(scale.shape[1]):
                w[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK] *= scale[i, j]
        out[name] = w
    return out


@pytest.fixture(scope="module")
def fp8_family(tmp_path_factory):
    """base/ft-a/ft-b as FP8 checkpoints and as their dequantized float32 copies."""
    root = tmp_path_factory.mktemp("fp8")
    folders = {}
    for seed, name in enumerate(("base", "ft-a", "ft-b")):
        tensors = fp8_tensors(seed)
        folders[name] = write_checkpoint(root / name, tensors, config={**CONFIG, "quantization_config": QUANT})
        folders[name + "-f32"] = write_checkpoint(root / f"{name}-f32", dequantized(tensors), config=CONFIG)
    return folders


def ties_config(folders, suffix="", dtype="float32"):
    return (
        f"merge_method: ties\nbase_model: {folders['base' + suffix]}\nmodels:\n"
        f"  - model: {folders['ft-a' + suffix]}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
        f"  - model: {folders['ft-b' + suffix]}\n    parameters: {{weight: 0.4, density: 0.7}}\n"
        + (f"dtype: {dtype}\n" if dtype else "")
    )


def merge(text, out):
    config = out.parent / f"{out.name}.yml"
    config.write_text(text)
    result = run_cli("yaml", config, out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_fp8_merges_as_its_dequantized_copy(fp8_family, tmp_path):
    fp8 = merge(ties_config(fp8_family), tmp_path / "fp8")
    f32 = merge(ties_config(fp8_family, "-f32"), tmp_path / "f32")
    got, expected = load_file(fp8 / "model.safetensors"), load_file(f32 / "model.safetensors")
    assert set(got) == set(expected) and not any(n.endswith("_scale_inv") for n in got)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert "quantization_config" not in json.loads((fp8 / "config.json").read_text())


def test_fp8_needs_an_output_dtype(fp8_family):
    text = ties_config(fp8_family, dtype=None)
    with pytest.raises(ConfigError, match="block-scaled FP8 checkpoint, dequantized to float32 .* set `dtype:`"):
        build_plan(parse_config(text, "cfg.yml"), text, "cfg.yml", MergeOptions())


def test_fp8_scale_of_the_wrong_shape(tmp_path):
    tensors = fp8_tensors(0)
    tensors["model.layers.0.mlp.down_proj.weight_scale_inv"] = torch.ones(2, 1)
    model = write_checkpoint(tmp_path / "m", tensors, config={**CONFIG, "quantization_config": QUANT})
    text = f"merge_method: linear\nmodels:\n  - model: {model}\nparameters: {{weight: 1}}\ndtype: bfloat16\n"
    with pytest.raises(ModelError, match=r"down_proj.weight_scale_inv has shape \[2, 1\], .* needs \[2, 2\]"):
        build_plan(parse_config(text, "cfg.yml"), text, "cfg.yml", MergeOptions())


@pytest.mark.parametrize(
    "extra, fmt",
    [
        (
            {
                "model.layers.0.mlp.qweight": torch.zeros(4, 8, dtype=torch.int32),
                "model.layers.0.mlp.scales": torch.ones(1, 8),
            },
            "GPTQ/AWQ",
        ),
        (
            {
                "model.layers.0.mlp.weight": torch.zeros(16, dtype=torch.uint8),
                "model.layers.0.mlp.weight.absmax": torch.ones(1),
            },
            "bitsandbytes 4-bit",
        ),
        ({"model.layers.0.mlp.weight": torch.zeros(8, 8, dtype=torch.int8)}, "8-bit"),
        (
            {"model.layers.0.mlp.weight": torch.zeros(8, 8).to(FP8), "model.layers.0.mlp.weight_scale": torch.ones(1)},
            "FP8",
        ),
        ({"model.layers.0.mlp.weight": torch.zeros(8, 8).to(FP8)}, "without a _scale_inv"),
    ],
)
def test_other_quantized_formats_are_refused_naming_the_tensor(tmp_path, extra, fmt):
    """The message names one of the format's tensors and the format."""
    tensors = {"model.embed_tokens.weight": torch.zeros(16, 8), **extra}
    model = write_checkpoint(tmp_path / "q", tensors, config={"model_type": "llama", "num_hidden_layers": 1})
    text = f"merge_method: linear\nmodels:\n  - model: {model}\nparameters: {{weight: 1}}\n"
    with pytest.raises(ConfigError) as info:
        build_plan(parse_config(text, "cfg.yml"), text, "cfg.yml", MergeOptions())
    message = str(info.value)
    assert any(f"tensor {name} " in message for name in extra) and fmt in message
