"""The reader of a Hub repo planned from its safetensors headers (read over HTTP range
requests by io/hub_prefetch.py, parsed by the same strict parser as local files,
io/safetensors_header.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ModelError
from .hub_prefetch import display_name, fetch_header
from .hub_remote import REQUEST_THREADS, RemoteRepo, check_listed
from .model_files import read_model_json
from .reader import CheckpointReader, TensorInfo
from .safetensors_header import parse_safetensors_header
from .weight_index import read_weight_map


def parse_remote_header(remote: RemoteRepo, name: str, raw: bytes) -> dict[str, TensorInfo]:
    """The TensorInfos of `raw` (the file's header), with the paths the file will have in the
    snapshot folder; errors name the repo and the file rather than that future path."""
    path = remote.folder / name
    try:
        infos, _ = parse_safetensors_header(path, raw, remote.sizes[name])
    except ModelError as e:
        raise ModelError(str(e).replace(str(path), display_name(remote, name))) from None
    return infos


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
        """Every header not on disk yet, read over HTTP in parallel (unless read already), parsed strictly."""
        pending = [p for p in self._files() if not p.is_file()]
        names = [p.relative_to(self.folder).as_posix() for p in pending]
        with ThreadPoolExecutor(REQUEST_THREADS) as pool:  # those io/hub_prefetch.py has read are kept
            raws = list(pool.map(lambda n: self.remote.raw_headers.get(n) or fetch_header(self.remote, n), names))
        for path, name, raw in zip(pending, names, raws):
            self._headers[path] = parse_remote_header(self.remote, name, raw)

    def _fd(self, path: Path) -> int:
        if self.arrivals is not None and path not in self._fds:
            self.arrivals.wait(path)  # the merge runs while the shards download (io/hub_arrivals.py)
        return super()._fd(path)

    def _pread(self, i: TensorInfo, buf) -> None:
        out = memoryview(buf.numpy()).cast("B")[: i.nbytes]
        if self.streams is not None and not i.file.is_file():
            self.streams.read(self.remote, i.file.relative_to(self.folder).as_posix(), i.data_offsets[0], out)
            return
        # a file still downloading is read as far as it has come (io/hub_partial.py)
        early = self.arrivals is not None and i.file not in self._fds
        if not (early and self.arrivals.read_early(i.file, i.data_offsets[0], out)):
            super()._pread(i, buf)

    def weight_files(self) -> list[str]:
        """The weight files' names in the repo."""
        return [p.relative_to(self.folder).as_posix() for p in self._files()]

    def __repr__(self) -> str:
        return f"RemoteCheckpointReader({self.remote.what!r}, commit={self.remote.commit[:12]!r})"
