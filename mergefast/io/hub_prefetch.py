"""Hub inputs' metadata, read while the rest of mergefast starts; the weight files' headers over HTTP.

A merge or plan of Hub repos spends its first seconds on two things that do not depend on each
other: importing torch (1-2.5 s on the 2-vCPU box) and asking the Hub for each repo's listing,
side files and safetensors headers (latency-bound round trips, ~0.2 s per repo one after the
other). `HubPrefetch` starts the second in background threads, every repo at once, as soon as
the config is parsed; this module and everything it imports is torch-free, so the two overlap.
The planner then finds each repo located and its headers read (inputs.open_model), or the
repo's error, raised in config order as if it had happened there. No tensor byte is asked for:
a bad config is still refused before any download.

A header is the file's first 8 + n bytes (n: the little-endian length in its first 8 bytes).
The first request asks for FIRST_RANGE bytes, the second for exactly the rest of the header,
so a header of any length (close to FIRST_RANGE or not) is read whole: huggingface_hub versions
before 0.23 cut headers of 99,993..100,000 bytes short (their first range was 100,000 bytes).
FIRST_RANGE is 8, not huggingface_hub's 100,000: a planned hub config then downloads not one
byte of tensor data (100 kB past a 2 kB header is mostly tensor data), for one more round trip
per file, and the files are read in parallel. A server that ignores Range is read only as far
as the header, then the connection is dropped. The bytes then go through the same strict
parser as local files (io/hub_headers.py, io/safetensors_header.py). A `.bin` file's metadata
(its zip directory and pickle, no storage) is read by io/hub_bin.py through the same range
requests.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..errors import ConfigError, ModelError
from .hub import _offline, hub_errors, local_folder, parse_model_ref
from .hub_bin import bin_metadata
from .hub_remote import REQUEST_THREADS, RemoteRepo, locate_model
from .lora import split_lora_ref
from .model_files import header_length
from .weight_index import read_weight_map

# Repos located at once. Each also reads its side files and headers REQUEST_THREADS at a time.
REPO_THREADS = 4


class HubPrefetch:
    """The Hub repos among the refs given to `start` located (io/hub_remote.py's
    `locate_model`) and their weight files' headers read, in background threads; `locate` hands
    each result over. A context manager: leaving it drops what was not asked for."""

    def __init__(self, cache_dir: str | None):
        self.cache_dir = cache_dir
        self._pool: ThreadPoolExecutor | None = None
        self._found: dict[str, Future] = {}
        self._closed = threading.Event()  # set by close: reads not started yet are skipped

    def start(self, refs: list[str]) -> None:
        """Start locating the Hub repos among `refs` (nothing offline, nothing for folders)."""
        models = [_model_part(r) for r in dict.fromkeys(refs)]
        hub_refs = [] if _offline() else [r for r in dict.fromkeys(models) if _is_hub_ref(r) and r not in self._found]
        if hub_refs and self._pool is None:
            self._pool = ThreadPoolExecutor(min(len(hub_refs), REPO_THREADS), "mergefast-hub")
        for ref in hub_refs:
            self._found[ref] = self._pool.submit(_locate_and_read, ref, self.cache_dir, self._closed)

    def locate(self, ref: str, cache_dir: str | None) -> Path | RemoteRepo:
        """`locate_model` of `ref`: the prefetched result (or its error), else located now."""
        found = self._found.pop(ref, None) if cache_dir == self.cache_dir else None
        if found is None:
            return locate_model(parse_model_ref(ref), cache_dir)
        return found.result()

    def close(self) -> None:
        """Drop what was not asked for: repos not started are cancelled, headers not started
        skipped, and the requests in flight (small ones) awaited, so that no thread outlives
        the run."""
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> HubPrefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _model_part(ref: str) -> str:
    """The model of `model+lora` (its adapter is read when the model is opened); a malformed
    ref as it is, left to the planner."""
    try:
        return split_lora_ref(ref)[0]
    except ConfigError:
        return ref


def _is_hub_ref(ref: str) -> bool:
    """Whether `ref` names a Hub repo (not a local folder); a malformed ref is left to the
    planner, which says what is wrong with it."""
    try:
        return local_folder(parse_model_ref(ref)) is None
    except Exception:  # noqa: BLE001 - reported by the planner, in config order
        return False


def _locate_and_read(ref: str, cache_dir: str | None, closed: threading.Event) -> Path | RemoteRepo:
    """`locate_model`, then every safetensors header of a RemoteRepo read into its
    raw_headers. A header that cannot be read is left to the planner's reader, which then
    reports it in its own order (after the index's checks)."""
    found = locate_model(parse_model_ref(ref), cache_dir)
    if isinstance(found, RemoteRepo):
        with ThreadPoolExecutor(REQUEST_THREADS) as pool:
            list(pool.map(lambda name: _try_metadata(found, name, closed), _headers_to_read(found)))
    return found


def _try_metadata(remote: RemoteRepo, name: str, closed: threading.Event) -> None:
    """Read weight file `name`'s metadata (safetensors header, or a .bin's zip directory and
    pickle) into `remote`'s cache; an error is left for the planner to raise."""
    if closed.is_set():
        return
    try:
        fetch_metadata(remote, name)
    except Exception:  # noqa: BLE001 - see _locate_and_read
        pass


def _weight_files(remote: RemoteRepo) -> list[str]:
    """The weight files of the repo, as the planner's reader finds them (its index read by
    io/weight_index.py's `read_weight_map`, with the same checks)."""
    if not remote.weights.endswith(".index.json"):
        return [remote.weights]
    try:
        shards = read_weight_map(remote.folder, remote.folder / remote.weights, remote=remote.sizes).values()
    except Exception:  # noqa: BLE001 - a bad index is the reader's to report
        return []
    return sorted({p.relative_to(remote.folder).as_posix() for p in shards})


def _headers_to_read(remote: RemoteRepo) -> list[str]:
    """The weight files whose headers the planner's reader would read over HTTP: those not
    in the snapshot folder yet (a cached file's header is read from disk)."""
    return [name for name in _weight_files(remote) if not (remote.folder / name).is_file()]


FIRST_RANGE = 8  # the length prefix alone: see the module docstring


def fetch_metadata(remote: RemoteRepo, name: str) -> bytes:
    """What the planner's reader needs of weight file `name`, read over HTTP: a safetensors
    file's JSON header (into remote.raw_headers), or a .bin file's records without its
    storages (io/hub_bin.py; into remote.raw_bins)."""
    if not name.endswith(".bin"):
        return fetch_header(remote, name)
    where = display_name(remote, name)
    with hub_errors(remote.repo, remote.revision, remote.cache_dir, file=name):
        raw = bin_metadata(lambda start, end: _get_range(remote, name, start, end), remote.sizes[name], where)
    remote.raw_bins[name] = raw
    return raw


def fetch_header(remote: RemoteRepo, name: str) -> bytes:
    """The JSON header bytes of safetensors file `name` of `remote`, read over HTTP."""
    size = remote.sizes[name]
    where = display_name(remote, name)
    if size < 8:
        raise ModelError(
            f"{where}: not a safetensors file ({size} bytes, shorter than the 8-byte header length); "
            "the repo is broken: pin another @revision"
        )
    with hub_errors(remote.repo, remote.revision, remote.cache_dir, file=name):
        head = _get_range(remote, name, 0, min(FIRST_RANGE, size))
        n = header_length(where, head, size)
        if len(head) < 8 + n:
            head += _get_range(remote, name, len(head), 8 + n)
    if len(head) < 8 + n:
        raise ModelError(f"{where}: the Hub sent {len(head)} of the header's {8 + n} bytes; retry later")
    remote.raw_headers[name] = head[8 : 8 + n]
    return head[8 : 8 + n]


def display_name(remote: RemoteRepo, name: str) -> str:
    """How errors name file `name` of `remote` (its future local path would mislead)."""
    return f"{name} of Hugging Face repo {remote.what} (commit {remote.commit[:12]}, read over HTTP)"


def _get_range(remote: RemoteRepo, name: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of file `name` (fewer only if the server sends fewer)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(remote.repo, name, revision=remote.commit)
    headers = {**build_hf_headers(), "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    with get_session().stream(
        "GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, follow_redirects=True
    ) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        skip = start if response.status_code == 200 else 0  # Range ignored: the body starts at byte 0
        out = bytearray()
        for chunk in response.iter_bytes():
            out += chunk
            if len(out) >= skip + end - start:
                break  # leaving the block closes the connection: no more of the file is sent
    return bytes(out[skip : skip + end - start])
