"""Options of a merge run (the `mergefast yaml` flags), shared by the CLI and `merge()`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import ConfigError

DEFAULT_SHARD_SIZE = 5_000_000_000
DEFAULT_MEMORY = "25%"


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
    max_memory: str | int | None = None  # bytes in flight: "25%" of RAM by default, "4g", 4000000000
    stats_json: str | None = None
    unsafe_truncate_embeddings: bool = False  # differing vocab sizes: keep the rows all inputs have

    @property
    def max_memory_bytes(self) -> int:
        """The pipeline's byte budget (inputs read ahead + results not yet written)."""
        value = DEFAULT_MEMORY if self.max_memory is None else self.max_memory
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                share = float(value.strip()[:-1]) / 100
            except ValueError:
                raise ConfigError(f"--max-memory {value!r}: expected a percentage like 25%") from None
            return int(physical_memory() * share)
        from .io.writer import parse_size

        return parse_size(value)

    @property
    def math_device(self) -> str:
        """The device merges run on: --device, else cuda with --cuda, else cpu."""
        if self.device and self.device != "auto":
            return self.device
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
        return cls(**kwargs)
