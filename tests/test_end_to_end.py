"""The CLI on tiny checkpoints written by the tests: outputs load in transformers."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import example_config, run_cli, write_family
from safetensors.torch import load_file

from mergefast import methods
from mergefast.io.reader import CheckpointReader

EXAMPLES = ["linear.yml", "ties.yml", "task-arithmetic.yml", "slerp-gradient.yml", "passthrough-stack.yml"]


def merge_example(name, family, tmp_path, *extra):
    config = tmp_path / name
    config.write_text(example_config(name, family))
    out = tmp_path / "out"
    result = run_cli("yaml", config, out, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return out


def load_and_run(out: Path):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()
    return model


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_merge_and_load(name, family, tmp_path):
    out = merge_example(name, family, tmp_path)
    model = load_and_run(out)
    files = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "mergekit_config.yml", "tokenizer.json"} <= set(files)
    assert not any(".mergefast-" in p.name for p in tmp_path.iterdir())
    expected_layers = 6 if name == "passthrough-stack.yml" else 4
    assert model.config.num_hidden_layers == expected_layers
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == expected_layers
    assert (out / "mergekit_config.yml").read_text() == (tmp_path / name).read_text()


def test_linear_output_equals_reference(family, tmp_path):
    out = merge_example("linear.yml", family, tmp_path)
    merged = load_file(out / "model.safetensors")
    name = "model.layers.2.mlp.down_proj.weight"
    inputs = [load_file(family[k] / "model.safetensors")[name] for k in ("ft-a", "ft-b", "ft-c")]
    assert torch.equal(merged[name], methods.linear(inputs, [0.5, 0.3, 0.2], out_dtype=torch.bfloat16))


def test_ties_output_equals_reference(family, tmp_path):
    out = merge_example("ties.yml", family, tmp_path)
    merged = load_file(out / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    load = lambda k: load_file(family[k] / "model.safetensors")[name]  # noqa: E731
    expected = methods.ties(
        load("base"),
        [load("ft-a"), load("ft-b"), load("ft-c")],
        [0.5, 0.3, 0.2],
        [0.5, 0.7, 0.3],
        normalize=True,
        out_dtype=torch.bfloat16,
    )
    assert torch.equal(merged[name], expected)


def test_sharded_output_and_inputs_in_every_format(tmp_path):
    for fmt in ("sharded", "bin"):
        family = write_family(tmp_path / fmt, fmt=fmt)
        out = merge_example("ties.yml", family, tmp_path / fmt, "--out-shard-size", "40k")
        index = json.loads((out / "model.safetensors.index.json").read_text())
        shards = sorted(p.name for p in out.glob("model-*.safetensors"))
        assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        with CheckpointReader(out) as reader:
            assert index["metadata"]["total_size"] == sum(reader.info(n).nbytes for n in reader.names())
        assert not (out / "model.safetensors").exists()
        load_and_run(out)


def test_no_copy_tokenizer_and_no_model_card(family, tmp_path):
    out = merge_example("linear.yml", family, tmp_path, "--no-copy-tokenizer", "--no-write-model-card")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_tied_family_has_no_lm_head(tied_family, tmp_path):
    out = merge_example("task-arithmetic.yml", tied_family, tmp_path)
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    assert load_and_run(out).dtype == torch.bfloat16


def test_config_error_exit_2_one_line_no_output(family, tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text(example_config("ties.yml", family).replace("density:", "densty:", 1))
    result = run_cli("yaml", config, tmp_path / "out")
    assert result.exit_code == 2
    assert "unknown parameter 'densty' for ties (did you mean 'density'?)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_zero_weight_sum_is_an_error_naming_the_tensor(family, tmp_path):
    config = tmp_path / "zero.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {family['ft-a']}\n    parameters: {{weight: 1}}\n"
        f"  - model: {family['ft-b']}\n    parameters: {{weight: -1}}\n"
    )
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 2  # found while planning, before any tensor is read
    assert "tensor model.embed_tokens.weight" in result.output and "sum to zero" in result.output
    assert not (tmp_path / "out").exists()
    assert not any(".mergefast-" in p.name for p in tmp_path.iterdir())


def test_failure_mid_merge_keeps_existing_out(family, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("keep me")
    calls = []

    def failing(plan, job, tensors):
        calls.append(job.name)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(plan, job, tensors)

    import mergefast.execute as execute

    real = execute.merge_job
    monkeypatch.setattr(execute, "merge_job", failing)
    config = tmp_path / "linear.yml"
    config.write_text(example_config("linear.yml", family))
    result = run_cli("yaml", config, out, "--quiet")
    assert result.exit_code != 0
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert [p.name for p in tmp_path.iterdir() if ".mergefast-" in p.name] == []


def test_out_path_that_is_a_file(family, tmp_path):
    (tmp_path / "out").write_text("x")
    config = tmp_path / "linear.yml"
    config.write_text(example_config("linear.yml", family))
    result = run_cli("yaml", config, tmp_path / "out")
    assert result.exit_code == 2 and "is a file" in result.output


def test_existing_out_is_replaced(family, tmp_path):
    (tmp_path / "out").mkdir()  # a previous output: it has a config.json
    (tmp_path / "out" / "config.json").write_text("{}")
    (tmp_path / "out" / "stale.txt").write_text("x")
    out = merge_example("linear.yml", family, tmp_path)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()


def test_repo_id_resolved_offline_from_hub_cache(family, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = "f" * 40
    for key in ("base", "ft-a"):
        repo = cache / f"models--org--{key}"
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "blobs").mkdir()
        for i, f in enumerate(sorted(family[key].iterdir())):  # laid out as huggingface_hub does
            blob = repo / "blobs" / f"{i:064x}"
            shutil.copyfile(f, blob)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        (cache / f"models--org--{key}" / "refs").mkdir()
        (cache / f"models--org--{key}" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tmp_path / "slerp.yml"
    config.write_text(
        "merge_method: slerp\nbase_model: org/base\nmodels:\n  - model: org/base\n"
        "  - model: org/ft-a\nparameters: {t: 0.3}\n"
    )
    result = run_cli("yaml", config, tmp_path / "out", "--quiet", "--transformers-cache", cache)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "out" / "README.md").read_text()
    assert "org/base" in card and "https://huggingface.co/org/ft-a" in card
    load_and_run(tmp_path / "out")


def test_python_api(family, tmp_path):
    import mergefast

    stats = mergefast.merge(example_config("slerp-gradient.yml", family), tmp_path / "out", quiet=True)
    assert stats.tensors == 39 and stats.read_bytes > stats.written_bytes > 0
    with pytest.raises(Exception, match="unknown merge option 'cudaa'"):
        mergefast.merge(example_config("slerp-gradient.yml", family), tmp_path / "out2", cudaa=True)


@pytest.mark.parametrize(
    "option, value",
    [("cuda", "no"), ("copy_tokenizer", None), ("out_shard_size", [1]), ("random_seed", "abc"), ("stats_json", 5)],
)
def test_python_api_option_types_are_config_errors(family, tmp_path, option, value):
    """They escaped as TypeError/ValueError from deep inside, or (cuda="no") asked for a GPU."""
    import mergefast
    from mergefast.errors import ConfigError

    with pytest.raises(ConfigError, match=f"merge option {option}="):
        mergefast.merge(example_config("linear.yml", family), tmp_path / "out", **{option: value})


def test_python_api_dry_run_and_config_forms(family, tmp_path):
    import yaml

    import mergefast
    from mergefast.errors import ConfigError

    text = example_config("linear.yml", family)
    shown = mergefast.merge(yaml.safe_load(text), tmp_path / "out", dry_run=True)
    assert shown.startswith("plan for <config> (dry run") and not (tmp_path / "out").exists()
    for wrong in (text.encode(), None):
        with pytest.raises(ConfigError, match="config must be a path, YAML text"):
            mergefast.merge(wrong, tmp_path / "out")


def test_console_script_help():
    result = run_cli("yaml", "--help")
    assert result.exit_code == 0
    for flag in (
        "--cuda",
        "--device",
        "--out-shard-size",
        "--copy-tokenizer",
        "--write-model-card",
        "--allow-crimes",
        "--random-seed",
        "--transformers-cache",
        "--lazy-unpickle",
        "--trust-remote-code",
        "--quiet",
    ):
        assert flag in result.output
    assert os.environ.get("MERGEFAST_BACKEND") in (None, "", "torch", "cpu-ext")


def test_unsafe_truncate_embeddings_flag(tmp_path):
    from make_models import make_tiny_llama

    base = make_tiny_llama(tmp_path / "small", seed=0, vocab=32, layers=2, dtype=torch.float32)
    make_tiny_llama(tmp_path / "big", seed=1, vocab=34, layers=2, dtype=torch.float32)
    config = tmp_path / "linear.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'small'}\n"
        f"  - model: {tmp_path / 'big'}\nparameters: {{weight: 1}}\n"
    )
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 2 and "--unsafe-truncate-embeddings" in result.output
    result = run_cli("yaml", config, tmp_path / "out", "--quiet", "--unsafe-truncate-embeddings")
    assert result.exit_code == 0, result.output
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged["model.embed_tokens.weight"].shape == base["model.embed_tokens.weight"].shape
