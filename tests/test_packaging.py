"""The install declares what the package needs: a fresh `pip install -e .` (the README's first
Quick start command) must run a merge with nothing else installed."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# imported only behind a guard that names the package to install (or the torch path runs)
OPTIONAL = {"triton", "transformers", "tokenizers"}
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def _imported(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_import_is_a_declared_dependency():
    """Third-party modules imported anywhere in mergefast/ are in [project] dependencies,
    except the guarded optional ones; Tensor.numpy() (the reader's and writer's buffers)
    needs numpy, which torch does not install."""
    needed = set()
    for path in (ROOT / "mergefast").rglob("*.py"):
        source = path.read_text()
        needed |= _imported(source)
        if ".numpy()" in source:
            needed.add("numpy")
    third_party = {n for n in needed if n not in sys.stdlib_module_names and n != "mergefast"}
    missing = {DISTRIBUTION.get(n, n) for n in third_party - OPTIONAL} - _declared()
    assert not missing, f"imported but not in pyproject.toml's dependencies: {sorted(missing)}"
