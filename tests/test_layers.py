"""The import layers of mergefast (issue 16): the contracts in `.importlinter` hold, and the
module import graph has no cycle, function-level imports counted."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / ".importlinter"


def _module_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_module_cycles_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _module_cycles(edges) == [["a", "b", "c"]]
    assert _module_cycles({"a": {"b"}, "b": set()}) == []


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


def test_no_import_cycles():
    """No two mergefast modules import each other, even through function-level imports."""
    grimp = pytest.importorskip("grimp", reason="grimp (installed with import-linter) is not installed")
    graph = grimp.build_graph("mergefast", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _module_cycles(edges) == []
