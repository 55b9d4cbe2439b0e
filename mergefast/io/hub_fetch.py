"""Downloading the weights of Hub inputs once their plan has passed (io/hub_remote.py).

Only the weight files a job reads are fetched (a slice of layers 0-7 of a 32-layer model
leaves the shards of the other layers on the Hub), in the order the pipeline consumes them,
several at once, into the standard huggingface_hub cache, while the merge runs: each job
starts once its files are in (io/hub_arrivals.py). A file already cached is not fetched
again. Before any byte is
downloaded, the free space of the cache's and the output's disks is checked against what the
download and the output need: one line when it is short.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..errors import ModelError
from .hub_arrivals import Arrivals, HubFile
from .hub_stream import Streams

log = logging.getLogger(__name__)

# Shards fetched at once, one HTTP stream each (snapshot_download's default is 8 too). On the
# 2-core VM, fake Hub at 200 MB/s in all (benchmarks/hub.py), the 2.17 GB of a 0.3B TIES merge
# came at 125-130 MB/s with 4 streams and 156-162 MB/s with 8 (two runs each), the merge
# running meanwhile. On the 2-vCPU Intel VM, 0.3B linear, 16 streams moved the last byte 0.3-0.7
# s earlier but left more merge work after it: the merge ended no sooner (3 alternated runs).
DOWNLOAD_THREADS = 8


def hub_files(plan, jobs=None) -> list[HubFile]:
    """The Hub weight files the plan's jobs (or `jobs`, in their order) read, in the order
    they are first read."""
    seen: dict[tuple[str, str], HubFile] = {}
    for job in plan.jobs if jobs is None else jobs:
        for source in job.sources:
            model = plan.models[source.model]
            remote = getattr(_inner(model.reader), "remote", None)
            if remote is None:
                continue
            for name in _files_of(model.reader, source.tensor):
                seen.setdefault((source.model, name), HubFile(source.model, remote, name))
    return list(seen.values())


def _inner(reader):
    """The CheckpointReader under the readers that wrap one (io.quantized.Fp8Reader,
    io.lora_reader.LoraReader, either over the other)."""
    while "_reader" in getattr(reader, "__dict__", {}):
        reader = reader.__dict__["_reader"]
    return reader


def _files_of(reader, tensor: str) -> list[str]:
    """The weight files reading `tensor` touches (an FP8 weight's scale may be in another)."""
    inner = _inner(reader)
    names = [tensor, *([reader._scaled[tensor]] if tensor in getattr(reader, "_scaled", {}) else [])]
    return [inner.info(n).file.relative_to(inner.folder).as_posix() for n in names]


def download_summary(plan, out: Path | None = None) -> dict:
    """Per Hub input: files and bytes to download and already cached; the disks' needs."""
    per_model: dict[str, dict] = {}
    for f in hub_files(plan):
        entry = per_model.setdefault(
            f.ref,
            {
                "repo": f.remote.what,
                "commit": f.remote.commit,
                "files": 0,
                "download_bytes": 0,
                "cached_files": 0,
                "cached_bytes": 0,
            },
        )
        cached = f.remote.is_cached(f.name)
        entry["cached_files" if cached else "files"] += 1
        entry["cached_bytes" if cached else "download_bytes"] += f.size
    needs = _disk_needs(plan, out) if per_model else []
    return {"models": per_model, "disks": needs}


def _disk_needs(plan, out: Path | None, downloads: bool = True) -> list[dict]:
    """Per disk (device) that the download (unless not `downloads`) or the output uses: bytes
    needed and free."""
    needs: dict[int, dict] = {}

    def add(path: Path, nbytes: int, what: str) -> None:
        where = _existing(path)
        entry = needs.setdefault(
            os.stat(where).st_dev, {"path": str(where), "need": 0, "free": free_bytes(where), "what": []}
        )
        entry["need"] += nbytes
        entry["what"].append(what)

    for f in hub_files(plan) if downloads else []:
        if not f.remote.is_cached(f.name):
            add(f.remote.storage.parent, f.size, "downloads")
    if out is not None:
        add(Path(out).parent, sum(j.out_bytes for j in plan.jobs), "output")
    for entry in needs.values():
        entry["what"] = " + ".join(dict.fromkeys(entry["what"]))
    return list(needs.values())


def free_bytes(path: Path) -> int:
    """Free bytes on the disk of `path` (the tests replace it)."""
    return shutil.disk_usage(path).free


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (the cache may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(plan, out: Path | None, downloads: bool = True) -> None:
    """ModelError, one line, when a disk lacks the space the downloads and the output need
    (the output alone without `downloads`: --stream-inputs writes no input file)."""
    disks = download_summary(plan, out)["disks"] if downloads else _disk_needs(plan, out, downloads=False)
    for disk in disks:
        if disk["need"] > disk["free"]:
            raise ModelError(
                f"not enough free disk space: the {disk['what']} need {_gb(disk['need'])} on "
                f"the disk of {disk['path']}, which has {_gb(disk['free'])} free; free some "
                "space, or point HF_HUB_CACHE (or --transformers-cache) or OUT at a larger disk"
            )


def _gb(n: int) -> str:
    """Bytes as GB for the one-line error (io may not import report.human_bytes)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n} bytes"


def start_downloads(
    plan, out: Path | None = None, jobs=None, *, quiet: bool = False, threads: int | None = None, stream: bool = False
) -> Arrivals | Streams:
    """Check the disks, then start downloading the Hub weight files that `jobs` (by default
    the plan's) read, in their order; the plan's readers wait for each file (io/hub_arrivals.py).
    With `stream` (--stream-inputs) nothing is downloaded: the readers read each tensor's bytes
    with range requests (io/hub_stream.py)."""
    if stream:
        streams, readers = Streams(), _remote_readers(plan)
        _check_streamable(plan)
        if readers:
            check_disk_space(plan, out, downloads=False)
        for reader in readers:
            reader.streams = streams
        return streams
    files = hub_files(plan, jobs)
    check_disk_space(plan, out)
    # one download per path: two references to one repo and commit (`org/m` and `org/m@v1`) share it
    unique: dict[Path, HubFile] = {}
    for f in files:
        unique.setdefault(f.path, f)
    # a file whose blob is cached under another snapshot is "downloaded" too: hf_hub_download links it
    pending = [f for f in unique.values() if not f.path.is_file()]
    fresh = sum(f.size for f in pending if not f.remote.is_cached(f.name))
    if pending:
        log.info("downloading %d file(s), %d bytes, from the Hugging Face Hub", len(pending), fresh)
    arrivals = Arrivals(pending, fresh, threads or DOWNLOAD_THREADS, quiet)
    for reader in _remote_readers(plan):
        reader.arrivals = arrivals
    return arrivals.start()


def _check_streamable(plan) -> None:
    """ModelError, before any byte is read, for a .bin file to read under --stream-inputs that
    is not cached: a pickled checkpoint is loaded whole (torch.load), not read in ranges."""
    binary = next((f for f in hub_files(plan) if f.name.endswith(".bin") and not f.path.is_file()), None)
    if binary is not None:
        raise ModelError(
            f"--stream-inputs reads safetensors weights only, and Hugging Face repo {binary.remote.what} "
            f"has PyTorch .bin weights ({binary.name}); drop --stream-inputs to download them into "
            "the cache, or merge a safetensors copy of the repo"
        )


def _remote_readers(plan) -> list:
    """The readers of the plan's Hub inputs planned from headers (io/hub_headers.py)."""
    readers = (_inner(model.reader) for model in plan.models.values())
    return [r for r in readers if getattr(r, "remote", None) is not None]
