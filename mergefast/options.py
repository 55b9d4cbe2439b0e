"""Options of a merge run (the `mergefast yaml` flags), shared by the CLI and `merge()`."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import ConfigError

DEFAULT_SHARD_SIZE = 5_000_000_000
AUTO_MEMORY_MIN = 256_000_000
# --random-seed: the random methods key their draws by the seed modulo 2**64 (methods/random.py)
# and torch.manual_seed takes at most 2**64 - 1, so larger seeds would only alias smaller ones.
MAX_SEED = 2**64 - 1
_MEMORY_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "b": 1000**3, "t": 1000**4}


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory(value: str | int) -> int:
    """`--max-memory`: bytes as an integer, with a k/m/g suffix (x1000; b = g as in
    --out-shard-size, an optional trailing 'b' after k/m/g), or a percentage of RAM."""
    if isinstance(value, int) and value > 0:
        return value
    text = str(value).strip().lower()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if 0 < share <= 100:
                return int(physical_memory() * share / 100)
        else:
            if len(text) > 2 and text.endswith("b") and text[-2] in "kmgt":
                text = text[:-1]
            unit = text[-1] if text and text[-1] in _MEMORY_UNITS else ""
            number = float(text[: len(text) - len(unit)])
            if 0 < number < float("inf"):
                return int(number * _MEMORY_UNITS[unit])
    except (ValueError, OverflowError):
        pass
    raise ConfigError(f"--max-memory {value!r}: give bytes (e.g. 4000000000, 4g, 500m) or a share of RAM (e.g. 25%)")


def _checked_device(name: str) -> str:
    """--device NAME when torch knows it and, for CUDA, has that GPU; else a usage error."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r}: not a device name; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"--device {name}: torch sees {count} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: mergefast merges on cpu or cuda devices")
    return name


_BOOL_OPTIONS = ("cuda", "copy_tokenizer", "write_model_card", "allow_crimes", "lazy_unpickle",
                 "trust_remote_code", "quiet", "unsafe_truncate_embeddings")
_INT_OPTIONS = ("out_shard_size", "random_seed", "verbose")
_TEXT_OPTIONS = ("device", "transformers_cache", "stats_json")


def _checked_types(kwargs: dict) -> dict:
    """Options of the Python API checked as the CLI's parser checks flags: any string passed
    as `cuda` was true (`cuda="no"` asked for a GPU), a list as `out_shard_size` failed deep
    inside the writer."""
    checked = dict(kwargs)
    for name, value in kwargs.items():
        if name in _BOOL_OPTIONS and not isinstance(value, bool):
            raise ConfigError(f"merge option {name}={value!r}: give True or False")
        if name in _INT_OPTIONS and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"merge option {name}={value!r}: give a whole number")
        if name in _TEXT_OPTIONS and value is not None:
            if not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"merge option {name}={value!r}: give a string")
            checked[name] = os.fspath(value)
    seed = checked.get("random_seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"merge option random_seed={seed!r} (--random-seed): give a whole number from 0 to "
                          f"{MAX_SEED}")
    if checked.get("out_shard_size", 1) <= 0:
        raise ConfigError(f"merge option out_shard_size={checked['out_shard_size']!r}: give a positive size")
    return checked


@dataclass
class MergeOptions:
    """Everything that changes how a merge runs, not what it computes."""

    cuda: bool = False
    device: str | None = None
    out_shard_size: int = DEFAULT_SHARD_SIZE
    copy_tokenizer: bool = True
    write_model_card: bool = True
    allow_crimes: bool = False
    random_seed: int | None = None
    transformers_cache: str | None = None
    lazy_unpickle: bool = False  # accepted for compatibility: .bin files are always read lazily
    trust_remote_code: bool = False  # config.json is read as JSON: no model code ever runs
    verbose: int = 0
    quiet: bool = False
    max_memory: str | int | None = None  # bytes in flight; None: see pipeline_budget
    stats_json: str | None = None
    unsafe_truncate_embeddings: bool = False  # differing vocab sizes: keep the rows all inputs have

    def pipeline_budget(self, largest_job_bytes: int) -> int:
        """Bytes the pipeline may hold (inputs read ahead + results not yet written).

        `--max-memory` when given; else twice the largest job (inputs + output), at least
        256 MB, at most 25% of RAM. More read-ahead than that does not speed a merge up and
        costs page faults: TIES of a 0.3B family on a 2-vCPU AMD EPYC VM took 6.2 s and 1.7 GB
        RSS with a 25%-of-RAM budget, 5.7 s and 1.0 GB with 600 MB."""
        if self.max_memory is None:
            return min(physical_memory() // 4, max(2 * largest_job_bytes, AUTO_MEMORY_MIN))
        return parse_memory(self.max_memory)

    @property
    def math_device(self) -> str:
        """The device merges run on: --device, else cuda with --cuda, else cpu."""
        if self.device and self.device != "auto":
            return _checked_device(self.device)
        if self.device == "auto" or self.cuda:
            import torch

            if torch.cuda.is_available():
                return "cuda"
            if self.cuda:
                raise ConfigError("--cuda was given but torch sees no CUDA device")
        return "cpu"

    @classmethod
    def from_kwargs(cls, **kwargs) -> "MergeOptions":
        """Build options from keyword arguments named like the CLI flags (underscores)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            from .config import did_you_mean

            raise ConfigError(f"unknown merge option '{unknown[0]}'{did_you_mean(unknown[0], known)}")
        if isinstance(kwargs.get("out_shard_size"), str):
            from .io.writer import parse_size

            kwargs["out_shard_size"] = parse_size(kwargs["out_shard_size"])
        if kwargs.get("max_memory") is not None:
            parse_memory(kwargs["max_memory"])  # a typo fails now, before any model is opened
        return cls(**_checked_types(kwargs))
