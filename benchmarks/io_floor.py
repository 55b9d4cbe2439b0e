#!/usr/bin/env python3
"""The IO floor of a merge: read every input file a config uses, write one output-sized model.

    python benchmarks/io_floor.py CONFIG OUT

No arithmetic: the time this takes is what any merge of CONFIG must at least spend on IO
(input files read in 16 MiB chunks, output written in 16 MiB chunks and fsynced, as
mergefast's writer does).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mergefast.config import load_config
from mergefast.options import MergeOptions
from mergefast.plan import build_plan

CHUNK = 16 << 20


def read_file(path: Path, buf: bytearray) -> int:
    """Read a whole file into the reused buffer; returns bytes read."""
    total, view = 0, memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def main(config_path: str, out: str) -> None:
    """Read the inputs of CONFIG's plan and write as many bytes as its output."""
    config, text, source = load_config(config_path)
    plan = build_plan(config, text, source, MergeOptions(quiet=True))
    files = sorted({s.info.file for job in plan.jobs for s in job.sources})
    out_bytes = sum(_numel(j.shape) * j.dtype.itemsize for j in plan.jobs)
    plan.close()
    buf = bytearray(CHUNK)
    read = sum(read_file(f, buf) for f in files)
    Path(out).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(out) / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = out_bytes
        while left > 0:
            left -= os.write(fd, memoryview(buf)[: min(left, CHUNK)])
        os.fsync(fd)
    finally:
        os.close(fd)
    print(f"floor: read {read / 1e9:.3f} GB, wrote {out_bytes / 1e9:.3f} GB", file=sys.stderr)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main(*sys.argv[1:3])
