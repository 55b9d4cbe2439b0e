"""Errors that must blame the right thing: a `--stats-json` file that cannot
be written after a finished merge, and a `--random-seed` outside the supported range. (Bad
model files are in the bad-input corpus, tests/bad_inputs.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import run_cli

import mergefast
from mergefast.errors import ConfigError, MergefastError
from mergefast.options import MAX_SEED

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"


@pytest.fixture
def dare_config(tmp_path) -> Path:
    """A DARE-TIES merge of the committed tiny models (a random method: the seed is used)."""
    config = tmp_path / "config.yml"
    config.write_text(
        f"merge_method: dare_ties\nbase_model: {MODELS / 'base'}\nmodels:\n"
        f"  - model: {MODELS / 'ft-a'}\n    parameters: {{weight: 1, density: 0.5}}\n"
        f"  - model: {MODELS / 'ft-b'}\n    parameters: {{weight: 1, density: 0.5}}\n"
    )
    return config


def _assert_out_complete(out: Path) -> None:
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(out.parent.glob(f".{out.name}.mergefast-partial-*"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (writes fail with ENOSPC)")
def test_stats_json_that_cannot_be_written_keeps_out(dare_config, tmp_path):
    """It was reported as OUT's error ('OUT: No space left on device') though OUT was complete."""
    out = tmp_path / "out"
    result = run_cli("yaml", dare_config, out, "--quiet", "--stats-json", "/dev/full")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("mergefast: error: --stats-json /dev/full: cannot write")
    assert "No space left on device" in lines[0] and f"{out} is complete" in lines[0]
    _assert_out_complete(out)


def test_stats_json_permission_denied_keeps_out(dare_config, tmp_path, monkeypatch):
    """Any OSError writing the stats names the stats file (here EACCES, which root never gets
    from a read-only folder, so it is simulated) and removes what was half-written."""
    import mergefast.summary as summary

    stats = tmp_path / "stats.json"
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self == stats:
            real(self, "{", encoding="utf-8")  # a partial file, as a failing write leaves one
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(summary.Path, "write_text", write_text)
    out = tmp_path / "out"
    result = run_cli("yaml", dare_config, out, "--quiet", "--stats-json", stats)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"--stats-json {stats}: cannot write the run summary (Permission denied)" in result.stderr
    assert "is complete" in result.stderr and not stats.exists()
    _assert_out_complete(out)


@pytest.mark.parametrize("seed", [str(MAX_SEED + 1), "-1", str(10**30)])
def test_random_seed_out_of_range_is_a_usage_error(dare_config, tmp_path, seed):
    out = tmp_path / "out"
    result = run_cli("yaml", dare_config, out, "--quiet", "--random-seed", seed)
    stderr = result.stderr
    assert result.exit_code == 2 and "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert "Invalid value for '--random-seed'" in result.stderr and f"from 0 to {MAX_SEED}" in result.stderr
    assert not out.exists()


def test_largest_seed_merges(dare_config, tmp_path):
    out = tmp_path / "out"
    result = run_cli("yaml", dare_config, out, "--quiet", "--random-seed", MAX_SEED)
    assert result.exit_code == 0, result.stderr
    _assert_out_complete(out)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_python_api_seed_out_of_range_names_the_option(dare_config, tmp_path, seed):
    with pytest.raises(ConfigError, match=r"random_seed=.*from 0 to") as e:
        mergefast.merge(dare_config, tmp_path / "out", random_seed=seed, quiet=True)
    assert isinstance(e.value, MergefastError) and not (tmp_path / "out").exists()
