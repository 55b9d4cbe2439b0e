"""The options schema (`mergefast.options.OPTIONS`) is the one list of merge options: every
entry is a flag of every merge command, a `MergeOptions` field with the same default, and a
keyword the Python API checks; `mergefast.run.run` is the one run behind `merge()` and the
commands."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click
import pytest
import torch
import yaml
from helpers import run_cli

import mergefast
import mergefast.plan
from mergefast.cli import main
from mergefast.errors import ConfigError
from mergefast.legacy import bakllama_command, legacy_command
from mergefast.multi import multi_command
from mergefast.options import MAX_SEED, OPTIONS, MergeOptions

COMMANDS = {
    "yaml": main.commands["yaml"],
    "plan": main.commands["plan"],
    "legacy": legacy_command,
    "bakllama": bakllama_command,
    "multi": multi_command,
}
# a value of the wrong type for each kind, as a Python caller might pass it
WRONG = {"bool": "no", "int": "7", "count": 1.5, "text": 3, "path": ["x"], "memory": "lots", "size": [1]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_is_a_flag_of_every_command(command):
    params = {p.name: p for p in COMMANDS[command].params}
    for option in OPTIONS:
        assert option.name in params, (command, option.name)
        param = params[option.name]
        assert option.flag in param.opts
        assert param.help == option.help
        if option.kind == "bool":
            assert param.secondary_opts == [f"--no-{option.flag[2:]}"]


def test_every_option_is_a_field_with_its_default():
    assert [f.name for f in dataclasses.fields(MergeOptions)] == [o.name for o in OPTIONS]
    defaults = MergeOptions()
    for option in OPTIONS:
        assert getattr(defaults, option.name) == option.default, option.name


def test_cli_defaults_are_the_api_defaults():
    """The flags' defaults, checked as the commands check them, give MergeOptions()."""
    command = main.commands["yaml"]
    context, params = click.Context(command), {p.name: p for p in command.params}
    given = {o.name: params[o.name].get_default(context) for o in OPTIONS}
    assert MergeOptions.from_kwargs(**given) == MergeOptions()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_api_rejects_a_wrong_type_for_every_option(option):
    with pytest.raises(ConfigError, match=f"{option.name}|{option.flag}") as e:
        MergeOptions.from_kwargs(**{option.name: WRONG[option.kind]})
    assert "\n" not in str(e.value)


def test_api_and_cli_check_the_seed_range():
    with pytest.raises(ConfigError, match=r"random_seed=-1 \(--random-seed\): give a whole number from 0"):
        MergeOptions.from_kwargs(random_seed=-1)
    assert MergeOptions.from_kwargs(random_seed=MAX_SEED).random_seed == MAX_SEED
    result = run_cli("plan", "cfg.yml", "--random-seed", MAX_SEED + 1)
    assert result.exit_code == 2 and "outside the seeds mergefast supports" in result.output


def test_api_parses_sizes_and_paths():
    opts = MergeOptions.from_kwargs(out_shard_size="1B", stats_json=Path("s.json"), max_memory="4g")
    assert (opts.out_shard_size, opts.stats_json, opts.max_memory) == (1_000_000_000, "s.json", "4g")
    with pytest.raises(ConfigError, match="out_shard_size=0: give a positive size"):
        MergeOptions.from_kwargs(out_shard_size="0")


def _config(family) -> dict:
    return {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [{"model": str(family[n]), "parameters": {"weight": 0.5}} for n in ("ft-a", "ft-b")],
    }


def test_merge_dry_run_prints_what_plan_prints(family, tmp_path):
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(_config(family)))
    out = str(tmp_path / "out")
    result = run_cli("plan", config, out)
    assert result.exit_code == 0, result.output
    assert mergefast.merge(str(config), out, dry_run=True) + "\n" == result.output


def test_merge_checks_out_and_device_before_planning(family, tmp_path, monkeypatch):
    """merge() checks what needs no model first, as the commands do: no plan is built."""

    def no_planning(*args, **kwargs):
        raise AssertionError("planned")

    monkeypatch.setattr(mergefast.plan, "build_plan", no_planning)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        mergefast.merge(_config(family), tmp_path / "file")
    with pytest.raises(ConfigError, match="--device"):
        mergefast.merge(_config(family), tmp_path / "out", device="tpu")


def test_no_safe_serialization_is_refused_before_any_model_is_read(tmp_path):
    """mergekit's --no-safe-serialization writes pytorch_model.bin; mergefast writes only
    safetensors, so the flag is a usage error naming what to do, on both sides."""
    result = run_cli("yaml", tmp_path / "missing.yml", tmp_path / "out", "--no-safe-serialization")
    assert result.exit_code == 2
    assert "safetensors only" in result.output and "drop --no-safe-serialization" in result.output
    with pytest.raises(ConfigError, match=r"safe_serialization=False \(--safe-serialization\): mergefast writes"):
        MergeOptions.from_kwargs(safe_serialization=False)


@pytest.mark.parametrize("option", ["num_threads", "write_threads"])
def test_thread_counts_must_be_positive(option, tmp_path):
    flag = "--" + option.replace("_", "-")
    result = run_cli("plan", tmp_path / "missing.yml", flag, 0)
    assert result.exit_code == 2 and "0 threads: give a whole number of at least 1" in result.output
    with pytest.raises(ConfigError, match=f"{option}=0 \\({flag}\\): give a whole number of at least 1"):
        MergeOptions.from_kwargs(**{option: 0})


@pytest.mark.parametrize("flag", ["--multi-gpu", "--gpu-rich"])
def test_mergekit_gpu_flags_ask_for_gpu_math(flag, family, tmp_path):
    """--multi-gpu and --gpu-rich imply mergekit's --cuda; --device still overrides them."""
    opts = MergeOptions.from_kwargs(**{flag[2:].replace("-", "_"): True})
    assert opts.gpu_flag == flag
    assert MergeOptions.from_kwargs(multi_gpu=True, device="cpu").math_device == "cpu"
    if torch.cuda.is_available():
        assert opts.math_device == "cuda"
        return
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(_config(family)))
    result = run_cli("yaml", config, tmp_path / "out", flag)
    assert result.exit_code == 2 and f"{flag} was given but torch sees no CUDA device" in result.output


def test_mergekit_flags_that_change_nothing_give_the_same_model(family, tmp_path):
    """A mergekit command line runs as it is: the flags mergefast accepts without effect (its
    way of working already meets them) and -j 1 give the same files as none."""
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(_config(family)))
    plain = run_cli("yaml", config, tmp_path / "plain", "--quiet")
    assert plain.exit_code == 0, plain.output
    flags = ["--low-cpu-memory", "--read-to-gpu", "--clone-tensors", "--async-write", "--write-threads", 4]
    flags += ["--safe-serialization", "--lora-merge-cache", tmp_path / "lora", "--lora-merge-dtype", "float16"]
    result = run_cli("yaml", config, tmp_path / "flags", "--quiet", "-j", 1, *flags)
    assert result.exit_code == 0, result.output
    for path in sorted((tmp_path / "plain").iterdir()):
        flagged = (tmp_path / "flags" / path.name).read_bytes()
        assert flagged.replace(b"# flags", b"# plain") == path.read_bytes(), path.name  # the card's title
    assert not (tmp_path / "lora").exists()


def test_thread_count_sets_the_kernels_and_torch_then_restores_them(monkeypatch):
    from mergefast import native
    from mergefast.host import ops

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with native.thread_count(1):
        assert (native.default_threads(), torch.get_num_threads(), ops.threads()) == (1, 1, 1)
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ
    with native.thread_count(None):
        assert torch.get_num_threads() == before
