"""Tensors read from a Hub weight file while it still downloads.

huggingface_hub's plain HTTP download writes a file front to back into a temporary file
`blobs/<sha256>.<8 hex>.incomplete` of the cache, then renames it to `blobs/<sha256>`. The bytes
below that file's current size are the file's own bytes, so a tensor whose byte range lies
below it can be read at once instead of when the whole shard is in: the merge then follows
the download front, and the shards that finish last leave only their last tensors to merge.
Measured (TIES, 0.3B family, fake Hub at 200 MB/s, 2-vCPU VM): see benchmarks/RESULTS.md.

`PartialFiles` keeps one read-only descriptor per such temporary file, found among this
process's open files (/proc/self/fd: Linux; elsewhere, and for hf_xet transfers, whose chunks
need not arrive in order, every file is read once complete, as before). A descriptor outlives
the rename (same inode), and the file's header is checked against the planned one before its
first tensor is read. A download restarted from byte 0 (a server that ignored a resume's Range)
shrinks the file: a read that comes up short is retried once the bytes are back.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import ModelError

_FD_DIR = "/proc/self/fd"


def open_download_temp(blob: Path) -> int | None:
    """A read-only descriptor of the temporary file this process is downloading `blob` into,
    or None when there is none to be found."""
    try:
        fds = os.listdir(_FD_DIR)
    except OSError:
        return None
    folder, prefix = os.path.realpath(blob.parent), blob.name + "."
    for fd in fds:
        link = f"{_FD_DIR}/{fd}"
        try:
            target = os.readlink(link)
        except OSError:
            continue
        head, name = os.path.split(target)
        if head == folder and name.startswith(prefix) and name.endswith(".incomplete"):
            return _reopen(link, target)
    return None


def _reopen(link: str, target: str) -> int | None:
    """A new descriptor of the file behind `link`, if it is still `target` (the descriptor
    may have been closed and its number reused meanwhile)."""
    try:
        fd = os.open(link, os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.readlink(link) == target and os.fstat(fd).st_ino == os.stat(link).st_ino:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


class PartialFiles:
    """The temporary files of the downloads in progress: path in the snapshot -> descriptor."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._checked: set[Path] = set()
        self._lock = threading.Lock()

    def found(self, path: Path, blob: Path) -> None:
        """Look for the temporary file of `blob` (the download of `path` has begun)."""
        fd = open_download_temp(blob)
        if fd is not None:
            with self._lock:
                self._fds[path] = fd

    def read(self, f, start: int, out: memoryview) -> bool:
        """Fill `out` with bytes [start, start + len(out)) of HubFile `f` from its temporary
        file if they are there yet; False when they are not (or no temporary file is known)."""
        fd = self._fds.get(f.path)
        if fd is None:
            return False
        size = os.fstat(fd).st_size
        if f.path not in self._checked:  # checked as soon as the header is in
            if not _header_matches(fd, f, size):
                return False
            self._checked.add(f.path)
        if size < start + len(out):
            return False
        got = 0
        while got < len(out):
            k = os.preadv(fd, [out[got:]], start + got)
            if k == 0:
                return False  # the file shrank: the download restarted
            got += k
        return True

    def close(self) -> None:
        """Close every descriptor (once no reader uses them)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _header_matches(fd: int, f, size: int) -> bool:
    """Whether the temporary file of HubFile `f` (`size` bytes so far) starts with the planned
    header (ModelError when it differs); False while the header is not all in yet, or not known."""
    raw = f.remote.raw_headers.get(f.name)
    if raw is None or size < 8 + len(raw):
        return False  # no header to check against (wait for the whole file and its checks), or not in yet
    head = os.pread(fd, 8 + len(raw), 0)
    if len(head) < 8 + len(raw):
        return False
    if head[8:] != raw:
        raise differs_error(f, f.path)
    return True


def differs_error(f, path: Path) -> ModelError:
    """The one-line error of a downloaded HubFile `f` (at `path`) that is not the file planned."""
    return ModelError(
        f"{path}: downloaded {f.name} of Hugging Face repo {f.remote.what} differs from the file "
        f"planned (commit {f.remote.commit[:12]}); delete it from the cache and retry"
    )
