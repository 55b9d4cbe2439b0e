"""Shared fixtures: tiny Llama-shaped model families written by the tests themselves."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from make_models import make_tiny_llama  # noqa: E402

# A suite started in the background by a non-interactive shell (`pytest &`) inherits SIGINT
# ignored; the interruption tests need Ctrl-C to raise KeyboardInterrupt as it does at a prompt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def write_family(root: Path, *, dtype=torch.bfloat16, tie=False, fmt="safetensors", layers=4) -> dict[str, Path]:
    """base + three fine-tunes (ft-a, ft-b, ft-c) under `root`; returns name -> folder."""
    base = make_tiny_llama(root / "base", seed=0, dtype=dtype, tie_word_embeddings=tie, fmt=fmt, layers=layers)
    folders = {"base": root / "base"}
    for seed, name in enumerate(("ft-a", "ft-b", "ft-c"), start=1):
        make_tiny_llama(root / name, seed=seed, base=base, dtype=dtype, tie_word_embeddings=tie,
                        fmt=fmt, layers=layers)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    """A bf16 family of four 4-layer tiny Llamas (untied)."""
    return write_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="session")
def tied_family(tmp_path_factory) -> dict[str, Path]:
    """A float32 family with tied embeddings (no lm_head.weight in the checkpoints)."""
    return write_family(tmp_path_factory.mktemp("tied"), dtype=torch.float32, tie=True)


def example_config(name: str, family: dict[str, Path]) -> str:
    """The text of examples/<name>, its model paths pointed at `family`."""
    text = (ROOT / "examples" / name).read_text()
    for key, folder in family.items():
        text = text.replace(f"examples/models/{key}", str(folder))
    return text
