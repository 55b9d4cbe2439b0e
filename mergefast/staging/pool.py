"""Byte buffers pooled by exact size, for the CPU staging of either engine (staging/host.py
with torch tensors, host/staging.py with numpy arrays; a buffer is anything with `nbytes`
and byte slicing). Imports no torch.

Layers repeat the same tensor sizes, so buffers are pooled by exact size: a fresh allocation
per tensor costs its page faults every time (reading 2.2 GB of TIES inputs: 0.55 s into fresh
tensors, 0.29 s into reused ones, on a 2-vCPU AMD EPYC VM). A size no later job asks for (the
embeddings', read first) is not kept idle: its buffers are carved into the sizes still to
come (`_carve`), which then fault no fresh pages (the torch-free engine's TIES of the 0.3B
family: 75,000 fewer page faults).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

CARVE_ALIGN = 4096  # slices of a retired buffer start this many bytes apart (any dtype's view)
CARVE_MIN = 1 << 20  # smaller retired buffers are freed, not carved


class BufferPool:
    """Buffers from `allocate(nbytes)`, pooled by size. With `jobs` (a plan's), the pool
    counts the times a job not yet read (its inputs) or merged (its output, and a copy's
    input, which is its output: `out_pad` bytes more) asks for each size, and retires a size
    once none will: else every buffer stays pooled by its size. `pool_copies`: copy jobs'
    inputs come from the pool too (else they are not counted)."""

    def __init__(
        self, allocate: Callable[[int], Any], jobs: Iterable = (), pool_copies: bool = False, out_pad: int = 0
    ):
        self._allocate = allocate
        self.out_pad = out_pad  # bytes an output's buffer holds beyond the output (its users add them)
        self._free: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        self._uses: Counter[int] = Counter()
        for job in jobs:
            if not job.copy:
                self._uses.update(job.input_bytes)
                self._uses[job.out_bytes + out_pad] += 1  # an output's buffer: `out_pad` bytes more
            elif pool_copies:  # a copy's input buffer is its output: one use (padded as one)
                self._uses.update(nbytes + out_pad for nbytes in job.input_bytes)
        self._planned = bool(self._uses)
        self._spare: list[list] = []  # [buffer, bytes carved off]: retired sizes' buffers

    def _buffer(self, nbytes: int) -> Any:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
            carved = self._carve(nbytes)
        return carved if carved is not None else self._allocate(nbytes)

    def _carve(self, nbytes: int) -> Any:
        """A slice of a retired buffer with room for `nbytes`, a multiple of CARVE_ALIGN bytes
        into it (lock held)."""
        for spare in self._spare:
            buf, used = spare
            if used + nbytes <= buf.nbytes:
                spare[1] = used + -(-nbytes // CARVE_ALIGN) * CARVE_ALIGN
                return buf[used : used + nbytes]
        return None

    def _asked(self, sizes) -> None:
        """A job took buffers of `sizes`: a size no later job asks for retires its pooled
        buffers to the spare ones (`_carve`)."""
        if not self._planned:
            return
        with self._lock:
            for size in sizes:
                self._uses[size] -= 1
                if self._uses[size] <= 0:
                    self._retire(self._free.pop(size, []))

    def _retire(self, buffers: list) -> None:
        """Make `buffers` spare (lock held); ones too small to carve are just freed."""
        self._spare.extend([buf, 0] for buf in buffers if buf.nbytes >= CARVE_MIN)

    def _give_back(self, buffers: list) -> None:
        with self._lock:
            for buf in buffers:
                if not self._planned or self._uses[buf.nbytes] > 0:
                    self._free.setdefault(buf.nbytes, []).append(buf)
                else:
                    self._retire([buf])

    def drop_buffers(self) -> None:
        """Drop every pooled and spare buffer (the run is over)."""
        with self._lock:
            self._free.clear()
            self._spare.clear()
