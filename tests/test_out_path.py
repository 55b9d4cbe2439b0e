"""OUT is replaced whole at the end of a merge: folders whose loss would hurt are refused
before any tensor is read, and a signal during the swap cannot leave OUT missing."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import example_config, run_cli

from mergefast.execute import replace_folder


@pytest.fixture
def work(family, tmp_path) -> dict:
    """A config file beside some files of the user's, and copies of two input models."""
    import shutil

    models = tmp_path / "models"
    for key in ("base", "ft-a", "ft-b", "ft-c"):
        shutil.copytree(family[key], models / key)
    config = tmp_path / "linear.yml"
    config.write_text(example_config("linear.yml", {k: models / k for k in family}))
    (tmp_path / "thesis.txt").write_text("years of work")
    return {"root": tmp_path, "config": config, "models": models}


@pytest.mark.parametrize("out", [".", "", "..", "models", "models/ft-a", "elsewhere"])
def test_folders_that_would_be_lost_are_refused(work, out):
    root = work["root"]
    if out == "elsewhere":  # a folder of other files
        (root / "elsewhere").mkdir()
        (root / "elsewhere" / "keep").write_text("mine")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    result = run_cli("yaml", work["config"], out, "--quiet", cwd=root)
    assert result.exit_code == 2, result.output
    assert "output path" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_out_holding_the_config_file_is_refused(work, tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    config = sub / "c.yml"
    config.write_text(work["config"].read_text())
    result = run_cli("yaml", config, sub, "--quiet")
    assert result.exit_code == 2 and "an input of this merge" in result.output and config.exists()


def test_a_previous_output_is_replaced_and_tilde_expands(work, monkeypatch):
    root = work["root"]
    monkeypatch.setenv("HOME", str(root))
    for _ in range(2):  # the second run replaces the first one's output
        result = run_cli("yaml", work["config"], "~/merged", "--quiet", cwd=root)
        assert result.exit_code == 0, result.output
    assert (root / "merged" / "model.safetensors").exists() and not (root / "~").exists()


def test_stats_json_is_checked_before_the_merge(work):
    root = work["root"]
    for stats, why in (
        (root / "nope" / "s.json", "does not exist"),
        (root, "is a directory"),
        (root / "out" / "s.json", "inside the output folder"),
    ):
        result = run_cli("yaml", work["config"], root / "out", "--quiet", "--stats-json", stats)
        assert result.exit_code == 2 and why in result.output, result.output
        assert not (root / "out").exists()


def test_out_below_a_file_or_a_dangling_link(work):
    root = work["root"]
    result = run_cli("plan", work["config"], root / "thesis.txt" / "sub")
    assert result.exit_code == 2 and "which is a file" in result.output, result.output
    (root / "link").symlink_to(root / "missing")
    result = run_cli("yaml", work["config"], root / "link", "--quiet")
    assert result.exit_code == 2 and "dangling" in result.output, result.output


@pytest.mark.parametrize("existing", [False, True])
def test_a_signal_during_the_swap_waits_for_it(tmp_path, monkeypatch, existing):
    """Ctrl-C between the two renames once left OUT missing and the old model hidden."""
    tmp, out = tmp_path / ".out.partial", tmp_path / "out"
    tmp.mkdir()
    (tmp / "config.json").write_text("new")
    if existing:
        out.mkdir()
        (out / "config.json").write_text("old")
    real = os.rename

    def rename_then_interrupt(src, dst):
        real(src, dst)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "rename", rename_then_interrupt)
    replace_folder(tmp, out)  # no KeyboardInterrupt: the signal was held and dropped
    assert (out / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
