"""Merges side by side on the torch-free engine (host/side_by_side.py, io/merge_gate.py): two
jobs of a heavy method merge at once, each on its share of the OpenMP team; the jobs that
must run alone do, on the whole team; the bytes are those of one merge thread."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import pytest
import torch
from helpers import example_config, plan_of
from test_host_engine import REAL_TORCH_FREE, _same_folders

import mergefast
from mergefast import execute
from mergefast.host import merge as host_merge
from mergefast.host import ops, side_by_side
from mergefast.host.parts import TensorPart


@pytest.fixture
def watched(monkeypatch):
    """Torch-free in-process merges on a team of two; records each job's merge as (name, its
    team size, the names of the merges in progress as it starts)."""
    monkeypatch.setattr(execute, "torch_free", REAL_TORCH_FREE)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # host/ops.py `threads` in a process with torch
    lock, running, seen = threading.Lock(), set(), []
    real = host_merge.merge_host_job

    def spy(plan, job, *args, **kwargs):
        with lock:
            running.add(job.name)
            seen.append((job.name, ops.threads(), frozenset(running)))
        try:
            time.sleep(0.003)  # long enough for the other merge thread to take the next job
            return real(plan, job, *args, **kwargs)
        finally:
            with lock:
                running.discard(job.name)

    monkeypatch.setattr(host_merge, "merge_host_job", spy)
    return seen


@pytest.mark.parametrize("method", ["ties", "della", "sce"])
def test_heavy_merges_run_side_by_side_with_the_bytes_of_one_thread(method, family, tmp_path, watched, monkeypatch):
    text = example_config("ties.yml", family).replace("merge_method: ties", f"merge_method: {method}")
    if method == "sce":
        lines = [line for line in text.splitlines() if "density" not in line]
        text = "\n".join(lines).replace("normalize: true", "select_topk: 0.5")
    plan = plan_of(text)
    largest = max(math.prod(job.shape) for job in plan.jobs)
    monkeypatch.setattr(side_by_side, "ALONE_MIN_ELEMENTS", largest)  # embeddings and lm_head run alone
    alone = {job.name for job in plan.jobs if math.prod(job.shape) >= largest}
    config = tmp_path / "c.yml"
    config.write_text(text)
    mergefast.merge(config, tmp_path / "two" / "out", quiet=True)  # the model card names the folder
    two = list(watched)
    watched.clear()
    monkeypatch.setattr(side_by_side, "mergers", lambda plan, threads: 1)
    mergefast.merge(config, tmp_path / "one" / "out", quiet=True)
    _same_folders(tmp_path / "two" / "out", tmp_path / "one" / "out")
    assert max(len(running) for _, _, running in two) == 2, "no two merges ran at once"
    for name, team, running in two:
        assert team == (2 if name in alone else 1), name
        assert len(running) == 1 or not running & alone, (name, running)
    assert all(team == 2 and len(running) == 1 for _, team, running in watched)


def test_which_plans_and_jobs_merge_side_by_side(family):
    names = ("ties.yml", "linear.yml", "slerp-gradient.yml", "task-arithmetic.yml")
    ties, *light = (plan_of(example_config(name, family)) for name in names)
    assert side_by_side.mergers(ties, 2) == 2 and side_by_side.mergers(ties, 16) == 2
    assert side_by_side.mergers(ties, 1) == 1  # a team of one: nothing to share
    assert [side_by_side.mergers(plan, 2) for plan in light] == [1, 1, 1]  # no selection step
    job = ties.jobs[0]
    big = dataclasses.replace(job, shape=(side_by_side.ALONE_MIN_ELEMENTS,))
    assert not side_by_side.runs_alone(job, frozenset())
    assert side_by_side.runs_alone(job, frozenset({job.name}))  # merged with torch: torch's threads
    assert side_by_side.runs_alone(big, frozenset())
    assert side_by_side.runs_alone(TensorPart(job, 0, 1), frozenset())  # parts keep their order
