"""`mergefast multi` (mergekit-multi): several merges in one file, a merge reading another by
its `name` (mergefast/multi.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import run_cli


def _stage(family) -> str:
    return (
        "name: stage1\nmerge_method: linear\ndtype: bfloat16\nmodels:\n"
        f"  - {{model: {family['ft-a']}, parameters: {{weight: 0.5}}}}\n"
        f"  - {{model: {family['ft-b']}, parameters: {{weight: 0.5}}}}\n"
    )


def _final(family, stage: str = "stage1") -> str:
    return (
        f"merge_method: ties\ndtype: bfloat16\nbase_model: {family['base']}\nmodels:\n"
        f"  - {{model: {stage}, parameters: {{weight: 0.6, density: 0.5}}}}\n"
        f"  - {{model: {family['ft-c']}, parameters: {{weight: 0.4, density: 0.5}}}}\n"
    )


def _multi(tmp_path: Path, *documents: str, args=()):
    config = tmp_path / "multi.yml"
    config.write_text("---\n".join(documents))
    return run_cli("multi", config, "-I", tmp_path / "inter", "--out-path", tmp_path / "out", "--quiet", *args)


@pytest.mark.parametrize("final_first", [False, True], ids=["in-order", "final-first"])
def test_a_two_stage_merge_is_the_two_merges_run_by_hand(family, tmp_path, final_first):
    documents = [_final(family), _stage(family)] if final_first else [_stage(family), _final(family)]
    result = _multi(tmp_path, *documents)
    assert result.exit_code == 0, result.output
    (tmp_path / "stage.yml").write_text(_stage(family))
    stage = run_cli("yaml", tmp_path / "stage.yml", tmp_path / "by-hand-stage", "--quiet")
    (tmp_path / "final.yml").write_text(_final(family, str(tmp_path / "by-hand-stage")))
    final = run_cli("yaml", tmp_path / "final.yml", tmp_path / "by-hand", "--quiet")
    assert stage.exit_code == final.exit_code == 0, stage.output + final.output
    for folder, by_hand in (("inter/stage1", "by-hand-stage"), ("out", "by-hand")):
        got = (tmp_path / folder / "model.safetensors").read_bytes()
        assert got == (tmp_path / by_hand / "model.safetensors").read_bytes(), folder
    written = (tmp_path / "out" / "mergekit_config.yml").read_text()  # runs alone: the folder, not the name
    assert f"model: {tmp_path / 'inter' / 'stage1'}" in written and "model: stage1" not in written


def test_lazy_skips_a_written_merge_and_no_lazy_merges_it_again(family, tmp_path):
    assert _multi(tmp_path, _stage(family), _final(family)).exit_code == 0
    weights = tmp_path / "inter" / "stage1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # a new mtime
    written = weights.stat().st_mtime_ns
    again = _multi(tmp_path, _stage(family), _final(family))
    assert again.exit_code == 0 and "holds a model already; skipped" in again.output
    assert weights.stat().st_mtime_ns == written
    fresh = _multi(tmp_path, _stage(family), _final(family), args=["--no-lazy"])
    assert fresh.exit_code == 0 and "skipped" not in fresh.output
    assert weights.stat().st_mtime_ns != written


BAD = {
    "cycle": (["name: a\n{final_b}", "name: b\n{final_a}"], "in a cycle: a -> b -> a"),
    "same-name": (["{stage}", "{stage}"], "two merges are named 'stage1'"),
    "two-unnamed": (["{final}", "{final}"], "two merges have no name"),
    "folder-name": (["name: ../up\n{final}"], "give a plain folder name"),
    "not-a-mapping": (["- a\n- b\n", "{final}"], r"document 1, line 1\): expected a mapping with `merge_method`"),
    "bad-key-in-the-last": (["{stage}", "{final}merge_methd: ties\n"], r"document 2.*unknown key 'merge_methd'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_refused_before_any_merge(case, family, tmp_path):
    texts, message = BAD[case]
    parts = {"stage": _stage(family), "final": _final(family), "final_a": _final(family, "a")}
    parts["final_b"] = _final(family, "b")
    result = _multi(tmp_path, *(t.format(**parts) for t in texts))
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "inter").exists() and not (tmp_path / "out").exists()


def test_an_unnamed_merge_needs_out_path(family, tmp_path):
    config = tmp_path / "multi.yml"
    config.write_text("---\n".join([_stage(family), _final(family)]))
    result = run_cli("multi", config, "-I", tmp_path / "inter")
    assert result.exit_code == 2 and "give --out-path" in result.output, result.output
