"""An overlapped read -> merge -> write pipeline with a memory budget.

Three stages run at once: a reader thread loads the inputs of the next jobs (as far ahead as
the byte budget allows), a merge thread merges, and a writer thread streams finished
tensors to their final offsets. Torch ops, the C++ kernels and file IO release the GIL, so
on 2 cores reading job i+1, merging job i and writing job i-1 overlap.

Every failure in any stage stops the others and is raised in the calling thread; nothing
waits forever (all blocking waits poll a stop flag).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_POLL = 0.1  # seconds between checks of the stop flag while blocked
_STOP_WAIT = 1.5  # seconds the stages get to stop after a failure or Ctrl-C
_DONE = object()


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


def _get(q: queue.Queue, stop: threading.Event, errors: list) -> Any:
    while True:
        if errors:
            raise errors[0]
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            if stop.is_set() and not errors:
                raise RuntimeError("pipeline stopped")


def run_pipeline(
    jobs: Sequence[Any],
    read: Callable[[Any], Any],
    merge: Callable[[Any, Any], Any],
    write: Callable[[Any, Any], None],
    *,
    cost: Callable[[Any], int],
    budget: int,
    progress: Callable[[Any], None] = lambda job: None,
) -> StageTimes:
    """Run read -> merge -> write over `jobs` with at most `budget` bytes in flight.

    `cost(job)` is the bytes a job holds from its read until its write finishes. `read`,
    `merge` and `write` each run in their own thread. Raises the first error of any stage
    (or Ctrl-C) after stopping the others.
    """
    stop, errors = threading.Event(), []
    times = StageTimes()
    limiter = _Budget(max(budget, 1), stop)
    to_merge: queue.Queue = queue.Queue(maxsize=max(2, len(jobs)))
    to_write: queue.Queue = queue.Queue(maxsize=2)

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # handed to the calling thread
                errors.append(exc)
                stop.set()
        return run

    @guarded
    def reader():
        for job in jobs:
            if not limiter.acquire(cost(job)):
                return
            start = time.perf_counter()
            data = read(job)
            times.read_s += time.perf_counter() - start
            if not _put(to_merge, (job, data), stop):
                return
        _put(to_merge, _DONE, stop)

    @guarded
    def writer():
        while True:
            item = _get(to_write, stop, [])
            if item is _DONE:
                return
            job, out = item
            start = time.perf_counter()
            write(job, out)
            times.write_s += time.perf_counter() - start
            limiter.release(cost(job))
            progress(job)

    @guarded
    def merger():
        while True:
            item = _get(to_merge, stop, errors)
            if item is _DONE:
                break
            job, data = item
            start = time.perf_counter()
            out = merge(job, data)
            times.merge_s += time.perf_counter() - start
            del data
            if not _put(to_write, (job, out), stop):
                return
        _put(to_write, _DONE, stop)

    # Every stage runs in a daemon thread; the calling thread only waits, so Ctrl-C reaches
    # it within _POLL seconds even while a long kernel runs, and the run stops without
    # waiting for that kernel to finish.
    threads = [threading.Thread(target=t, name=f"mergefast-{t.__name__}", daemon=True)
               for t in (reader, merger, writer)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while threads[2].is_alive():
            threads[2].join(_POLL)
            if errors:
                raise errors[0]
        if errors:
            raise errors[0]
    except BaseException:
        stop.set()
        deadline = time.monotonic() + _STOP_WAIT
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        raise
    times.wall_s = time.perf_counter() - wall
    return times
