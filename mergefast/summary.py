"""The end-of-run summary: bytes and time per stage, peak memory, kernel backend."""

from __future__ import annotations

import json
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import MergefastError


@dataclass
class RunSummary:
    """Figures of one merge run (also written by --stats-json)."""

    tensors: int = 0
    read_bytes: int = 0
    written_bytes: int = 0
    read_s: float = 0.0
    h2d_s: float = 0.0
    merge_s: float = 0.0
    d2h_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    device: str = "cpu"
    backends: dict[str, str] = field(default_factory=dict)
    downloaded_bytes: int = 0  # Hub weight files fetched during the run (0: none, all local or cached)
    download_s: float = 0.0  # from the first download's start to the last one's end (overlaps the merge)
    download_bytes_per_s: float = 0.0
    download_wait_s: float = 0.0  # how long the merge waited for shards still downloading

    def __post_init__(self) -> None:
        self.set_download(self.downloaded_bytes, self.download_s)

    def set_download(self, nbytes: int, seconds: float) -> None:
        """Record the Hub downloads: bytes, seconds and their rate."""
        self.downloaded_bytes, self.download_s = nbytes, seconds
        self.download_bytes_per_s = nbytes / seconds if nbytes and seconds > 0 else 0.0

    @property
    def seconds(self) -> float:
        """Wall time of the whole run."""
        return self.wall_s


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _rate(n: int, s: float) -> str:
    return f"{n / 1e9 / s:.2f} GB/s" if s > 0 else "-"


def format_summary(s: RunSummary) -> str:
    """Two lines: bytes and busy time per stage (Hub downloads first, when any), then wall
    time, peak RSS and backends."""
    stages = [f"read {_gb(s.read_bytes)} in {s.read_s:.2f} s ({_rate(s.read_bytes, s.read_s)})"]
    if s.downloaded_bytes:
        stages.insert(
            0,
            f"downloaded {_gb(s.downloaded_bytes)} in {s.download_s:.2f} s "
            f"({_gb(int(s.download_bytes_per_s))}/s, the merge waited {s.download_wait_s:.2f} s)",
        )
    if s.device.startswith("cuda"):
        stages.append(f"H2D {s.h2d_s:.2f} s")
    stages.append(f"merge {s.merge_s:.2f} s")
    if s.device.startswith("cuda"):
        stages.append(f"D2H {s.d2h_s:.2f} s")
    stages.append(f"write {_gb(s.written_bytes)} in {s.write_s:.2f} s")
    backends = ", ".join(f"{b} ({m})" for m, b in s.backends.items()) or "-"
    return (
        " · ".join(stages)
        + "\n"
        + f"wall {s.wall_s:.2f} s · peak RSS {_gb(s.peak_rss_bytes)} · {s.tensors} tensors · backend {backends}"
    )


def write_stats_json(path: str | Path, s: RunSummary, out: str | Path | None = None) -> None:
    """Write the summary's figures as JSON to `path` (`--stats-json`).

    This runs after the merge, once OUT (`out`) is in place: a file that cannot be written is
    a MergefastError naming the flag and the file and saying that OUT is complete (it was
    reported as OUT's error, which sent users to redo a finished merge)."""
    target = Path(path)
    try:
        target.write_text(json.dumps(asdict(s), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        if target.is_file() and not target.is_symlink():
            target.unlink(missing_ok=True)  # no empty or half-written stats file left behind
        done = f"; the merge itself finished: {out} is complete" if out is not None else ""
        raise MergefastError(
            f"--stats-json {path}: cannot write the run summary ({exc.strerror or exc})"
            f"{done}; give a writable file path"
        ) from exc
