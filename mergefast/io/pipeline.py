"""An overlapped read -> merge -> write pipeline with a memory budget.

Three stages run at once: a reader thread loads the inputs of the next jobs (as far ahead as
the byte budget allows), a merge thread (or two, io/merge_gate.py) merges, and a writer
thread streams finished tensors to their final offsets. Torch ops, the C++ kernels and file
IO release the GIL, so on 2 cores reading job i+1, merging job i and writing job i-1 overlap.

Every failure in any stage stops the others and is raised in the calling thread; nothing
waits forever (all blocking waits poll a stop flag, and a stage's next torch call raises
once the run has stopped).
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PipelineStopped  # noqa: F401 - also imported from here
from .host_array import loaded_torch
from .merge_gate import MergeGate

_POLL = 0.1  # seconds between checks of the stop flag while blocked
_STOP_WAIT = 1.5  # seconds the stages get to stop after a failure or Ctrl-C
_DONE = object()
_THREAD_PREFIX = "mergefast-"


def _stop_at_next_torch_call(stop: threading.Event):
    """A torch function mode that ends a stage at its next torch call once `stop` is set, so a
    stopped run waits for one torch op, not a whole tensor: on a 2-vCPU AMD EPYC VM DELLA
    merges an 8192 x 1024 embedding in 4.2 s of 164 torch calls, the longest a 0.44 s sort. It
    costs ~2 us per torch call (measured), and the kernel path makes ~50 calls per tensor
    (TIES), DELLA ~160. A run of the torch-free engine (host/), with torch not loaded, makes no
    torch call and gets no mode: its stages stop at their next step."""
    if loaded_torch() is None:
        return contextlib.nullcontext()
    from torch.overrides import TorchFunctionMode

    class StopAtNextTorchCall(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if stop.is_set():
                raise PipelineStopped("the merge has stopped")
            return func(*args, **(kwargs or {}))

    return StopAtNextTorchCall()


def stages_running() -> bool:
    """Whether a stage thread of a stopped run is still finishing its step (a torch op, a
    kernel call, a read or a write that outlasted the stop wait)."""
    return any(t.name.startswith(_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


@dataclass
class StageTimes:
    """Busy seconds per stage and the wall time of the run, for the end-of-run summary."""

    read_s: float = 0.0
    merge_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0


class _Budget:
    """Bytes in flight (read but not yet written); one job may always run alone."""

    def __init__(self, limit: int, stop: threading.Event):
        self.limit, self.used, self.stop = limit, 0, stop
        self.cond = threading.Condition()

    def acquire(self, n: int) -> bool:
        with self.cond:
            while self.used and self.used + n > self.limit:
                if self.stop.is_set():
                    return False
                self.cond.wait(_POLL)
            self.used += n
            return not self.stop.is_set()

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    # Once stopped, a stage takes nothing more, not even what is already queued: a merge
    # thread kept merging the reader's queued jobs after Ctrl-C, for minutes with long jobs.
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            continue
    raise PipelineStopped("the merge has stopped")


def _run_stages(
    threads: list[threading.Thread], stop: threading.Event, errors: list, on_stop: Callable[[], None]
) -> None:
    """Start the stages and wait for the last one. On any failure, or Ctrl-C (even while they
    start: a signal there once left the stages running with no stop), stop every stage,
    call `on_stop` and give them _STOP_WAIT seconds to finish their step; then raise."""
    try:
        for t in threads:
            t.start()
        while threads[-1].is_alive():
            threads[-1].join(_POLL)
            if errors:
                raise errors[0]
        if errors:
            raise errors[0]
    except BaseException:
        stop.set()
        on_stop()
        deadline = time.monotonic() + _STOP_WAIT
        for t in threads:
            if t.ident is not None:  # started
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        raise


def run_pipeline(
    jobs: Sequence[Any],
    read: Callable[[Any], Any],
    merge: Callable[[Any, Any], Any],
    write: Callable[[Any, Any], None],
    *,
    cost: Callable[[Any], int],
    budget: int,
    progress: Callable[[Any], None] = lambda job: None,
    on_stop: Callable[[], None] = lambda: None,
    readers: int = 1,
    mergers: int = 1,
    alone: Callable[[Any], bool] = lambda job: True,
) -> StageTimes:
    """Run read -> merge -> write over `jobs` with at most `budget` bytes in flight.

    `cost(job)` is the bytes a job holds from its read until its write finishes. `read`,
    `merge` and `write` each run in their own thread; `readers` > 1 reads that many jobs at
    once (latency-bound reads: --stream-inputs), handed to the merge as they complete, not
    in job order; `mergers` > 1 merges that many jobs at once, but those for which `alone(job)`
    (io/merge_gate.py), their results written as they complete. Raises the first error of any
    stage (or Ctrl-C) after stopping the others; `on_stop()` is called as the run stops, to
    wake stages blocked outside the pipeline's waits (a pinned-ring slot, staging/pinned_ring.py).
    """
    stop, errors = threading.Event(), []
    times = StageTimes()
    limiter = _Budget(max(budget, 1), stop)
    to_merge: queue.Queue = queue.Queue(maxsize=max(2, len(jobs)))
    to_write: queue.Queue = queue.Queue(maxsize=2)

    def guarded(fn):
        @functools.wraps(fn)  # the thread's name: mergefast-reader, -merger, -writer
        def run():
            try:
                with _stop_at_next_torch_call(stop):  # torch function modes are per thread
                    fn()
            except BaseException as exc:  # handed to the calling thread
                errors.append(exc)
                stop.set()

        return run

    readers, mergers = max(1, readers), max(1, mergers)
    # `order` is held while a reader waits for the budget; `tally` counts what readers did,
    # and must not be `order`: a reader done reading waits for it before handing its job on
    # (which frees budget), so sharing one lock hung streamed merges once the budget was full.
    next_job, order, tally = iter(jobs), threading.Lock(), threading.Lock()
    running = [readers]

    @guarded
    def reader():
        while True:
            with order:  # the budget in job order: a later job never takes an earlier one's place
                job = next(next_job, _DONE)
                if job is _DONE or not limiter.acquire(cost(job)):
                    break
            start = time.perf_counter()
            data = read(job)
            with tally:
                times.read_s += time.perf_counter() - start
            if not _put(to_merge, (job, data), stop):
                return
        with tally:
            running[0] -= 1
            last = running[0] == 0
        if last and job is _DONE:
            _put(to_merge, _DONE, stop)

    @guarded
    def writer():
        while True:
            item = _get(to_write, stop)
            if item is _DONE:
                return
            job, out = item
            start = time.perf_counter()
            write(job, out)
            times.write_s += time.perf_counter() - start
            limiter.release(cost(job))
            progress(job)

    gate, taking = MergeGate(alone, stop), threading.Lock()
    merging = [mergers]

    @guarded
    def merger():
        while True:
            with taking:  # taken and admitted in job order: a job that runs alone keeps its place
                item = _get(to_merge, stop)
                if item is _DONE:
                    to_merge.put(_DONE)  # for the other merge threads: nothing follows it
                    break
                job, data = item
                ran_alone = gate.enter(job)
            start = time.perf_counter()
            try:
                out = merge(job, data)
            finally:
                gate.leave(ran_alone)
            with tally:
                times.merge_s += time.perf_counter() - start
            del data
            if not _put(to_write, (job, out), stop):
                return
        with tally:
            merging[0] -= 1
            last = merging[0] == 0
        if last:
            _put(to_write, _DONE, stop)

    # The calling thread only waits, so Ctrl-C reaches it within _POLL seconds even while a
    # long kernel runs, and the run stops without waiting for that kernel to finish. The
    # stages are not daemon threads: a daemon thread still inside a torch op or kernel call
    # when the interpreter finalizes is ended by pthread_exit as it takes the GIL back, in
    # pybind11's noexcept ~gil_scoped_release, and that is std::terminate: "terminate called
    # without an active exception", exit 134 (DELLA, Ctrl-C; seen in a core dump). Python
    # waits for non-daemon threads before it finalizes; a stopped stage ends at its next
    # torch call (_stop_at_next_torch_call) or its next step.
    stages = [*[reader] * readers, *[merger] * mergers, writer]
    threads = [threading.Thread(target=t, name=f"{_THREAD_PREFIX}{t.__name__}") for t in stages]
    wall = time.perf_counter()
    _run_stages(threads, stop, errors, on_stop)
    times.wall_s = time.perf_counter() - wall
    return times
