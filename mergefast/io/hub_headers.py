"""The reader of a Hub repo planned from its weight files' headers (read over HTTP range
requests by io/hub_prefetch.py): safetensors headers parsed by the same strict parser as local
files (io/safetensors_header.py), `.bin` files' pickles loaded onto the meta device
(io/hub_bin.py, io/torch_bin.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ModelError
from .hub_prefetch import display_name, fetch_metadata
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
        self.format = "safetensors" if remote.weights.startswith("model.safetensors") else "bin"
        self._planned: dict[Path, dict] = {}  # .bin file -> its meta tensors, read over HTTP
        self._verified: set[Path] = set()  # .bin files loaded and found as planned
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
            read = self.remote.raw_headers if self.format == "safetensors" else self.remote.raw_bins
            raws = list(pool.map(lambda n: read.get(n) or fetch_metadata(self.remote, n), names))
        for path, name, raw in zip(pending, names, raws):
            if self.format == "safetensors":
                self._headers[path] = parse_remote_header(self.remote, name, raw)
            else:
                from .torch_bin import load_bin_metadata  # a .bin's pickle needs torch.load

                self._planned[path] = load_bin_metadata(raw, display_name(self.remote, name))

    def _bin_tensors(self, path: Path) -> dict:
        planned = self._planned.get(path)
        return planned if planned is not None else super()._bin_tensors(path)

    def _state_dict(self, path: Path) -> dict:
        """A .bin file's tensors, once it is downloaded, checked against the plan's."""
        if self.arrivals is not None and path not in self._state_dicts:
            self.arrivals.wait(path)
        sd = super()._state_dict(path)
        planned = self._planned.get(path)
        if planned is not None and path not in self._verified:
            check_as_planned(path, sd, planned)
            self._verified.add(path)
        return sd

    def _fd(self, path: Path) -> int:
        if self.arrivals is not None and path not in self._fds:
            self.arrivals.wait(path)  # the merge runs while the shards download (io/hub_arrivals.py)
        return super()._fd(path)

    def map_whole(self, name: str, elements: tuple[int, int] | None = None):
        """CheckpointReader's mapping where the tensor's file is complete on disk; None while
        it downloads (then `read_into` reads the tensor's bytes as they come, rather than
        waiting for the whole file) or when --stream-inputs reads it in ranges."""
        file = self.info(name).file
        if self.streams is not None and not file.is_file():
            return None
        if self.arrivals is not None and not self.arrivals.complete(file):
            return None
        return super().map_whole(name, elements)

    def _pread(self, i: TensorInfo, mv: memoryview) -> None:
        out = mv[: i.nbytes]
        if self.streams is not None and not i.file.is_file():
            self.streams.read(self.remote, i.file.relative_to(self.folder).as_posix(), i.data_offsets[0], out)
            return
        # a file still downloading is read as far as it has come (io/hub_partial.py)
        early = self.arrivals is not None and i.file not in self._fds
        if not (early and self.arrivals.read_early(i.file, i.data_offsets[0], out)):
            super()._pread(i, mv)

    def weight_files(self) -> list[str]:
        """The weight files' names in the repo."""
        return [p.relative_to(self.folder).as_posix() for p in self._files()]

    def __repr__(self) -> str:
        return f"RemoteCheckpointReader({self.remote.what!r}, commit={self.remote.commit[:12]!r})"


def check_as_planned(path: Path, loaded: dict, planned: dict) -> None:
    """ModelError when a downloaded .bin file's tensors are not those its metadata read over
    HTTP promised (names, dtypes, shapes)."""

    def kind(tensors: dict, name: str):
        t = tensors.get(name)
        return None if t is None else (t.dtype, tuple(t.shape))

    differs = sorted(k for k in planned.keys() | loaded.keys() if kind(loaded, k) != kind(planned, k))
    if differs:
        raise ModelError(
            f"{path}: tensor {differs[0]!r} is not as the file's metadata read over HTTP said; the Hub "
            "served two different files: run the merge again"
        )
