"""Output files written with O_DIRECT: the merged bytes go from our buffers to the disk
without passing through the page cache.

The writer fsyncs every shard before the output is renamed into place, so the bytes must
reach the disk before the merge ends whichever way they are written. Through the page cache
that costs a page-cache page per 4 KB, allocated and filled by the kernel: writing 540 MB
(8 MiB writes, fdatasync every 64 MB) took 1.4-1.8 s of system time on the 2-vCPU Xeon VM
(free page reporting makes every fresh page slow), against 0.03 s and 0.45 s of wall time
with O_DIRECT from an aligned buffer. That system time is taken from the merge's two cores.

O_DIRECT needs the file offset, the length and the buffer address aligned to the disk's logical
block size (512 or 4096 on Linux; BLOCK covers both). Tensors start anywhere, so a write is
split into the aligned blocks it covers whole and the partial blocks at its two ends, which
wait in memory until the neighbouring writes (or the header) complete them. The whole blocks go
out from where they lie when their address is aligned too (the torch-free engine places each
output at an address congruent to its file offset, host/staging.py; linear of the 0.3B family,
2-vCPU Intel Xeon VM: 0.89x the time, task_arithmetic 0.92x, TIES 0.97x, 7-9 alternated runs),
else through an aligned staging buffer; either way in pwrites of STAGE_BYTES, the completed
blocks where writes meet gathered with the write that follows on. Filesystems without O_DIRECT
(tmpfs on older kernels, some FUSE filesystems) are detected once per output folder
(`direct_io_works`); the writer then writes through the page cache.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

BLOCK = 4096  # alignment of offsets, lengths and buffers: a multiple of every logical block size
# Aligned bytes per pwrite (a multiple of BLOCK), staged or in place. A merge's writer thread
# shares the two cores with its reader and merger, and smaller pwrites kept the pipeline
# moving: 0.3B family, 2-vCPU AMD EPYC VM, the pipeline's wall time, medians of 8 alternated
# runs, linear 0.53 s in 2 MiB pwrites against 0.74 s in 8 MiB ones (and 0.58 s with a 4 KiB
# pwrite of its own for each block two writes meet in, `_add_partial`); another run 1 / 2 / 4
# MiB 0.56 / 0.57 / 0.60 s. SLERP (6 runs) 0.51 s against 0.56 s with those 4 KiB pwrites, TIES
# (its kernel's time) 0.98 against 0.97 s. The IO floor writes as fast with 2 as with 8 MiB.
STAGE_BYTES = 2 << 20
# Aligned data at an aligned address of at least this many bytes is written from where it lies
# (`_write_in_place`), not copied into a staging buffer first.
IN_PLACE_MIN = 64 << 10
_PROBE_NAME = ".mergefast-direct-io-probe"
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the platform has none (macOS, Windows)


def direct_io_works(folder: Path) -> bool:
    """Whether files in `folder` can be written with O_DIRECT: one aligned block is written
    into a probe file, which is then removed."""
    if not _O_DIRECT:
        return False
    path = Path(folder) / _PROBE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o600)
    except OSError:  # EINVAL: the filesystem refuses O_DIRECT
        return False
    block = mmap.mmap(-1, BLOCK)
    try:
        return os.pwrite(fd, block, 0) == BLOCK
    except OSError:
        return False
    finally:
        os.close(fd)
        block.close()
        path.unlink(missing_ok=True)


class _StagingBuffers:
    """Page-aligned buffers (anonymous mmaps) for the aligned middle of each write, reused so
    their pages are faulted in once; one per writer thread at a time."""

    def __init__(self):
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            return self._free.pop() if self._free else mmap.mmap(-1, STAGE_BYTES)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)


_STAGING = _StagingBuffers()


def close_fd(fd: int, sync: bool) -> None:
    """fsync `fd` when `sync`, then close it (closed even when the fsync fails)."""
    try:
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _address(buf) -> int:
    """The address of a writable buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class DirectFile:
    """One output file of `size` bytes written with O_DIRECT, in pieces at any offsets, in any
    order, from several threads. Every byte in [0, size) must be written exactly once; a block
    is written to the disk once all of its bytes are in. The file must already exist."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = Path(path), size
        self.fd: int | None = None
        self._partial: dict[int, list] = {}  # block start -> [bytearray(BLOCK), bytes filled]
        self._block: mmap.mmap | None = None  # aligned copy of a completed partial block
        self._lock = threading.Lock()  # the partial blocks
        self._open_lock = threading.Lock()
        # aligned bytes gathered for one pwrite: [file offset, staging buffer, bytes in it]
        self._gathered: list | None = None
        self._gather_lock = threading.Lock()

    def write(self, data, offset: int) -> None:
        """Write `data` (a C-contiguous buffer) at `offset`. The aligned middle goes to the disk
        now; the end blocks it shares with other writes once their other bytes are in."""
        data = memoryview(data).cast("B")
        if data.readonly:  # bytes: the aligned copy below needs a writable buffer's address
            data = memoryview(bytearray(data))
        end = offset + len(data)
        head_end = min(-(-offset // BLOCK) * BLOCK, end)
        tail_start = max(end // BLOCK * BLOCK, head_end)
        self._add_partial(data[: head_end - offset], offset)
        self._write_aligned(data[head_end - offset : tail_start - offset], head_end)
        self._add_partial(data[tail_start - offset :], tail_start)

    def _write_aligned(self, data: memoryview, offset: int) -> None:
        """Gather `data` (whole aligned blocks) into the staging buffer, written out when it is
        full or the next write does not follow on: tensors and parts written one after the
        other (host/parts.py) go out in pwrites of STAGE_BYTES, as the floor's do, the blocks
        where two of them meet included (`_add_partial`). Data at an aligned address (the
        torch-free engine's outputs, host/staging.py) is written from where it lies."""
        if not len(data):
            return
        source = _address(data)
        with self._gather_lock:
            if source % BLOCK == 0 and len(data) >= IN_PLACE_MIN:
                self._write_in_place(data, offset)
                return
            done = 0
            while done < len(data):
                gathered = self._gathered
                if gathered is not None and gathered[0] + gathered[2] != offset + done:
                    self._flush_gathered()
                    gathered = None
                if gathered is None:
                    gathered = self._gathered = [offset + done, _STAGING.take(), 0]
                n = min(STAGE_BYTES - gathered[2], len(data) - done)
                ctypes.memmove(_address(gathered[1]) + gathered[2], source + done, n)  # lets go of the GIL
                gathered[2] += n
                done += n
                if gathered[2] == STAGE_BYTES:
                    self._flush_gathered()

    def _write_in_place(self, data: memoryview, offset: int) -> None:
        """`data` (whole blocks at an aligned address) out without a copy, in pieces of
        STAGE_BYTES, the first with the bytes gathered just before it in one pwritev (gather
        lock held)."""
        gathered, done = self._gathered, 0
        if gathered is not None and gathered[0] + gathered[2] == offset:
            done = min(STAGE_BYTES, len(data))
        self._flush_gathered(data[:done])
        while done < len(data):
            n = min(STAGE_BYTES, len(data) - done)
            self._pwrite(data[done : done + n], offset + done)
            done += n

    def _flush_gathered(self, then: memoryview | None = None) -> None:
        """Write the gathered bytes out, and `then` (whole blocks that follow them) in the same
        pwritev (gather lock held)."""
        gathered, self._gathered = self._gathered, None
        if gathered is None:
            return
        start, stage, n = gathered
        try:  # no `with memoryview`: a failed pwrite's traceback holds the slice, and its release would raise
            if then:
                self._pwritev([memoryview(stage)[:n], then], start)
            else:
                self._pwrite(memoryview(stage)[:n], start)
        finally:
            _STAGING.give(stage)

    def _add_partial(self, data: memoryview, offset: int) -> None:
        """Add `data` to the block it lies in. A completed block joins the gathered bytes
        (`_write_aligned`), so writes that meet inside a block still go out in one run of
        pwrites: in 4 KiB pwrites of their own, linear of the 0.3B family has 289 such blocks,
        0.08-0.12 s of its writer's 0.3-0.5 s in pwrite (2-vCPU AMD EPYC VM). The file's last
        block goes out at once, then the file is cut to its size."""
        if not len(data):
            return
        block_start = offset // BLOCK * BLOCK
        with self._lock:
            entry = self._partial.setdefault(block_start, [bytearray(BLOCK), 0])
            entry[0][offset - block_start : offset - block_start + len(data)] = data
            entry[1] += len(data)
            if entry[1] < min(BLOCK, self.size - block_start):
                return
            del self._partial[block_start]
            if block_start + BLOCK > self.size:  # the file's last block: out now, then cut to size
                if self._block is None:
                    self._block = mmap.mmap(-1, BLOCK)
                self._block[:] = entry[0]
                self._pwrite(memoryview(self._block), block_start)
                os.ftruncate(self.fd, self.size)
                return
        self._write_aligned(memoryview(entry[0]), block_start)

    def _open(self) -> int:
        with self._open_lock:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | _O_DIRECT)
            return self.fd

    def _pwrite(self, data: memoryview, offset: int) -> None:
        fd, done = self._open(), 0
        while done < len(data):  # pwrite may write less than asked
            done += os.pwrite(fd, data[done:], offset + done)

    def _pwritev(self, pieces: list[memoryview], offset: int) -> None:
        """The pieces one after the other from `offset`, in one pwritev (the rest of a short
        write piece by piece)."""
        written = os.pwritev(self._open(), pieces, offset)
        for piece in pieces:
            if written < len(piece):
                self._pwrite(piece[written:], offset + written)
            written = max(0, written - len(piece))
            offset += len(piece)

    def pending_bytes(self) -> int:
        """Bytes received but not yet on the disk (in partial blocks)."""
        with self._lock:
            return sum(filled for _, filled in self._partial.values())

    def close(self, sync: bool = True, drop: bool = False) -> None:
        """Write out the gathered bytes (`drop`: an aborted file's are dropped), fsync (when
        `sync`) and close the file. With `sync`, raises RuntimeError if some bytes never
        reached the disk because a neighbouring write is missing."""
        with self._gather_lock:
            if not drop:
                self._flush_gathered()
            elif self._gathered is not None:
                _STAGING.give(self._gathered[1])
                self._gathered = None
        pending = self.pending_bytes()
        if sync and pending:
            raise RuntimeError(f"{self.path}: {pending} bytes left in partially written blocks")
        if self.fd is not None:
            fd, self.fd = self.fd, None
            close_fd(fd, sync)
        # dropped, not closed: after a failed pwrite its traceback may still hold a view of it,
        # and closing an exported mmap raises BufferError over the real error
        self._block = None
