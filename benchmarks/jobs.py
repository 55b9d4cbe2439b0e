#!/usr/bin/env python3
"""The merge calls of a config's tensor jobs, timed without the pipeline around them.

    python benchmarks/jobs.py CONFIG [--only mlp] [--threads 1] [--side-by-side] [--rounds 3]

Each job's inputs are mapped from the page cache as the torch-free engine maps them
(`Reader.map_whole`; tensors it would read are read into fresh buffers), then merged by
`host.merge.merge_host_job` into a reused output buffer. Two ways:

- alone (default): one job at a time on a team of `--threads`, a 96 MB buffer touched before
  each job so its inputs start out of the caches, as a merge's first pass finds them; the time
  is the sum of the merge calls.
- `--side-by-side`: two merge threads with one kernel thread each take the jobs in turn, as
  `host/side_by_side.py` runs the methods with selection steps; nothing is flushed (the other
  thread's job pushes the inputs out of L3 between a job's passes); the time is the wall time
  of all the jobs.

Why: a whole merge on the shared 2-vCPU VM moves by 5-10% between runs, which hides a pass
made a few percent faster; the kernel calls alone, over the same tensors, show it. Compare
builds by alternating runs of package copies (`PYTHONPATH=copy_a ...`, then `copy_b`, ...),
one line each: `alone T=1 sce.yml 48 jobs 955.0 ms (best of 3)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from mergefast.config import load_config
from mergefast.host.merge import merge_host_job
from mergefast.host.ops import team
from mergefast.host.staging import anonymous_bytes
from mergefast.options import MergeOptions
from mergefast.plan import build_plan

FLUSH_BYTES = 96 << 20  # more than the L3 of the dev VM (32 MB) and of most servers' CCDs


class Outputs:
    """Output buffers by size and thread, touched once so their page faults stay out of the time."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[int, int], memoryview] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> memoryview:
        """A writable buffer of `nbytes` bytes for the calling thread."""
        key = (threading.get_ident(), nbytes)
        with self._lock:
            if key not in self._bufs:
                buf = anonymous_bytes(nbytes)
                buf[::4096] = b"\1" * len(buf[::4096])
                self._bufs[key] = buf
            return self._bufs[key]


def job_inputs(plan, job) -> list:
    """The job's inputs: mapped where the engine maps them, else read into fresh buffers."""
    inputs = []
    for source in job.sources:
        reader = plan.models[source.model].reader
        array = reader.map_whole(source.tensor)
        if array is None:
            array = reader.read_into(source.tensor, anonymous_bytes(reader.info(source.tensor).nbytes))
        inputs.append(array)
    return inputs


def flush_caches(buffer: bytearray) -> None:
    """Touch every line of `buffer`, pushing earlier data out of the caches."""
    buffer[::64] = bytes(len(buffer[::64]))


def time_alone(plan, jobs, threads: int) -> float:
    """Seconds spent in the merge calls, one job at a time on `threads` kernel threads."""
    outputs, flush, total = Outputs(), bytearray(FLUSH_BYTES), 0.0
    for job in jobs:
        inputs = job_inputs(plan, job)
        flush_caches(flush)
        with team(threads):
            start = time.perf_counter()
            merge_host_job(plan, job, inputs, outputs.take, 0)
            total += time.perf_counter() - start
        del inputs
    return total


def time_side_by_side(plan, jobs) -> float:
    """Wall seconds for all jobs on two merge threads of one kernel thread each."""
    outputs = Outputs()

    def work(first: int) -> None:
        with team(1):
            for job in jobs[first::2]:
                merge_host_job(plan, job, job_inputs(plan, job), outputs.take, 0)

    workers = [threading.Thread(target=work, args=(first,)) for first in (0, 1)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, plan the config, time its jobs and print one line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--only", default="", help="time only the jobs whose tensor name contains this")
    ap.add_argument("--threads", type=int, default=1, help="kernel threads of each job run alone")
    ap.add_argument("--side-by-side", action="store_true")
    ap.add_argument("--rounds", type=int, default=1, help="print the best of this many rounds")
    args = ap.parse_args(argv)
    config, text, source = load_config(args.config)
    plan = build_plan(config, text, source, MergeOptions(quiet=True))
    jobs = [job for job in plan.jobs if args.only in job.name and job.sources]
    rounds = [
        time_side_by_side(plan, jobs) if args.side_by_side else time_alone(plan, jobs, args.threads)
        for _ in range(args.rounds)
    ]
    how = "side by side" if args.side_by_side else f"alone T={args.threads}"
    name = os.path.basename(args.config)
    print(f"{how} {name} {len(jobs)} jobs {min(rounds) * 1e3:.1f} ms (best of {args.rounds})")


if __name__ == "__main__":
    main(sys.argv[1:])
