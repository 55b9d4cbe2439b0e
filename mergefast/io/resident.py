"""Whether a merge's inputs sit in the page cache, told from a few pages without reading the disk.

A read with `RWF_NOWAIT` returns data the page cache holds and fails with EAGAIN where it would
have to wait for the disk; nothing is read from the disk either way. The pipeline's read-ahead
only pays where reads wait for the disk (options.MergeOptions.pipeline_budget), so a merge of
resident inputs keeps less of it in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROBES_PER_FILE = 8  # pages sampled per input file, spread evenly over the bytes the merge reads
PAGE = 4096


def probe_offsets(spans: list[tuple[int, int]], probes: int = PROBES_PER_FILE) -> list[int]:
    """Page-aligned offsets spread evenly over the file's byte spans (start, end), in order."""
    total = sum(end - start for start, end in spans)
    if total <= 0:
        return []
    offsets, count = [], min(probes, max(1, total // PAGE))
    for i in range(count):
        at = (2 * i + 1) * total // (2 * count)  # the middle of the i-th of `count` equal parts
        for start, end in spans:
            if at < end - start:
                offsets.append((start + at) // PAGE * PAGE)
                break
            at -= end - start
    return offsets


def _resident(path: Path, spans: list[tuple[int, int | None]], buf: bytearray) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offsets = probe_offsets(sorted((start, size if end is None else end) for start, end in spans))
        return all(os.preadv(fd, [buf], at, os.RWF_NOWAIT) > 0 for at in offsets)
    finally:
        os.close(fd)


def inputs_resident(spans: Iterable[tuple[Path, int, int | None]]) -> bool:
    """True when sampled pages of every input file's (path, start, end) spans are all in the page
    cache (end None: to the end of the file). False where that cannot be told: no `RWF_NOWAIT`
    (not Linux), a file not there yet (a Hub download in progress), a filesystem that refuses
    the flag."""
    if not hasattr(os, "RWF_NOWAIT"):
        return False
    per_file: dict[Path, list[tuple[int, int | None]]] = {}
    for path, start, end in spans:
        per_file.setdefault(path, []).append((start, end))
    buf = bytearray(PAGE)
    try:
        return all(_resident(path, s, buf) for path, s in per_file.items())
    except OSError:  # EAGAIN: on the disk only; ENOENT, EOPNOTSUPP, ...: cannot tell
        return False
