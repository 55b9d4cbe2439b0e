"""`mergefast plan` and `mergefast yaml --dry-run`: validate, plan, print, write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import example_config, run_cli

from mergefast.config import load_config
from mergefast.options import MergeOptions
from mergefast.plan import build_plan
from mergefast.report import format_plan, peak_memory, sample_jobs, summarize_plan

EXAMPLES = ["linear.yml", "ties.yml", "task-arithmetic.yml", "slerp-gradient.yml", "passthrough-stack.yml"]


def _config(name, family, tmp_path) -> Path:
    path = tmp_path / name
    path.write_text(example_config(name, family))
    return path


@pytest.mark.parametrize("name", EXAMPLES)
def test_plan_and_dry_run_print_the_same_and_write_nothing(name, family, tmp_path):
    config = _config(name, family, tmp_path)
    out = tmp_path / "deep" / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    planned = run_cli("plan", config)
    assert planned.exit_code == 0, planned.stderr
    dry = run_cli("yaml", config, out, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # not even OUT's parent
    same = lambda text: [line for line in text.splitlines()[1:] if not line.startswith("output:")]  # noqa: E731
    assert same(planned.stdout) == same(dry.stdout)
    for text in ("output:", "bytes: read", "estimated peak memory:", "[first]", "[middle]", "[last]"):
        assert text in dry.stdout


def test_summary_numbers(family, tmp_path):
    config, text, source = load_config(_config("ties.yml", family, tmp_path))
    options = MergeOptions(out_shard_size=40_000)
    plan = build_plan(config, text, source, options)
    try:
        s = summarize_plan(plan, options, buffer_bytes=0)
        assert s["method"] == "ties" and s["output_tensors"] == len(plan.jobs) == 39
        assert s["read_bytes"] == sum(sum(src.info.nbytes for src in j.sources) for j in plan.jobs)
        tensor_bytes = sum((family["base"] / "model.safetensors").stat().st_size for _ in [0])
        assert 0 < s["write_bytes"] < tensor_bytes  # the tensors, without the header
        assert set(s["models"]) == {str(family[k]) for k in ("base", "ft-a", "ft-b", "ft-c")}
        assert all(m["tensors"] == 39 for m in s["models"].values())
        assert len(s["shards"]) > 1 and s["shards"][0] == f"model-00001-of-{len(s['shards']):05d}.safetensors"
        biggest = max(plan.jobs, key=lambda j: j.read_bytes)
        assert s["peak_memory_bytes"] == biggest.read_bytes + biggest.read_bytes // 4
        assert peak_memory(plan, 1000)[0] == s["peak_memory_bytes"] + 1000
        labels = [x["label"] for x in s["samples"]]
        assert labels == ["first", "middle", "last"]
        middle = s["samples"][1]
        assert middle["name"].startswith("model.layers.2.")
        ft_a = next(src for src in middle["sources"] if src["model"] == str(family["ft-a"]))
        assert ft_a["params"] == {"weight": 0.5, "density": 0.5}
        assert middle["global"]["normalize"] is True
        base = next(src for src in middle["sources"] if src["base"])
        assert base["model"] == str(family["base"])
        text = format_plan(plan, options, tmp_path / "out")
        assert "density=0.5" in text and f"-> {tmp_path / 'out'}" in text
    finally:
        plan.close()


def test_gradient_is_resolved_per_layer(family, tmp_path):
    config, text, source = load_config(_config("slerp-gradient.yml", family, tmp_path))
    plan = build_plan(config, text, source, MergeOptions())
    try:
        samples = dict(sample_jobs(plan.jobs))
        s = summarize_plan(plan, MergeOptions())
        middle = next(x for x in s["samples"] if x["label"] == "middle")
        assert samples["middle"].name == middle["name"]
        assert 0 <= middle["global"]["t"] <= 1
    finally:
        plan.close()


def test_dry_run_still_validates_out(family, tmp_path):
    config = _config("linear.yml", family, tmp_path)
    out = tmp_path / "out"
    out.write_text("a file")
    result = run_cli("yaml", config, out, "--dry-run")
    assert result.exit_code == 2 and "is a file" in result.stderr and result.stdout == ""
