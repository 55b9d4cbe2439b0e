#!/usr/bin/env python3
"""The IO floor of a merge: read every input tensor a config uses, write one output-sized model.

    python benchmarks/io_floor.py CONFIG OUT

No arithmetic: the time this takes is what any merge of CONFIG must at least spend on IO.
The byte ranges of the input tensors the plan reads (from the safetensors headers) are read
in file-offset order, adjacent ranges merged, in 16 MiB preads; the output is written in
16 MiB chunks as mergefast's writer writes it (mergefast/io/writer.py): with O_DIRECT where
the filesystem allows, else through the page cache with an fdatasync every FLUSH_EVERY bytes;
fsynced at the end.
"""

from __future__ import annotations

import gc
import mmap
import os

# The floor must not pay start-up or exit costs mergefast's CLI avoids (mergefast/cli.py): it
# plans without the garbage collector and without OpenBLAS's spinning thread pool, and ends
# without the interpreter's teardown.
gc.disable()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from mergefast.config import load_config  # noqa: E402
from mergefast.io.direct import DirectFile, direct_io_works  # noqa: E402
from mergefast.io.writer import FLUSH_EVERY  # noqa: E402
from mergefast.options import MergeOptions  # noqa: E402
from mergefast.plan import build_plan, input_spans  # noqa: E402

CHUNK = 16 << 20


def input_ranges(plan) -> dict[Path, list[tuple[int, int]]]:
    """Per input file, the merged byte ranges of the tensors the plan reads."""
    ranges: dict[Path, list[tuple[int, int]]] = {}
    for path, start, end in input_spans(plan.jobs):
        ranges.setdefault(path, []).append((start, path.stat().st_size if end is None else end))
    merged = {}
    for path, spans in ranges.items():
        out: list[tuple[int, int]] = []
        for start, end in sorted(set(spans)):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        merged[path] = out
    return merged


def read_ranges(path: Path, spans: list[tuple[int, int]], buf: bytearray) -> int:
    """Read the byte ranges of one file into the reused buffer; returns bytes read."""
    total, view = 0, memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in spans:
            while start < end:
                n = os.preadv(fd, [view[: min(CHUNK, end - start)]], start)
                if n <= 0:
                    raise OSError(f"{path}: short read at {start}")
                start += n
                total += n
    finally:
        os.close(fd)
    return total


def write_bytes(out: Path, n: int, buf) -> None:
    """Write `n` bytes into OUT/floor.bin as mergefast's writer would: with O_DIRECT where the
    filesystem allows (io/direct.py: from the page-aligned `buf` itself, in pwrites of
    STAGE_BYTES, as the torch-free engine's outputs), else through the page cache, flushed
    every FLUSH_EVERY bytes; in 16 MiB pieces, fsynced at the end."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if direct_io_works(out):
        os.ftruncate(fd, n)
        os.close(fd)
        direct = DirectFile(path, n)
        for start in range(0, n, CHUNK):
            direct.write(memoryview(buf)[: min(CHUNK, n - start)], start)
        direct.close()
        return
    try:
        unflushed = 0
        while n > 0:
            done = os.write(fd, memoryview(buf)[: min(n, CHUNK)])
            n -= done
            unflushed += done
            if unflushed >= FLUSH_EVERY:
                os.fdatasync(fd)
                unflushed = 0
        os.fsync(fd)
    finally:
        os.close(fd)


def main(config_path: str, out: str) -> None:
    """Read the inputs of CONFIG's plan and write as many bytes as its output."""
    config, text, source = load_config(config_path)
    plan = build_plan(config, text, source, MergeOptions(quiet=True))
    ranges = input_ranges(plan)
    # `job.out_bytes` goes by the dtype's name: `job.dtype` is a torch dtype, and importing
    # torch (~1 s of one core) is not IO
    out_bytes = sum(j.out_bytes for j in plan.jobs)
    plan.close()
    if "torch" in sys.modules:
        raise SystemExit("io_floor.py imported torch: its time is not IO; find the import and remove it")
    # Reading and writing run at once (two threads; preadv/write release the GIL), as a
    # merge that overlaps its IO does: the floor is max(read, write), not their sum.
    result: list[int] = []
    reader = threading.Thread(
        target=lambda: result.append(
            sum(read_ranges(f, spans, bytearray(CHUNK)) for f, spans in sorted(ranges.items()))
        )
    )
    reader.start()
    write_bytes(Path(out), out_bytes, mmap.mmap(-1, CHUNK))  # page-aligned
    reader.join()
    read = result[0]
    print(f"floor: read {read / 1e9:.3f} GB, wrote {out_bytes / 1e9:.3f} GB", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:3])
    sys.stderr.flush()
    os._exit(0)  # without the interpreter's teardown, as mergefast's CLI ends (cli.exit_now)
