"""--stream-inputs: Hub weights read with HTTP range requests straight into the pipeline's
buffers; no weight file is written to the cache.

io/hub_headers.py's reader hands a tensor whose file is not on disk to `Streams.read`, which
asks the Hub for exactly its bytes, in pieces of PIECE bytes, STREAMS at once (one HTTP
stream is slower than the link; a tensor of a 7B model is up to 500 MB), into the buffer the
pipeline reads into: the memory is the pipeline's, within --max-memory. A file already in the
cache is read from disk as before. Every byte of each tensor the plan reads crosses the network
once per run (nothing is kept): a second run streams again.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import ModelError, PipelineStopped
from .hub import hub_errors, is_network_error
from .hub_remote import RemoteRepo

# Bytes per range request. TIES of the 0.3B family from the fake Hub at 200 MB/s (2-core VM,
# benchmarks/hub.py's server): 104 MB/s with 16 MB pieces, 109 with 4 MB, 116 with 2 MB (one
# run each; the download mode got 182). Smaller pieces spread a tensor over more streams, but
# each costs a round trip, tens of ms to a real CDN rather than ~1 ms here.
PIECE = 4 * 2**20
STREAMS = 8  # range requests at once for one tensor (as hub_fetch's DOWNLOAD_THREADS)
# Bytes received between checks of the stop flag: Ctrl-C waits for at most one such chunk per
# stream (the range reads run in non-daemon threads that Python waits for at exit).
CHUNK = 1 << 16
RETRIES = 5  # attempts in a row without a byte received before a read fails (huggingface_hub's)
# A streamed read waits on round trips, not on this machine: both engines' stagings read the
# sources of a job at once, and the pipeline several jobs at once.
SOURCES_AT_ONCE = 8  # streamed reads of one job at once (a job has up to ~8 sources in practice)
JOBS_AT_ONCE = 3  # streamed jobs read at once (io/pipeline.py's readers)


def streamed_inputs(plan) -> bool:
    """Whether some input of `plan` (a MergePlan) is read in range requests (`Streams`)."""
    return any(getattr(model.reader, "streams", None) is not None for model in plan.models.values())


class Streams:
    """The range reads of one run: bytes received, seconds spent, and a stop flag (`cancel`).
    It has hub_arrivals.Arrivals' interface, which execute.py uses."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.fresh_bytes, self.seconds, self.waited_s = 0, 0.0, 0.0

    def cancel(self) -> None:
        """Stop: every range read in progress raises PipelineStopped at its next CHUNK."""
        self._stop.set()

    def finish(self) -> None:
        """Nothing to wait for once the jobs have read their bytes: a range read ends with its tensor."""

    def close(self) -> None:
        """Stop (as `cancel`): no file is held open."""
        self.cancel()

    def read(self, remote: RemoteRepo, name: str, start: int, out: memoryview) -> None:
        """Fill `out` with bytes [start, start + len(out)) of file `name` of `remote`."""
        began = time.perf_counter()
        pieces = [(at, min(len(out), at + PIECE)) for at in range(0, len(out), PIECE)]
        if len(pieces) == 1:
            self._get(remote, name, start, out)
        else:
            with ThreadPoolExecutor(min(STREAMS, len(pieces))) as pool:
                list(pool.map(lambda p: self._get(remote, name, start + p[0], out[p[0] : p[1]]), pieces))
        with self._lock:
            self.fresh_bytes += len(out)
            self.seconds += time.perf_counter() - began

    def _get(self, remote: RemoteRepo, name: str, start: int, out: memoryview) -> None:
        """Fill `out` from offset `start`; a connection dropped mid-body is resumed from the
        byte it stopped at, up to RETRIES times in a row (as huggingface_hub's downloads)."""
        where = f"{name} of Hugging Face repo {remote.what} (commit {remote.commit[:12]})"
        got, retries = 0, RETRIES
        while got < len(out):
            try:
                more = self._get_once(remote, name, start + got, out[got:], where)
            except _ShortBody as e:
                more = e.got
                if self._stop.is_set():
                    raise PipelineStopped("the merge has stopped") from None
                if retries == 0:
                    raise ModelError(
                        f"{where}: the connection dropped {RETRIES + 1} times in a row while reading bytes "
                        f"{start}..{start + len(out)} ({e}); retry, or rerun without --stream-inputs"
                    ) from None
                retries = retries - 1 if more == 0 else RETRIES  # progress resets the count
            got += more

    def _get_once(self, remote: RemoteRepo, name: str, start: int, out: memoryview, where: str) -> int:
        """One range request for `out`; the bytes it filled (_ShortBody when the body ended early)."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(remote.repo, name, revision=remote.commit)
        headers = {
            **build_hf_headers(),
            "Range": f"bytes={start}-{start + len(out) - 1}",
            "Accept-Encoding": "identity",
        }
        got = 0
        with (
            hub_errors(remote.repo, remote.revision, remote.cache_dir, file=name),
            get_session().stream(
                "GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, follow_redirects=True
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            if response.status_code != 206:
                raise ModelError(
                    f"{where}: the Hub answered a range request with HTTP {response.status_code}; "
                    "rerun without --stream-inputs"
                )
            try:
                for chunk in response.iter_bytes(CHUNK):
                    if self._stop.is_set():
                        raise PipelineStopped("the merge has stopped")
                    if got + len(chunk) > len(out):
                        break
                    out[got : got + len(chunk)] = chunk
                    got += len(chunk)
            except Exception as e:
                if not is_network_error(e):
                    raise
                raise _ShortBody(f"{type(e).__name__}: {e}", got) from None  # _get resumes from `got`
        if got != len(out):
            raise _ShortBody(f"the Hub sent {got} of the {len(out)} bytes asked for at offset {start}", got)
        return got


class _ShortBody(Exception):
    """A range response that ended before its last byte (`got`: the bytes it did fill)."""

    def __init__(self, message: str, got: int):
        super().__init__(message)
        self.got = got
