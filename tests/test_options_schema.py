"""The options schema (`mergefast.options.OPTIONS`) is the one list of merge options: every
entry is a flag of every merge command, a `MergeOptions` field with the same default, and a
keyword the Python API checks; `mergefast.run.run` is the one run behind `merge()` and the
commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
import yaml
from helpers import run_cli

import mergefast
import mergefast.plan
from mergefast.cli import main
from mergefast.errors import ConfigError
from mergefast.legacy import bakllama_command, legacy_command
from mergefast.options import MAX_SEED, OPTIONS, MergeOptions

COMMANDS = {
    "yaml": main.commands["yaml"],
    "plan": main.commands["plan"],
    "legacy": legacy_command,
    "bakllama": bakllama_command,
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
