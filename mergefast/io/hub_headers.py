"""Safetensors headers of a Hub repo read over HTTP range requests, and the reader built on them.

A header is the file's first 8 + n bytes (n: the little-endian length in its first 8 bytes).
The first request asks for FIRST_RANGE bytes, the second for exactly the rest of the header,
so a header of any length (close to FIRST_RANGE or not) is read whole: huggingface_hub versions
before 0.23 cut headers of 99,993..100,000 bytes short (their first range was 100,000 bytes).
FIRST_RANGE is 8, not huggingface_hub's 100,000: a planned hub config then downloads not one
byte of tensor data (100 kB past a 2 kB header is mostly tensor data), for one more round trip
per file, and the files are read in parallel. A server that ignores Range is read only as far
as the header, then the connection is dropped.

The bytes then go through the same strict parser as local files (io/safetensors_header.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ModelError
from .hub import hub_errors
from .hub_remote import REQUEST_THREADS, RemoteRepo, check_listed
from .model_files import read_model_json
from .reader import CheckpointReader, TensorInfo
from .safetensors_header import header_length, parse_safetensors_header
from .weight_index import read_weight_map

FIRST_RANGE = 8  # the length prefix alone: see the module docstring


def fetch_header(remote: RemoteRepo, name: str) -> bytes:
    """The JSON header bytes of safetensors file `name` of `remote`, read over HTTP."""
    size = remote.sizes[name]
    where = _display(remote, name)
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


def parse_remote_header(remote: RemoteRepo, name: str, raw: bytes) -> dict[str, TensorInfo]:
    """The TensorInfos of `raw` (the file's header), with the paths the file will have in the
    snapshot folder; errors name the repo and the file rather than that future path."""
    path = remote.folder / name
    try:
        infos, _ = parse_safetensors_header(path, raw, remote.sizes[name])
    except ModelError as e:
        raise ModelError(str(e).replace(str(path), _display(remote, name))) from None
    return infos


def _display(remote: RemoteRepo, name: str) -> str:
    return f"{name} of Hugging Face repo {remote.what} (commit {remote.commit[:12]}, header read over HTTP)"


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


class RemoteCheckpointReader(CheckpointReader):
    """A CheckpointReader of a RemoteRepo: names, infos and byte ranges from headers read over
    HTTP (all prefetched at once, in parallel); a read waits until its file is downloaded."""

    def __init__(self, remote: RemoteRepo):
        self.remote = remote
        self.folder = remote.folder
        self.format = "safetensors"
        self.index_file: Path | None = None
        if remote.weights.endswith(".index.json"):
            self.index_file = self.folder / remote.weights
            data = read_model_json(self.folder, remote.weights)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if isinstance(weight_map, dict):  # else read_weight_map says what is wrong
                check_listed(remote, {v for v in weight_map.values() if isinstance(v, str)}, self.index_file)
            self._weight_map = read_weight_map(self.folder, self.index_file, remote=remote.sizes)
        else:
            self._weight_map = None
            self._single = self.folder / remote.weights
        self._init_caches()
        self.arrivals = None  # set by io/hub_fetch.py's start_downloads: files still downloading
        self.streams = None  # or, with --stream-inputs, the range reads (io/hub_stream.py)
        self._prefetch()

    def _prefetch(self) -> None:
        """Every header not on disk yet, read over HTTP in parallel, parsed strictly."""
        pending = [p for p in self._files() if not p.is_file()]
        names = [p.relative_to(self.folder).as_posix() for p in pending]
        with ThreadPoolExecutor(REQUEST_THREADS) as pool:
            raws = list(pool.map(lambda n: fetch_header(self.remote, n), names))
        for path, name, raw in zip(pending, names, raws):
            self._headers[path] = parse_remote_header(self.remote, name, raw)

    def _fd(self, path: Path) -> int:
        if self.arrivals is not None and path not in self._fds:
            self.arrivals.wait(path)  # the merge runs while the shards download (io/hub_arrivals.py)
        return super()._fd(path)

    def _pread(self, i: TensorInfo, buf) -> None:
        if self.streams is None or i.file.is_file():
            return super()._pread(i, buf)
        name = i.file.relative_to(self.folder).as_posix()
        self.streams.read(self.remote, name, i.data_offsets[0], memoryview(buf.numpy()).cast("B")[: i.nbytes])

    def weight_files(self) -> list[str]:
        """The weight files' names in the repo."""
        return [p.relative_to(self.folder).as_posix() for p in self._files()]

    def __repr__(self) -> str:
        return f"RemoteCheckpointReader({self.remote.what!r}, commit={self.remote.commit[:12]!r})"
