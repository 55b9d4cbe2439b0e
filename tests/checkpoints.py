"""Tiny checkpoints for tests, written with safetensors / torch.save (not with mergefast's writer).

from checkpoints import write_checkpoint, random_tensors
folder = write_checkpoint(tmp_path / "m", random_tensors({"a.weight": (4, 8)}), fmt="sharded")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

FORMATS = ("safetensors", "sharded", "bin", "sharded-bin")


def random_tensors(
    shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded random tensors (normal for floats, 0..99 for integers), in the order given."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if dtype.is_floating_point:
            out[name] = torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
        else:
            out[name] = torch.randint(0, 100, shape, generator=g).to(dtype)
    return out


def write_checkpoint(
    folder: str | Path,
    tensors: dict[str, torch.Tensor],
    fmt: str = "safetensors",
    config: dict | None = None,
    shards: int = 2,
) -> Path:
    """Write `tensors` as a Hugging Face model folder and return the folder.

    fmt: "safetensors" (model.safetensors), "sharded" (model-0000i-of-0000N.safetensors +
    model.safetensors.index.json), "bin" (pytorch_model.bin), "sharded-bin"
    (pytorch_model-0000i-of-0000N.bin + pytorch_model.bin.index.json). Sharded formats split
    the tensors, in order, into `shards` files (fewer if there are fewer tensors).
    `config`, when given, is written as config.json.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    safetensors = fmt in ("safetensors", "sharded")

    def save(part: dict[str, torch.Tensor], path: Path) -> None:
        if safetensors:
            save_file(part, str(path), metadata={"format": "pt"})
        else:
            torch.save(part, path)

    if fmt in ("safetensors", "bin"):
        save(tensors, folder / ("model.safetensors" if safetensors else "pytorch_model.bin"))
    else:
        names = list(tensors)
        n = max(1, min(shards, len(names)))
        stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
        weight_map = {}
        for i in range(n):
            part_names = names[i * len(names) // n : (i + 1) * len(names) // n]
            fname = f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}"
            save({k: tensors[k] for k in part_names}, folder / fname)
            weight_map.update({k: fname for k in part_names})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
