"""The import layers of mergefast: the contracts in `.importlinter` hold, and the module
import graph has no cycle, function-level imports counted."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / ".importlinter"


def test_import_contracts_are_kept(capsys, monkeypatch):
    """`lint-imports` with `.importlinter`: layers, and methods/ (the spec) imports no kernel."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install import-linter)")
    from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports puts the cwd on sys.path
    # lint_imports configures logging (dictConfig), which disables every logger made before it:
    # the `mergefast` logger's warnings would be lost to every later test
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            monkeypatch.setattr(logger, "disabled", logger.disabled)
    status = lint_imports(config_filename=str(CONTRACTS), no_cache=True, no_logo=True)
    assert status == EXIT_STATUS_SUCCESS, capsys.readouterr().out


def _import_cycles(graph) -> list[tuple[str, ...]]:
    """Each direct import a -> b where b also reaches a, as the shortest chain b -> ... -> a."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append((importer, *back))
    return cycles


def test_import_cycle_is_found():
    grimp = pytest.importorskip("grimp", reason="grimp (installed with import-linter) is not installed")
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")):
        graph.add_import(importer=a, imported=b)
    assert _import_cycles(graph) == [
        ("p.a", "p.b", "p.c", "p.a"),
        ("p.b", "p.c", "p.a", "p.b"),
        ("p.c", "p.a", "p.b", "p.c"),
    ]


def test_no_import_cycles():
    """No two mergefast modules import each other, even through function-level imports."""
    grimp = pytest.importorskip("grimp", reason="grimp (installed with import-linter) is not installed")
    graph = grimp.build_graph("mergefast", cache_dir=None)
    assert _import_cycles(graph) == []
