"""The overlapped pipeline against the plain sequential path, budgets and stage failures."""

import pytest
import torch
from helpers import example_config, run_cli
from safetensors.torch import load_file

import mergefast
from mergefast.config import load_config
from mergefast.execute import run_job
from mergefast.options import MergeOptions
from mergefast.plan import build_plan

EXAMPLES = ["linear.yml", "ties.yml", "task-arithmetic.yml", "slerp-gradient.yml", "passthrough-stack.yml"]


def sequential_outputs(text: str) -> dict[str, torch.Tensor]:
    """Every output tensor computed one job at a time, without the pipeline."""
    config, text, source = load_config(text)
    plan = build_plan(config, text, source, MergeOptions(quiet=True))
    try:
        return {job.name: run_job(plan, job, "cpu") for job in plan.jobs}
    finally:
        plan.close()


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("max_memory", [None, "1"])  # "1": a budget smaller than any tensor group
def test_pipeline_is_bit_identical_to_the_sequential_path(name, max_memory, family, tmp_path):
    text = example_config(name, family)
    mergefast.merge(text, tmp_path / "out", quiet=True, max_memory=max_memory)
    merged = load_file(tmp_path / "out" / "model.safetensors")
    expected = sequential_outputs(text)
    assert set(merged) == set(expected)
    for tensor_name, tensor in expected.items():
        assert torch.equal(merged[tensor_name], tensor), tensor_name


def test_reader_failure_mid_run_stops_cleanly(family, tmp_path, monkeypatch):
    from mergefast.errors import ModelError
    from mergefast.io.reader import CheckpointReader

    real, calls = CheckpointReader.read, []

    def flaky(self, name, **kwargs):
        calls.append(name)
        if len(calls) == 20:
            raise ModelError(f"{self.folder}: file removed while merging ({name})")
        return real(self, name, **kwargs)

    monkeypatch.setattr(CheckpointReader, "read", flaky)
    config = tmp_path / "ties.yml"
    config.write_text(example_config("ties.yml", family))
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 1
    assert "file removed while merging" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".mergefast-" in p.name]


def test_writer_failure_mid_run_stops_cleanly(family, tmp_path, monkeypatch):
    from mergefast.io.writer import ShardedWriter

    real, calls = ShardedWriter.write, []

    def failing(self, name, tensor, start=None):
        calls.append(name)
        if len(calls) == 7:
            raise OSError(5, "Input/output error", str(self.folder))
        return real(self, name, tensor, start)

    monkeypatch.setattr(ShardedWriter, "write", failing)
    config = tmp_path / "linear.yml"
    config.write_text(example_config("linear.yml", family))
    result = run_cli("yaml", config, tmp_path / "out", "--quiet")
    assert result.exit_code == 1 and "Input/output error" in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".mergefast-" in p.name]


def test_stats_json_and_summary(family, tmp_path):
    import json

    config = tmp_path / "ties.yml"
    config.write_text(example_config("ties.yml", family))
    result = run_cli("yaml", config, tmp_path / "out", "--stats-json", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["tensors"] == 39 and stats["read_bytes"] > stats["written_bytes"] > 0
    from mergefast import kernels

    backend = kernels.backend("cpu")
    assert stats["backends"] == {"ties": backend} and stats["device"] == "cpu"
    assert "peak RSS" in result.output and f"backend {backend} (ties)" in result.output
