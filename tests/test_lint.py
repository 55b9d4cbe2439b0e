"""ruff (the version pinned in the test extras) finds nothing and would reformat nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m ruff ARGS` on the repository (settings from pyproject.toml)."""
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_is_clean():
    result = _ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = _ruff("format", "--no-cache", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_covers_the_package_not_build_folders():
    """ruff reads .gitignore: the package is linted, build output and virtual environments are not."""
    listed = _ruff("check", "--no-cache", "--show-files", ".").stdout.splitlines()
    assert any(line.endswith("mergefast/__init__.py") for line in listed)
    assert not any("/build/" in line or "/.venvs/" in line for line in listed)
