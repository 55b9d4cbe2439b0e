"""The overlapped read -> merge -> write pipeline: order, budget, failures without hangs."""

import threading
import time

import pytest
import torch

from mergefast.io.pipeline import run_pipeline


def run(jobs, *, read=None, merge=None, write=None, budget=100, cost=lambda j: 10, readers=1, mergers=1, alone=None):
    written = []
    times = run_pipeline(
        jobs,
        read or (lambda j: f"data{j}"),
        merge or (lambda j, d: str(d).upper()),
        write or (lambda j, out: written.append((j, out))),
        cost=cost,
        budget=budget,
        readers=readers,
        mergers=mergers,
        alone=alone or (lambda j: True),
    )
    return written, times


def test_every_job_in_order():
    written, times = run(list(range(50)))
    assert written == [(i, f"DATA{i}") for i in range(50)]
    assert times.wall_s >= 0 and times.merge_s >= 0


def test_budget_smaller_than_one_job_runs_one_at_a_time():
    in_flight, peak = [0], [0]
    lock = threading.Lock()

    def read(j):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        return j

    def write(j, out):
        time.sleep(0.001)
        with lock:
            in_flight[0] -= 1

    written, _ = run(list(range(20)), read=read, write=write, budget=5, cost=lambda j: 10)
    assert peak[0] == 1


def test_budget_allows_read_ahead():
    started = []
    gate = threading.Event()

    def merge(j, d):
        if j == 0:
            assert gate.wait(5), "the reader did not read ahead while job 0 was merging"
        return d

    def read(j):
        started.append(j)
        if j == 2:
            gate.set()
        return j

    run(list(range(5)), read=read, merge=merge, budget=100, cost=lambda j: 10)
    assert started == list(range(5))


def test_several_readers_read_jobs_at_once_within_the_budget():
    """readers=3: three reads overlap (each waits for the others to start), every job is
    merged and written once, and the budget still bounds what is in flight."""
    lock, peak, in_flight = threading.Lock(), [0], [0]
    three = threading.Barrier(3)

    def read(j):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        if j < 3:
            three.wait(5)  # raises BrokenBarrierError unless three reads run at once
        return j

    written = []

    def write(j, out):
        with lock:
            in_flight[0] -= 1
            written.append(j)

    run(list(range(40)), read=read, write=write, budget=40, cost=lambda j: 10, readers=3)
    assert sorted(written) == list(range(40))
    assert 3 <= peak[0] <= 4


def test_several_readers_with_a_full_budget_do_not_hang():
    """readers=3 and a budget of two jobs: the third reader waits for the budget while the
    first two finish their reads, and they must still hand their jobs on (they once waited
    for the lock that the third held while it waited: a streamed merge hung there)."""
    done = []

    def read(j):
        time.sleep(0.05 if j < 2 else 0)  # the third reader is waiting for budget by then
        return j

    worker = threading.Thread(
        target=lambda: done.append(run(list(range(6)), read=read, budget=20, cost=lambda j: 10, readers=3)[0]),
        daemon=True,
    )
    worker.start()
    worker.join(20)
    assert done and sorted(j for j, _ in done[0]) == list(range(6)), "the pipeline hung"


@pytest.mark.parametrize("readers, mergers", [(1, 1), (3, 1), (1, 2)])
@pytest.mark.parametrize("stage", ["read", "merge", "write"])
def test_failure_in_any_stage_is_raised_without_hanging(stage, readers, mergers):
    def boom(*args):
        if args[0] == 7:
            raise OSError(28, f"{stage} failed")
        return args[-1] if stage != "read" else args[0]

    raised = []

    def attempt():
        try:
            run(list(range(100)), **{stage: boom}, readers=readers, mergers=mergers, alone=lambda j: j % 5 == 0)
        except OSError as exc:
            raised.append(exc)

    before = threading.active_count()
    caller = threading.Thread(target=attempt)
    caller.start()
    caller.join(timeout=60)  # a hang would leave the caller blocked
    assert not caller.is_alive(), "run_pipeline hung after a stage failed"
    assert len(raised) == 1 and f"{stage} failed" in str(raised[0])
    time.sleep(0.3)
    assert threading.active_count() <= before


@pytest.mark.parametrize("mergers", [1, 2])
def test_keyboard_interrupt_in_merge_stops_threads(mergers):
    def merge(j, d):
        if j == 3:
            raise KeyboardInterrupt
        return d

    with pytest.raises(KeyboardInterrupt):
        run(list(range(1000)), merge=merge, mergers=mergers, alone=lambda j: j % 7 == 0)
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("mergefast-")]


def test_two_merge_threads_run_jobs_side_by_side_and_the_ones_that_run_alone_alone_in_order():
    """Jobs merge two at a time; a job that runs alone starts once every earlier job has ended
    and ends before any later one starts (io/merge_gate.py)."""
    lock, running, events, peak = threading.Lock(), set(), [], [0]

    def merge(j, d):
        with lock:
            running.add(j)
            peak[0] = max(peak[0], len(running))
            events.append(("start", j))
        time.sleep(0.002)
        with lock:
            running.discard(j)
            events.append(("end", j))
        return d

    alone = {0, 7, 8, 20, 39}
    written, _ = run(list(range(40)), merge=merge, mergers=2, alone=alone.__contains__)
    assert sorted(j for j, _ in written) == list(range(40))
    assert peak[0] == 2
    at = {event: i for i, event in enumerate(events)}
    for j in alone:
        assert all(at[("end", k)] < at[("start", j)] for k in range(j)), j
        assert all(at[("start", k)] > at[("end", j)] for k in range(j + 1, 40)), j


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4g", 4_000_000_000),
        ("500m", 500_000_000),
        ("500MB", 500_000_000),
        ("2.5g", 2_500_000_000),
        ("1000", 1000),
        (4096, 4096),
        ("4B", 4_000_000_000),
    ],
)
def test_parse_memory(text, expected):
    from mergefast.options import parse_memory

    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["0", "abc", "-5", "200%", "1.5x", "inf", "nan", "1e400g"])
def test_parse_memory_errors(text):
    from mergefast.errors import ConfigError
    from mergefast.options import MergeOptions

    with pytest.raises(ConfigError, match="--max-memory"):
        MergeOptions.from_kwargs(max_memory=text)


@pytest.mark.parametrize(
    "device, why", [("bogus", "not a device name"), ("cuda:7", "CUDA device"), ("meta", "cpu or cuda")]
)
def test_bad_device_is_a_usage_error(device, why, monkeypatch):
    """--device was an internal error (exit 1), found only after planning."""
    import torch

    from mergefast.errors import ConfigError
    from mergefast.options import MergeOptions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=why):
        _ = MergeOptions.from_kwargs(device=device).math_device
    assert MergeOptions.from_kwargs(device="cpu").math_device == "cpu"


def test_automatic_budget_is_twice_the_largest_job_within_bounds():
    from mergefast.options import AUTO_MEMORY_MIN, MergeOptions, physical_memory

    opts = MergeOptions()
    assert opts.pipeline_budget(10) == AUTO_MEMORY_MIN
    assert opts.pipeline_budget(400_000_000) == min(800_000_000, physical_memory() // 4)
    assert opts.pipeline_budget(physical_memory()) == physical_memory() // 4
    assert MergeOptions(max_memory="25%").pipeline_budget(1) == int(physical_memory() * 0.25)


def test_budget_of_resident_inputs_is_the_largest_job_and_two_typical_ones():
    from mergefast.options import MergeOptions, physical_memory

    opts = MergeOptions()
    assert opts.pipeline_budget(400_000_000, 30_000_000) == min(460_000_000, physical_memory() // 4)
    assert opts.pipeline_budget(400_000_000, 300_000_000) == opts.pipeline_budget(400_000_000)  # never above 2x
    assert opts.pipeline_budget(100_000_000, 1_000) == 100_002_000  # no 256 MB floor: a memory copy
    assert MergeOptions(max_memory="1GB").pipeline_budget(400_000_000, 30_000_000) == 1_000_000_000


def test_merge_budget_follows_the_page_cache(tmp_path, monkeypatch):
    """execute's budget: the largest job plus two median ones while the inputs are resident,
    twice the largest job when they are not or the merge runs on CUDA, --max-memory whatever
    they are."""
    from mergefast import execute
    from mergefast.options import MergeOptions, physical_memory

    class Info:
        def __init__(self, n):
            self.file, self.data_offsets, self.nbytes = tmp_path / "w", (8, 8 + n), n

    class Job:
        def __init__(self, n):  # its output as large as its input
            self.sources, self.read_bytes, self.out_bytes = [type("S", (), {"info": Info(n)})()], n, n

    mb = 1_000_000
    plan = type("Plan", (), {"jobs": [Job(200 * mb), Job(10 * mb), Job(20 * mb), Job(30 * mb)]})
    spans = []
    monkeypatch.setattr(execute, "inputs_resident", lambda s: spans.extend(s) or True)
    cap = physical_memory() // 4
    assert execute._budget(plan, plan.jobs, MergeOptions(), "cpu") == min(400 * mb + 2 * 60 * mb, cap)
    assert spans == [(tmp_path / "w", 8, 8 + n * mb) for n in (200, 10, 20, 30)]
    monkeypatch.setattr(execute, "inputs_resident", lambda s: False)
    assert execute._budget(plan, plan.jobs, MergeOptions(), "cpu") == min(800 * mb, cap)
    assert execute._budget(plan, plan.jobs, MergeOptions(max_memory="300MB"), "cpu") == 300 * mb
    monkeypatch.setattr(execute, "inputs_resident", lambda s: True)
    assert execute._budget(plan, plan.jobs, MergeOptions(), "cuda") == min(800 * mb, cap)  # the pinned ring's


def _one_tensor_job(reader, name):
    """A stand-in plan with one model "m" read by `reader`, and a job merging its tensor."""

    class Source:
        def __init__(self):
            self.model, self.tensor, self.info = "m", name, reader.info(name)

    plan = type("Plan", (), {"models": {"m": type("M", (), {"reader": reader})}})()
    return plan, type("Job", (), {"copy": False, "sources": [Source()]})()


def test_host_staging_recycles_buffers_but_never_an_output(tmp_path):
    from checkpoints import write_checkpoint

    from mergefast.io.reader import CheckpointReader
    from mergefast.staging.host import HostStaging

    folder = write_checkpoint(tmp_path / "m", {"a": torch.arange(6.0), "b": torch.ones(6)})
    with CheckpointReader(folder) as reader:
        plan, job = _one_tensor_job(reader, "a")
        staging = HostStaging(plan)
        first = staging.read(job)
        assert torch.equal(staging.inputs(job, first)[0], torch.arange(6.0))
        staging.recycle(first, torch.zeros(6))
        second = staging.read(job)  # the same buffer, filled again
        assert second.buffers[0].data_ptr() == first.buffers[0].data_ptr()
        staging.recycle(second, second.tensors[0])  # the output IS the input: keep it out of the pool
        third = staging.read(job)
        assert third.buffers[0].data_ptr() != second.buffers[0].data_ptr()
        assert torch.equal(second.tensors[0], torch.arange(6.0))


def test_host_staging_merges_into_pooled_buffers_given_back_after_the_write(tmp_path):
    from checkpoints import write_checkpoint

    from mergefast import kernels
    from mergefast.io.reader import CheckpointReader
    from mergefast.staging.host import HostStaging

    if kernels.backend("cpu") != "cpu-ext":
        pytest.skip("the pooled outputs are the C++ kernels' (libmergefast_cpu is not built)")
    folder = write_checkpoint(tmp_path / "m", {"a": torch.arange(6.0)})

    def doubled_twice(job, tensors):  # a kernel output used as an intermediate, then the result
        once = kernels.linear([tensors[0], tensors[0]], [1.0, 1.0], normalize=False)
        return kernels.linear([once, once], [1.0, 1.0], normalize=False)

    with CheckpointReader(folder) as reader:
        plan, job = _one_tensor_job(reader, "a")
        staging = HostStaging(plan)

        def pooled():
            return [b.data_ptr() for bufs in staging._free.values() for b in bufs]

        staged = staging.read(job)
        first = staging.merge(job, staged, doubled_twice)
        assert torch.equal(first.tensor, torch.arange(6.0) * 4)
        assert first.tensor.untyped_storage().data_ptr() == first.buffer.data_ptr()
        assert pooled() == [staged.buffers[0].data_ptr()]  # the input is back; the result is not
        written = []
        staging.write(first, lambda t: written.append(t.clone()))
        assert torch.equal(written[0], torch.arange(6.0) * 4)
        # the result's buffer is back too; the intermediate's never is
        assert sorted(pooled()) == sorted([staged.buffers[0].data_ptr(), first.buffer.data_ptr()])
        recycled = set(pooled())
        again = staging.read(job)  # the input and the intermediate take the two pooled buffers
        assert again.buffers[0].data_ptr() in recycled
        result = staging.merge(job, again, doubled_twice)
        assert torch.equal(result.tensor, torch.arange(6.0) * 4)
        assert pooled() == [again.buffers[0].data_ptr()]
        outside = kernels.linear([torch.ones(6), torch.ones(6)], [1.0, 1.0])  # no merge: fresh
        assert outside.untyped_storage().data_ptr() not in recycled | set(pooled())


def test_ctrl_c_during_a_long_merge_does_not_wait_for_it(monkeypatch):
    import os
    import signal

    from mergefast.io import pipeline

    monkeypatch.setattr(pipeline, "_STOP_WAIT", 0.2)  # the stages' grace period (1.5 s)
    entered, finished, release = threading.Event(), threading.Event(), threading.Event()

    def slow_merge(j, d):
        entered.set()
        release.wait(20)  # a long kernel call: releases the GIL, cannot be interrupted itself
        finished.set()
        return d

    def interrupt():
        entered.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run(list(range(5)), merge=slow_merge)
    assert entered.is_set() and not finished.is_set()  # stopped while the "kernel" still ran
    release.set()  # the "kernel" returns: its thread must not hold up the interpreter's exit
