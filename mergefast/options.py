"""Options of a merge run: one schema (`OPTIONS`) from which the `mergefast yaml` flags
(cli_support.py), the `MergeOptions` fields and the Python API's checks all come.

An option's kind says how both sides take it: bool (--x/--no-x; True or False), int (a whole
number or None), count (-v -v; a whole number), text and path (a string or os.PathLike),
memory (`parse_memory`'s spellings) and size (`parse_size`'s, or bytes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

DEFAULT_SHARD_SIZE = 5_000_000_000
AUTO_MEMORY_MIN = 256_000_000
# --random-seed: the random methods key their draws by the seed modulo 2**64 (methods/random.py)
# and torch.manual_seed takes at most 2**64 - 1, so larger seeds would only alias smaller ones.
MAX_SEED = 2**64 - 1
_MEMORY_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "b": 1000**3, "t": 1000**4}


@dataclass(frozen=True)
class Option:
    """One merge option: its Python name, kind, default and help, and how the CLI spells it.

    `valid` is a range check on a value of the right type; `api_error` (formatted with name,
    value, flag) is the Python API's message when it fails, `cli_error` (with value) the
    command line's, checked as flags are parsed (None: the API's check runs for the CLI too)."""

    name: str
    kind: str
    default: Any
    help: str
    cli_default: Any = None
    show_default: bool = False
    short: str | None = None
    valid: Callable[[Any], bool] | None = None
    api_error: str = ""
    cli_error: str | None = None

    @property
    def flag(self) -> str:
        """The long command-line flag, e.g. `--out-shard-size`."""
        return "--" + self.name.replace("_", "-")


def _flag(name: str, default: bool, help: str, show_default: bool = False) -> Option:
    return Option(name, "bool", default, help, cli_default=default, show_default=show_default)


def _threads(name: str, help: str, short: str | None = None) -> Option:
    """A thread count: a whole number of at least 1, or None for the default."""
    return Option(
        name,
        "int",
        None,
        help,
        short=short,
        valid=lambda count: count >= 1,
        api_error="merge option {name}={value!r} ({flag}): give a whole number of at least 1",
        cli_error="{value} threads: give a whole number of at least 1",
    )


LORA_DTYPES = ("bfloat16", "float16", "float32", "float64")
OPTIONS: tuple[Option, ...] = (
    _flag("cuda", False, "Run the merge arithmetic on the GPU."),
    Option("device", "text", None, "Math device (cpu, cuda, cuda:N, auto); overrides --cuda."),
    Option(
        "out_shard_size",
        "size",
        DEFAULT_SHARD_SIZE,
        "Maximum bytes per output shard; an integer or with k/m/b suffix (x1000).",
        cli_default="5B",
        show_default=True,
        valid=lambda size: size > 0,
        api_error="merge option {name}={value!r}: give a positive size",
    ),
    _flag("copy_tokenizer", True, "Copy the donor model's tokenizer files into the output.", show_default=True),
    _flag("write_model_card", True, "Write README.md and mergekit_config.yml.", show_default=True),
    _flag("allow_crimes", False, "Allow merging models whose architectures differ."),
    Option(
        "random_seed",
        "int",
        None,
        "Seed for random merge methods (DARE, DELLA): 0 to 2**64 - 1.",
        valid=lambda seed: 0 <= seed <= MAX_SEED,
        api_error=f"merge option {{name}}={{value!r}} ({{flag}}): give a whole number from 0 to {MAX_SEED}",
        cli_error=(
            f"{{value}} is outside the seeds mergefast supports: give a whole number from 0 to {MAX_SEED} (2**64 - 1)"
        ),
    ),
    Option("transformers_cache", "text", None, "Hugging Face download cache folder."),
    _flag(
        "stream_inputs",
        False,
        "Hub inputs: read the tensors with HTTP range requests, writing no "
        "weight file to the cache (each run reads them again).",
    ),
    _flag("lazy_unpickle", False, "Accepted for mergekit compatibility: .bin files are always read lazily."),
    _flag("trust_remote_code", False, "Accepted for compatibility; mergefast never runs code from a model folder."),
    _threads(
        "num_threads",
        "CPU threads for the merge arithmetic (default: OMP_NUM_THREADS, else every CPU this process may use).",
        short="-j",
    ),
    _flag("multi_gpu", False, "Merge on the GPU, as --cuda (on one GPU: --device picks which)."),
    _flag("gpu_rich", False, "The same as --cuda --low-cpu-memory --read-to-gpu --multi-gpu."),
    _flag(
        "low_cpu_memory",
        False,
        "Accepted for mergekit compatibility: each result is written as soon as it is merged; none stays on the GPU.",
    ),
    _flag("read_to_gpu", False, "Accepted for mergekit compatibility: with --cuda, inputs go to the GPU as merged."),
    _flag(
        "clone_tensors",
        False,
        "Accepted for mergekit compatibility: every output tensor is written from its own buffer.",
    ),
    _flag(
        "async_write",
        False,
        "Accepted for mergekit compatibility: the output is always written by a thread of its own.",
    ),
    _threads("write_threads", "Accepted for mergekit compatibility (see --async-write)."),
    Option(
        "safe_serialization",
        "bool",
        True,
        "Write safetensors, the only output format mergefast writes.",
        cli_default=True,
        show_default=True,
        valid=lambda safe: safe,
        api_error="merge option {name}=False ({flag}): mergefast writes safetensors only; "
        "drop the option (transformers loads safetensors)",
        cli_error="mergefast writes safetensors only (no pytorch_model.bin output); "
        "drop --no-safe-serialization (transformers loads safetensors)",
    ),
    Option(
        "lora_merge_cache",
        "text",
        None,
        "Accepted for mergekit compatibility: a model+lora reference's adapter is applied as its tensors are read; "
        "nothing is cached.",
    ),
    Option(
        "lora_merge_dtype",
        "text",
        None,
        "The dtype a model+lora reference's tensors are read in (as mergekit loads the model to apply the LoRA): "
        f"{', '.join(LORA_DTYPES)}; default: as stored.",
        valid=lambda name: name.removeprefix("torch.") in LORA_DTYPES,
        api_error=f"merge option {{name}}={{value!r}} ({{flag}}): use one of {', '.join(LORA_DTYPES)}",
        cli_error=f"{{value}} is not a dtype mergefast merges; use one of {', '.join(LORA_DTYPES)}",
    ),
    Option("verbose", "count", 0, "More logging; -v also shows tracebacks.", short="-v"),
    _flag("quiet", False, "No progress bar and no summary."),
    _flag(
        "unsafe_truncate_embeddings",
        False,
        "Inputs with different vocabulary sizes: keep only the rows all of them have.",
    ),
    # bytes in flight; None lets MergeOptions.pipeline_budget choose
    Option(
        "max_memory",
        "memory",
        None,
        "Bytes read ahead but not yet written, e.g. 4g, 500m or 10% "
        "(default: twice the largest tensor group, less on the CPU with inputs in the page "
        "cache, at most 25% of RAM).",
    ),
    Option("stats_json", "path", None, "Also write the run summary's figures as JSON to this file."),
)
OPTION_BY_NAME = {option.name: option for option in OPTIONS}
_ANNOTATIONS = {
    "bool": "bool",
    "int": "int | None",
    "count": "int",
    "text": "str | None",
    "path": "str | None",
    "memory": "str | int | None",
    "size": "int",
}


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmb]?)\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "k": 1000, "m": 1000**2, "b": 1000**3}


def parse_size(text: str) -> int:
    """mergekit's `--out-shard-size`: an integer number of bytes, or with a k/m/b suffix
    (x1000, case-insensitive): "5B" = 5_000_000_000, "500M", "1000k"."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise ConfigError(
            f"invalid shard size {text!r}: use a whole number of bytes, optionally with a k, m or b suffix "
            "(x1000 each), e.g. 5B, 500M, 1000000"
        )
    return int(m.group(1)) * _SUFFIX[m.group(2).lower()]


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


def _checked_type(option: Option, value: Any) -> Any:
    """`value` for `option` as the CLI's parser would take it, or a ConfigError: a string
    passed as `cuda` was true (`cuda="no"` asked for a GPU), a list as `out_shard_size` failed
    deep inside the writer."""
    name, kind = option.name, option.kind
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"merge option {name}={value!r}: give True or False")
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind in ("int", "count", "size") and not whole and (value is not None or kind == "size"):
        raise ConfigError(f"merge option {name}={value!r}: give a whole number")
    if kind in ("text", "path") and value is not None:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"merge option {name}={value!r}: give a string")
        return os.fspath(value)
    return value


def _checked(kwargs: dict) -> dict:
    """Options of the Python API checked as the CLI checks flags: spellings parsed first (a
    typo fails before any model is opened), then each value's type, then its range."""
    checked = dict(kwargs)
    for name, value in kwargs.items():
        kind = OPTION_BY_NAME[name].kind
        if kind == "size" and isinstance(value, str):
            checked[name] = parse_size(value)
        elif kind == "memory" and value is not None:
            parse_memory(value)
    for name, value in checked.items():
        checked[name] = _checked_type(OPTION_BY_NAME[name], value)
    for name, value in checked.items():
        option = OPTION_BY_NAME[name]
        if option.valid is not None and value is not None and not option.valid(value):
            raise ConfigError(option.api_error.format(name=name, value=value, flag=option.flag))
    return checked


def _schema_fields(cls):
    """Give `cls` one field per schema option (annotation and default), before @dataclass."""
    cls.__annotations__ = {option.name: _ANNOTATIONS[option.kind] for option in OPTIONS}
    for option in OPTIONS:
        setattr(cls, option.name, option.default)
    return cls


@dataclass
@_schema_fields
class MergeOptions:
    """Everything that changes how a merge runs, not what it computes: one field per `OPTIONS`
    entry, in its order, with its default."""

    def pipeline_budget(self, largest_job_bytes: int, resident_job_bytes: int | None = None) -> int:
        """Bytes the pipeline may hold (inputs read ahead + results not yet written).

        `--max-memory` when given; else twice the largest job (inputs + output), at least
        256 MB, at most 25% of RAM. More read-ahead than that does not speed a merge up and
        costs page faults: TIES of a 0.3B family on a 2-vCPU AMD EPYC VM took 6.2 s and 1.7 GB
        RSS with a 25%-of-RAM budget, 5.7 s and 1.0 GB with 600 MB. `resident_job_bytes` (a
        typical job's bytes, given by a CPU merge whose inputs are in the page cache) caps
        it at the largest job plus two typical ones, without the 256 MB floor: there reading
        ahead is a memory copy that needs no head start. 0.3B family, 2-vCPU Intel Xeon VM, 3
        runs each: TIES in the same 2.0 s with 0.60-0.66 GB peak RSS instead of 0.94 GB; with
        a cold cache the 2x budget was faster (3.7 s against 4.3-4.4 s). The torch-free
        engine's linear in 8 MB parts (host/parts.py), 2-vCPU AMD EPYC VM, 6 runs each: 0.56-0.71 s
        with 24-48 MB, 0.70-0.79 s and 0.1 s more system time with 256 MB."""
        if self.max_memory is not None:
            return parse_memory(self.max_memory)
        auto = max(2 * largest_job_bytes, AUTO_MEMORY_MIN)
        if resident_job_bytes is not None:
            auto = min(auto, largest_job_bytes + 2 * resident_job_bytes)
        return min(physical_memory() // 4, auto)

    @property
    def gpu_flag(self) -> str | None:
        """The flag that asks for GPU math (--cuda, or mergekit's --multi-gpu / --gpu-rich,
        which imply it), or None."""
        asked = [name for name in ("cuda", "multi_gpu", "gpu_rich") if getattr(self, name)]
        return OPTION_BY_NAME[asked[0]].flag if asked else None

    @property
    def math_device(self) -> str:
        """The device merges run on: --device, else cuda with --cuda (or --multi-gpu,
        --gpu-rich), else cpu."""
        if self.device and self.device != "auto":
            return _checked_device(self.device)
        flag = self.gpu_flag
        if self.device == "auto" or flag:
            import torch

            if torch.cuda.is_available():
                return "cuda"
            if flag:
                raise ConfigError(f"{flag} was given but torch sees no CUDA device")
        return "cpu"

    @classmethod
    def from_kwargs(cls, **kwargs) -> MergeOptions:
        """Build options from keyword arguments named like the CLI flags (underscores)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            from .config import did_you_mean

            raise ConfigError(f"unknown merge option '{unknown[0]}'{did_you_mean(unknown[0], known)}")
        return cls(**_checked(kwargs))
