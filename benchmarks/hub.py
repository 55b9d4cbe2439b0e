#!/usr/bin/env python3
"""Hub inputs end to end: merges from a fake Hub at a fixed bandwidth, against the download floor.

    python benchmarks/hub.py [--size 0.3b] [--mbps 200] [--methods ties,linear] [--dir DIR]
    MERGEKIT_YAML=/path/to/mergekit-yaml python benchmarks/hub.py    # adds mergekit's rows

Serves benchmarks/e2e.py's model family (base + 3 fine-tunes, bf16 safetensors, rewritten in
--shard-mb shards) as org/base, org/ft1, org/ft2, org/ft3 from tests/fake_hub.py, all
connections together limited to --mbps MB/s, then times whole processes, each from an empty
Hugging Face cache:

- floor: huggingface_hub's snapshot_download of the config's repos, concurrently (the
  download alone, nothing merged);
- `mergefast yaml` (also with --stream-inputs, and on the torch engine: MERGEFAST_BACKEND) and
  `mergekit-yaml` (MERGEKIT_YAML, else on PATH; its rows are skipped when absent) on the
  hub-id configs (e2e.py's TIES and linear);
- `mergefast yaml` on both engines again with the repos already in the cache (downloaded
  untimed first): a merge that reuses its inputs, as when a config is tuned; these rows sit
  below the download floor;
- a bad config (a layer range past the end of the model), which must be refused.

Prints a markdown table: seconds, the ratio to that config's floor, and the bytes the Hub sent
as a % of the bytes of the config's repos. Needs about 2x the family's size in memory (the
fake Hub holds the files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the fake Hub is the tests' (never in the package)
import e2e  # noqa: E402
from fake_hub import FakeHub  # noqa: E402

e2e.SIZES.setdefault("tiny", (2, 64, 128, 4, 4, 256))  # the smoke test's size: seconds, not minutes
REPOS = {"base": "org/base", "ft1": "org/ft1", "ft2": "org/ft2", "ft3": "org/ft3"}
BAD = (
    "merge_method: passthrough\nslices:\n  - sources:\n      - {{model: org/ft1, layer_range: [0, {past}]}}\n"
    "dtype: bfloat16\n"
)
# The floor: every repo at once, each with snapshot_download's own parallel file downloads.
FLOOR = (
    "import sys\nfrom concurrent.futures import ThreadPoolExecutor\n"
    "from huggingface_hub import snapshot_download\n"
    "with ThreadPoolExecutor(len(sys.argv) - 1) as pool:\n    list(pool.map(snapshot_download, sys.argv[1:]))\n"
)


class PacedHub(FakeHub):
    """The fake Hub with one bandwidth for all connections together (FakeHub's own limit is
    per connection): each 64 kB chunk sent books its time on a shared clock."""

    def __init__(self, bytes_per_second: float):
        super().__init__()
        self.rate, self._next, self._pace = bytes_per_second, 0.0, threading.Lock()

    def count(self, repo, path, start, end) -> None:
        """Count the chunk, then wait until the shared bandwidth has room for it."""
        super().count(repo, path, start, end)
        with self._pace:
            now = time.monotonic()
            self._next = max(self._next, now) + (end - start) / self.rate
            delay = self._next - now
        time.sleep(max(0.0, delay))


@dataclass
class Row:
    """One timed command: median seconds, the bytes the Hub sent, its exit code, its stderr's end."""

    config: str
    command: str
    seconds: float
    served: int
    code: int
    tail: str = ""


def reshard(family: dict[str, Path], root: Path, shard_mb: int) -> dict[str, Path]:
    """The family rewritten in shards of `shard_mb` MB under root (made once, reused): e2e.py
    writes a 0.3b model as one file, and merging while downloading overlaps per shard."""
    from mergefast.io.reader import CheckpointReader
    from mergefast.io.writer import OutputTensor, ShardedWriter

    out = {}
    for name, folder in family.items():
        out[name] = dest = root / f"{folder.parent.name}-{shard_mb}mb" / name
        if dest.exists():
            continue
        tmp = dest.with_name(f"{name}.partial")  # renamed once complete: an interrupted run redoes it
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("model*.safetensors*"))
        with CheckpointReader(folder) as reader:
            infos = [reader.info(n) for n in reader.names()]
            writer = ShardedWriter(tmp, [OutputTensor(i.name, i.dtype, i.shape) for i in infos], shard_mb * 10**6)
            for i in infos:
                writer.write(i.name, reader.read(i.name))
            writer.finish()
        tmp.rename(dest)
    return out


def hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    """The environment that points a process's huggingface_hub at `hub`, cache under `home`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_ENABLE_HF_TRANSFER")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="*",
        no_proxy="*",
    )
    return env


@dataclass
class Command:
    """A timed command: its argv ("{out}" stands for the output folder), the variables added
    to its environment, and whether it runs with the config's repos already in the cache."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cached: bool = False


def run_once(hub: FakeHub, cmd: Command, work: Path, repos: list[str]) -> tuple[float, int, int, str]:
    """(seconds, bytes served, exit code, stderr's end) of `cmd` from an empty cache, or with
    `repos` in it (downloaded first, untimed) for a cached command."""
    home, out = work / "hf", work / "out"
    for path in (home, out):
        shutil.rmtree(path, ignore_errors=True)
    env = {**hub_env(hub, home), **cmd.env}
    if cmd.cached:
        subprocess.run([sys.executable, "-c", FLOOR, *repos], env=env, check=True, capture_output=True)
    hub.reset_counts()
    start = time.perf_counter()
    proc = subprocess.run([c.replace("{out}", str(out)) for c in cmd.argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    for path in (home, out):
        shutil.rmtree(path, ignore_errors=True)
    return seconds, sum(hub.served.values()), proc.returncode, proc.stderr.strip().splitlines()[-1:]


def measure(
    hub: FakeHub, config: str, cmds: dict[str, Command], work: Path, repeats: int, repos: list[str]
) -> list[Row]:
    """Each command `repeats` times, alternated; a row per command with the median time."""
    runs: dict[str, list] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            runs[name].append(run_once(hub, cmd, work, repos))
            print(f"  {config:8s} {name:10s} {runs[name][-1][0]:7.2f} s  exit {runs[name][-1][2]}", file=sys.stderr)
    return [
        Row(config, name, statistics.median(r[0] for r in rs), rs[-1][1], rs[-1][2], " ".join(rs[-1][3]))
        for name, rs in runs.items()
    ]


TORCH_ENGINE = {"MERGEFAST_BACKEND": "cpu-ext"}  # torch imported, its engine (not mergefast/host/)


def commands(cfg: Path, repos: list[str], mergekit: str | None, variants: bool = True) -> dict[str, Command]:
    """The floor, mergefast (with `variants` also with --stream-inputs, on the torch engine, and
    from a filled cache on both engines) and (when found) mergekit on config file `cfg`."""
    merge = [sys.executable, "-m", "mergefast", "yaml", str(cfg), "{out}", "--quiet"]
    cmds = {"floor": Command([sys.executable, "-c", FLOOR, *repos]), "mergefast": Command(merge)}
    if variants:
        cmds["mergefast --stream-inputs"] = Command([*merge, "--stream-inputs"])
        cmds["mergefast, torch engine"] = Command(merge, TORCH_ENGINE)
        cmds["mergefast, cached"] = Command(merge, cached=True)
        cmds["mergefast, cached, torch engine"] = Command(merge, TORCH_ENGINE, cached=True)
    if mergekit:
        cmds["mergekit"] = Command([mergekit, str(cfg), "{out}", "--no-copy-tokenizer", "--no-write-model-card"])
    return cmds


def table(rows: list[Row], repo_bytes: dict[str, int]) -> str:
    """The markdown table: per config, each command against that config's floor."""
    floors = {r.config: r.seconds for r in rows if r.command == "floor"}
    lines = ["| config | command | time (s) | x floor | bytes served | exit |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        served = f"{r.served / 1e6:.1f} MB ({100 * r.served / repo_bytes[r.config]:.1f}%)"
        lines.append(
            f"| {r.config} | {r.command} | {r.seconds:.2f} | {r.seconds / floors[r.config]:.2f} | "
            f"{served} | {r.code}{' (refused)' if r.config == 'bad' and r.code else ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, make and serve the family, time every command and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=e2e.SIZES, default="0.3b")
    ap.add_argument("--mbps", type=float, default=200.0, help="the Hub's bandwidth, MB/s, all connections together")
    ap.add_argument("--methods", default="ties,linear")
    ap.add_argument("--shard-mb", type=int, default=100, help="shard size of the served repos (0: e2e.py's files)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mergefast-hub"))
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    e2e.compile_bytecode()
    family = e2e.make_family(args.dir, args.size)
    if args.shard_mb:
        family = reshard(family, args.dir, args.shard_mb)
    mergekit = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml")
    hub = PacedHub(args.mbps * 1e6)
    for name, folder in family.items():
        repo = hub.add_repo(REPOS[name], folder)
        for path in repo.files:
            repo.entry(path)  # the hashes the Hub answers with, computed once, before any timing
    size = {repo: sum(len(d) for d in hub.repos[repo].files.values()) for repo in REPOS.values()}
    hub.start()
    layers, work = e2e.SIZES[args.size][0], args.dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows, repo_bytes = [], {}
    models3 = "\n".join(f"  - model: {REPOS[k]}" for k in ("ft1", "ft2", "ft3"))
    texts = {
        m: e2e.CONFIGS[m].format(
            models3=models3, base=REPOS["base"], ft1=REPOS["ft1"], ft2=REPOS["ft2"], half=layers // 2, layers=layers
        )
        for m in args.methods.split(",")
    }
    texts["bad"] = BAD.format(past=layers + 8)
    try:
        for config, text in texts.items():
            cfg = work / f"{config}.yml"
            cfg.write_text(text)
            repos = [r for r in REPOS.values() if r in text]
            repo_bytes[config] = sum(size[r] for r in repos)
            rows += measure(hub, config, commands(cfg, repos, mergekit, config != "bad"), work, args.repeats, repos)
    finally:
        hub.stop()
    shards = f"{args.shard_mb} MB shards" if args.shard_mb else "e2e.py's shards"
    print(
        f"\n{args.size} family ({shards}), fake Hub at {args.mbps:g} MB/s total, {os.cpu_count()} CPUs, "
        f"mergekit: {'yes' if mergekit else 'not found (MERGEKIT_YAML unset)'}\n"
    )
    print(table(rows, repo_bytes))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))


if __name__ == "__main__":
    main()
