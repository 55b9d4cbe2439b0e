"""LoRA references (`model+lora`, mergekit's `model: {model: ..., lora: ...}`): the adapter is
applied as the base's tensors are read, with peft's `merge_and_unload` result (io/lora.py)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> dict[str, Path]:
    """A tiny bf16 Llama, a trained-looking PEFT adapter over it (ranks and alphas by pattern,
    an embedding LoRA, lm_head saved whole) and peft's own merge of the two."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(root / "base")
    lora_config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["lm_head"],
        rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3},
    )  # fmt: skip
    adapted = peft.get_peft_model(model, lora_config)
    with torch.no_grad():
        for name, tensor in adapted.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                tensor.normal_(0, 0.1)
    adapted.save_pretrained(root / "adapter", save_embedding_layers=True)
    adapted.merge_and_unload().save_pretrained(root / "merged")
    return {"base": root / "base", "adapter": root / "adapter", "merged": root / "merged"}


def _merge(tmp_path: Path, config: dict, *flags, name="out") -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("yaml", path, tmp_path / name, "--quiet", "--no-copy-tokenizer", *flags)
    assert result.exit_code == 0, result.output
    return tmp_path / name


def _passthrough(model: str) -> dict:
    return {"merge_method": "passthrough", "models": [{"model": model}], "dtype": "bfloat16"}


def test_passthrough_of_model_plus_lora_is_peft_merge_and_unload(lora, tmp_path):
    """Bit for bit peft's merge, but for the embedding: peft rounds an embedding's delta to bf16
    before adding it (two roundings), mergefast adds in float32 and rounds once."""
    out = load_file(_merge(tmp_path, _passthrough(f"{lora['base']}+{lora['adapter']}")) / "model.safetensors")
    merged, base = load_file(lora["merged"] / "model.safetensors"), load_file(lora["base"] / "model.safetensors")
    assert sorted(out) == sorted(merged)
    for name in set(out) - {"model.embed_tokens.weight"}:
        assert torch.equal(out[name], merged[name]), name
    changed = {n for n in out if not torch.equal(out[n], base[n])}
    assert changed == {n for n in out if any(t in n for t in TARGETS)} | {"lm_head.weight"}
    adapter = load_file(lora["adapter"] / "adapter_model.safetensors")
    key = "base_model.model.model.embed_tokens"
    delta = (adapter[f"{key}.lora_embedding_B"] @ adapter[f"{key}.lora_embedding_A"]).T * 2.0
    embed = out["model.embed_tokens.weight"]
    assert torch.equal(embed, (adapter[f"{key}.base_layer.weight"].float() + delta).to(torch.bfloat16))
    assert torch.allclose(embed.float(), merged["model.embed_tokens.weight"].float(), rtol=0.05, atol=1e-3)


def test_a_merge_with_a_lora_equals_one_of_the_folder_peft_merged(lora, tmp_path):
    """linear of base and base+adapter (the torch engine) against linear of base and peft's
    merged folder (the torch-free engine): the same tensors; mergekit's dict form the same bytes."""
    dict_form = {"model": {"path": str(lora["base"])}, "lora": {"path": str(lora["adapter"])}}
    for name, other in (("plus", f"{lora['base']}+{lora['adapter']}"), ("dict", dict_form), ("peft", lora["merged"])):
        models = [str(lora["base"]), other if isinstance(other, dict) else str(other)]
        config = {"merge_method": "linear", "dtype": "bfloat16"}
        config["models"] = [{"model": model, "parameters": {"weight": 0.5}} for model in models]
        _merge(tmp_path, config, name=name)
    plus = (tmp_path / "plus" / "model.safetensors").read_bytes()
    assert (tmp_path / "dict" / "model.safetensors").read_bytes() == plus
    ours, theirs = (load_file(tmp_path / name / "model.safetensors") for name in ("plus", "peft"))
    assert sorted(ours) == sorted(theirs)
    for name in set(ours) - {"model.embed_tokens.weight"}:  # peft's embedding: see the test above
        assert torch.equal(ours[name], theirs[name]), name


def test_lora_merge_dtype_reads_the_adapted_model_in_that_dtype(lora, tmp_path):
    """--lora-merge-dtype float32: every tensor read in float32, W + delta not rounded to bf16."""
    config = _passthrough(f"{lora['base']}+{lora['adapter']}")
    del config["dtype"]
    out = load_file(_merge(tmp_path, config, "--lora-merge-dtype", "float32") / "model.safetensors")
    assert {t.dtype for t in out.values()} == {torch.float32}
    adapter = load_file(lora["adapter"] / "adapter_model.safetensors")
    base = load_file(lora["base"] / "model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.v_proj"
    delta = (adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]) * (3 / 4)
    want = base["model.layers.1.self_attn.v_proj.weight"].float() + delta
    assert torch.equal(out["model.layers.1.self_attn.v_proj.weight"], want)


def _hand_adapter(folder: Path, config: dict, tensors: dict) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def test_fan_in_fan_out_and_rslora_updates(lora, tmp_path):
    """A Conv1D-style adapter (fan_in_fan_out: B @ A transposed) with use_rslora (alpha / sqrt(r))."""
    key = "base_model.model.model.layers.0.mlp.up_proj"  # weight 48 x 32
    a, b = torch.randn(2, 48), torch.randn(32, 2)
    tensors = {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}
    adapter = _hand_adapter(tmp_path / "a", {"fan_in_fan_out": True, "use_rslora": True}, tensors)
    config = _passthrough(f"{lora['base']}+{adapter}")
    out = load_file(_merge(tmp_path, config) / "model.safetensors")
    base = load_file(lora["base"] / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    want = (base.float() + (b @ a).T * (4 / math.sqrt(2))).to(torch.bfloat16)
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], want)


PAIR = "base_model.model.model.layers.0.self_attn.q_proj"
BAD_ADAPTERS = {
    "names-no-tensor": ({}, {f"{PAIR[:-6]}.x_proj.lora_A.weight": torch.zeros(2, 32),
                             f"{PAIR[:-6]}.x_proj.lora_B.weight": torch.zeros(32, 2)}, "which the model does not have"),
    "half-pair": ({}, {f"{PAIR}.lora_A.weight": torch.zeros(2, 32)}, "has lora_A or lora_B but not both"),
    "wrong-shape": ({}, {f"{PAIR}.lora_A.weight": torch.zeros(2, 16), f"{PAIR}.lora_B.weight": torch.zeros(32, 2)},
                    r"shape \(32, 16\), the model's is \(32, 32\)"),
    "dora": ({"use_dora": True}, {}, "DoRA"),
    "layer-replication": ({"layer_replication": [[0, 2], [1, 2]]}, {}, "layer_replication in adapter_config"),
    "loha": ({"peft_type": "LOHA"}, {}, "only LoRA adapters"),
    "no-prefix": ({}, {"q_proj.lora_A.weight": torch.zeros(2, 32)}, "does not start with 'base_model.model.'"),
    "alpha-text": ({"lora_alpha": "16"}, {}, "lora_alpha's alpha '16' is not a finite number"),
    "switch-text": ({"fan_in_fan_out": "false"}, {}, "fan_in_fan_out is 'false'; give true or false"),
    "alpha-regex": ({"alpha_pattern": {"(a+)+$": 4}}, {}, "alpha_pattern key .*: mergefast takes module names"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapters_are_refused_before_the_merge(case, lora, tmp_path):
    config, tensors, message = BAD_ADAPTERS[case]
    adapter = _hand_adapter(tmp_path / "a", config, tensors or {"x": torch.zeros(1)})
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(_passthrough(f"{lora['base']}+{adapter}")))
    result = run_cli("yaml", path, tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "error: LoRA" in result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_a_pickled_adapter_loads_weights_only(lora, tmp_path):
    """adapter_model.bin is read with weights_only=True: a pickle that would run code is refused."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    torch.save({"x": Path("/")}, folder / "adapter_model.bin")  # a class weights_only does not load
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(_passthrough(f"{lora['base']}+{folder}")))
    result = run_cli("yaml", path, tmp_path / "out")
    assert result.exit_code == 1 and "cannot read" in result.output and "adapter_model.bin" in result.output


@pytest.mark.parametrize("ref", ["a+b+c", "+b", "a+"])
def test_malformed_lora_references(ref, tmp_path):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(_passthrough(ref)))
    result = run_cli("plan", path)
    assert result.exit_code == 2 and "write a LoRA reference as model+lora" in result.output, result.output


@pytest.mark.parametrize("stream", [False, True], ids=["downloaded", "stream-inputs"])
def test_a_hub_model_with_a_hub_adapter(stream, lora, tmp_path, monkeypatch):
    """org/base+org/adapter from a (fake) Hub: the local folders' output, the base's weights
    downloaded or read in ranges, the adapter's files downloaded."""
    from fake_hub import FakeHub, use_fake_hub

    hub = FakeHub().start()
    try:
        hub.add_repo("org/base", lora["base"])
        hub.add_repo("org/adapter", lora["adapter"])
        use_fake_hub(monkeypatch, hub, tmp_path / "hf")
        flags = ["--stream-inputs"] if stream else []
        out = _merge(tmp_path, _passthrough("org/base+org/adapter"), *flags, name="hub")
    finally:
        hub.stop()
    local = _merge(tmp_path, _passthrough(f"{lora['base']}+{lora['adapter']}"), name="local")
    assert (out / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()


@pytest.mark.mergekit
@pytest.mark.slow
def test_mergekit_merges_the_same_lora(lora, tmp_path):
    """mergekit 0.1.5 (its --lora-merge-cache, peft in its own environment) against mergefast:
    the same bytes but for the embedding, whose LoRA update peft rounds before adding it."""
    from test_mergekit_compat import MERGEKIT_YAML

    if MERGEKIT_YAML is None:
        pytest.skip("mergekit-yaml not found (set MERGEKIT_YAML)")
    models = [str(lora["base"]), f"{lora['base']}+{lora['adapter']}"]
    config = {"merge_method": "linear", "dtype": "bfloat16"}
    config["models"] = [{"model": model, "parameters": {"weight": 0.5}} for model in models]
    ours = load_file(_merge(tmp_path, config) / "model.safetensors")
    args = [MERGEKIT_YAML, tmp_path / "out.yml", tmp_path / "mk", "--lora-merge-cache", tmp_path / "cache"]
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = load_file(tmp_path / "mk" / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name in set(ours) - {"model.embed_tokens.weight"}:
        assert torch.equal(ours[name], theirs[name]), name
    embed = "model.embed_tokens.weight"
    assert torch.allclose(ours[embed].float(), theirs[embed].float(), atol=2e-3)


@pytest.fixture(scope="module")
def gpt2_lora(tmp_path_factory) -> dict[str, Path]:
    """GPT-2 (Conv1D layers: fan_in_fan_out) stored as openai-community/gpt2 is, without the
    `transformer.` prefix its module names have, a peft LoRA over it and peft's merge."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    model = model.to(torch.bfloat16)
    model.save_pretrained(root / "base")
    weights = root / "base" / "model.safetensors"
    save_file({k.removeprefix("transformer."): v for k, v in load_file(weights).items()}, weights, {"format": "pt"})
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, bias="all")
    adapted = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, tensor in adapted.named_parameters():
            if "lora_" in name or name.endswith("bias"):
                tensor.normal_(0, 0.05)
    adapted.save_pretrained(root / "adapter")
    adapted.merge_and_unload().save_pretrained(root / "merged")
    return {"base": root / "base", "adapter": root / "adapter", "merged": root / "merged"}


def test_a_conv1d_lora_over_a_checkpoint_without_the_model_prefix(gpt2_lora, tmp_path):
    """The adapter names `transformer.h.0.attn.c_attn`, the checkpoint `h.0.attn.c_attn`: each
    update lands on the one stored tensor of that name, as transformers loads it (biases saved
    whole by bias="all"); peft's merge bit for bit."""
    out = _merge(tmp_path, _passthrough(f"{gpt2_lora['base']}+{gpt2_lora['adapter']}"))
    ours, theirs = load_file(out / "model.safetensors"), load_file(gpt2_lora["merged"] / "model.safetensors")
    assert sorted(ours) == sorted(load_file(gpt2_lora["base"] / "model.safetensors"))
    for name in ours:
        assert torch.equal(ours[name], theirs[f"transformer.{name}"]), name
    base = load_file(gpt2_lora["base"] / "model.safetensors")
    assert not torch.equal(ours["h.1.mlp.c_fc.weight"], base["h.1.mlp.c_fc.weight"])
    assert not torch.equal(ours["h.0.attn.c_proj.bias"], base["h.0.attn.c_proj.bias"])


def test_the_plan_says_what_the_adapter_changes(lora, tmp_path):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(_passthrough(f"{lora['base']}+{lora['adapter']}")))
    result = run_cli("plan", path)
    assert result.exit_code == 0, result.output
    # q_proj, v_proj, down_proj in 2 layers and the embedding; lm_head and the embedding's base layer
    assert "(safetensors, 2 layers, LoRA: 7 weights updated, 2 replaced)" in result.output


def test_raw_reads_never_bypass_the_adapter(lora):
    """The torch-free engine's raw reads are refused by the LoRA reader (its plans run on the
    torch engine), so no tensor is ever read without its update."""
    from mergefast.inputs import open_model

    model = open_model(f"{lora['base']}+{lora['adapter']}", None)
    try:
        for raw in (model.reader.read_into, model.reader.map_whole):
            with pytest.raises(TypeError, match="never as raw bytes"):
                raw("model.layers.0.self_attn.q_proj.weight", bytearray(4096))
    finally:
        model.close()
