"""Hub weight files downloaded while the merge runs: the reader waits for each file's arrival.

io/hub_fetch.py `start_downloads` hands the files the plan reads, in the order the pipeline
first reads them, to `Arrivals`, which downloads them several at once into the standard
huggingface_hub cache (hf_hub_download: its locking, resuming and blob sharing). The merge
starts at once: io/hub_headers.py's reader first tries `read_early`, which reads a tensor from
a file still downloading as soon as the tensor's bytes are in (io/hub_partial.py), then calls
`wait(path)` before it opens a weight file whole; so a tensor job runs as soon as its inputs'
bytes are in, while the later shards still download. A file already in the snapshot folder is
never waited for. `finish` waits for the downloads a job no longer needed to end.

Progress: one "downloading" bar counts the bytes of every download (huggingface_hub's bar per
file is silenced and feeds it), beside the pipeline's "merging" bar.

A failed download stops the rest and is raised, one line, by the next `wait` (the pipeline
then stops as on any read error). `cancel()` (the merge failed or was interrupted) stops the
downloads at their next chunk; the partial files stay in the cache, and huggingface_hub
resumes them on the next run. The download threads are daemons, so that a download the
cancel cannot reach (an hf_xet transfer) never holds up the exit after Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineStopped
from .hub_partial import PartialFiles, differs_error
from .hub_remote import RemoteRepo

_POLL = 0.1  # seconds between checks of the stop flag while the reader waits for a file
# huggingface_hub's download loop asks httpx for 10 MB chunks (constants.DOWNLOAD_CHUNK_SIZE),
# which httpx assembles in Python, copying each byte about three times with the GIL held, and
# the merge shares this process's GIL. None hands the loop the network's own reads (64 kB). On
# the 2-vCPU Intel VM, fake Hub at 200 MB/s, 0.3B linear merge (py-spy: those copies were the
# largest GIL holder), three alternated runs: the last byte came at 9.70-9.84 s against
# 10.23-10.75 s and the merge ended at 10.16-10.35 s against 10.63-11.17 s (download floor
# 9.11-9.27 s). Set while the downloads run, then restored.
_CHUNK = None
# Seconds between looks at a downloading file's size: a stream writes each network read as it
# comes (_CHUNK), 0.5-4 MB in 20 ms at 25-200 MB/s.
_EARLY_POLL = 0.02


@dataclass(frozen=True)
class HubFile:
    """One weight file of a Hub input that the plan reads."""

    ref: str  # the model reference of the config
    remote: RemoteRepo
    name: str

    @property
    def size(self) -> int:
        return self.remote.sizes[self.name]

    @property
    def path(self) -> Path:
        """Where the file is (or will be) in the snapshot folder: the path the plan reads."""
        return self.remote.folder / self.name


class DownloadCancelled(Exception):
    """Raised inside huggingface_hub's download loop (by the progress bar) once cancelled."""


class Arrivals:
    """Downloads `files` in order with `threads` daemon threads; `wait(path)` blocks until one is in.

    `fresh_bytes`: the bytes of the files not cached in any form (what the Hub sends)."""

    def __init__(self, files: list[HubFile], fresh_bytes: int, threads: int, quiet: bool = False):
        self.fresh_bytes, self.quiet = fresh_bytes, quiet
        self._queue = deque(files)
        self._files = {f.path: f for f in files}
        self._events = {f.path: threading.Event() for f in files}
        self._partial = PartialFiles()
        self._arrived: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"hub-download-{i}", daemon=True)
            for i in range(min(max(1, threads), len(files)))
        ]
        self._started = self._finished = 0.0
        self.waited_s = 0.0  # seconds the reader spent waiting for files (not reading them)
        self._running = len(self._threads)
        self._bar = None  # the one download bar, made by start()
        self._chunk_size = None  # huggingface_hub's own, while the downloads run (_CHUNK above)

    def start(self) -> Arrivals:
        """Start the download threads (none when every file is in place)."""
        self._started = time.perf_counter()
        if self._threads:
            self._bar = _total_bar(self.fresh_bytes, self.quiet)
            self._chunk_size = network_reads()
        for t in self._threads:
            t.start()
        return self

    def wait(self, path: Path) -> None:
        """Return once `path` has arrived (at once when it was never pending); raise the first
        download error, or PipelineStopped once cancelled."""
        event = self._events.get(path)
        if event is None:
            return
        start = time.perf_counter()
        while not event.wait(_POLL):
            if self._error is not None or self._stop.is_set():
                break
        self.waited_s += time.perf_counter() - start
        if self._error is not None:
            raise self._error
        if path not in self._arrived:
            raise PipelineStopped("the downloads have stopped")

    def complete(self, path: Path) -> bool:
        """Whether `path` is in, without waiting: downloaded and checked, or never pending."""
        return path not in self._events or path in self._arrived

    def read_early(self, path: Path, start: int, out: memoryview) -> bool:
        """Fill `out` with bytes [start, start + len(out)) of `path` as soon as they are in while
        the file still downloads; False once it is complete (or was never pending, or cannot be
        read early, or the downloads stopped): then read it whole after `wait`."""
        f, event = self._files.get(path), self._events.get(path)
        if f is None:
            return False
        while not event.is_set() and self._error is None and not self._stop.is_set():
            if self._partial.read(f, start, out):
                return True
            start_wait = time.perf_counter()  # waited_s counts the waits, not the reads
            event.wait(_EARLY_POLL)
            self.waited_s += time.perf_counter() - start_wait
        return False

    def finish(self) -> None:
        """Once every job has read its bytes: wait for the downloads still finishing their last
        bytes, and raise the first download error (a file not in the cache as planned fails
        the run, even when its tensors were read in time)."""
        for t in self._threads:
            t.join()
        self.close()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop the downloads: none starts any more, and those running stop at their next chunk
        (a network read, _CHUNK)."""
        self._stop.set()

    def close(self) -> None:
        """Stop the downloads and close the downloading files (no reader may use them now)."""
        self.cancel()
        self._partial.close()
        if self._chunk_size is not None:
            from huggingface_hub import constants

            constants.DOWNLOAD_CHUNK_SIZE, self._chunk_size = self._chunk_size, None

    @property
    def seconds(self) -> float:
        """From the start of the downloads to the end of the last one (0 when none ran)."""
        return max(0.0, self._finished - self._started) if self._threads else 0.0

    def _work(self) -> None:
        try:
            self._download_queued()
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._bar.close()

    def _count(self, n: int) -> None:
        """Add `n` downloaded bytes to the download bar (from any download thread)."""
        with self._lock:
            self._bar.update(n)

    def _download_queued(self) -> None:
        """Download queued files until none is left or the downloads stop."""
        while not self._stop.is_set():
            with self._lock:
                if not self._queue:
                    return
                f = self._queue.popleft()
            try:
                bar = _bar_class(self._stop, self._count, lambda f=f: self._began(f))
                check_download(f, f.remote.download(f.name, tqdm_class=bar))
                self._arrived.add(f.path)
            except BaseException as exc:  # handed to the reader by wait()
                if not self._stop.is_set():
                    self._error = self._error or exc
                self._stop.set()
            finally:
                self._finished = time.perf_counter()
                self._events[f.path].set()

    def _began(self, f: HubFile) -> None:
        """The HTTP download of `f` has begun: find its temporary file (an LFS file's blob is
        named by its sha256; other files are read once complete)."""
        sha = f.remote.lfs.get(f.name)
        if sha is not None:
            self._partial.found(f.path, f.remote.storage / "blobs" / sha)


def network_reads() -> int | None:
    """Set huggingface_hub's download chunk size to _CHUNK (above); the size it replaced, or
    None where it was left alone: the huggingface_hub versions that still use hf_transfer hand
    it to hf_transfer, as an int, when HF_HUB_ENABLE_HF_TRANSFER is set (and those Rust
    downloads hold no GIL)."""
    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_ENABLE_HF_TRANSFER", False):
        return None
    before, constants.DOWNLOAD_CHUNK_SIZE = constants.DOWNLOAD_CHUNK_SIZE, _CHUNK
    return before


def _total_bar(total: int, quiet: bool):
    """The one "downloading" bar: bytes of every download (disabled with --quiet)."""
    from huggingface_hub.utils import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="downloading", disable=quiet or total == 0)


def _bar_class(stop: threading.Event, count, began):
    """huggingface_hub's progress bar class for one file: not shown, its bytes handed to
    `count` (the download bar), `began()` called at its first plain HTTP chunk (the file is
    open then), and raising DownloadCancelled in a plain HTTP download once `stop` is set:
    hf_hub_download has no other way to stop. An hf_xet transfer (its bar fed from Rust) is
    not interrupted."""
    from huggingface_hub.utils import tqdm

    class _Bar(tqdm):
        def __init__(self, *args, **kwargs):
            self._http = kwargs.get("name") == "huggingface_hub.http_get"
            self._began = False
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n=1):
            if self._http and stop.is_set():
                raise DownloadCancelled("the merge has stopped")
            if self._http and not self._began:
                self._began = True
                began()
            count(n or 0)
            return super().update(n)

    return _Bar


def check_download(f: HubFile, path: Path) -> None:
    """The downloaded file is the one planned: its size, and its header byte for byte (a
    .bin's tensors are checked once loaded: io/hub_headers.py's check_as_planned)."""
    size = path.stat().st_size
    raw = f.remote.raw_headers.get(f.name)
    same = size == f.size
    if same and raw is not None:
        with open(path, "rb") as fh:
            same = fh.read(8 + len(raw))[8:] == raw
    if not same:
        raise differs_error(f, path)
