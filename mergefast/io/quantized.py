"""Quantized checkpoints: block-scaled FP8 is dequantized on read; every other format is
refused at plan time, naming the tensor and the format.

Block-scaled FP8 (DeepSeek-V3, Kimi-K2, the Qwen3 FP8 releases): `X.weight` is float8_e4m3fn
and `X.weight_scale_inv` holds one float32 factor per block (config.json
`quantization_config.weight_block_size`, [128, 128] when absent). `Fp8Reader` hides the scale
tensors and presents each such weight as float32 (`weight * scale` per block), so the
planner, the pipeline and every method see a plain float32 tensor.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from ..dtypes import FP8
from ..errors import ConfigError, ModelError
from .reader import CheckpointReader
from .safetensors_header import TensorInfo

if TYPE_CHECKING:
    import torch

SCALE_SUFFIX = "_scale_inv"
# Name endings of quantized formats mergefast does not merge -> the format, for the message.
REFUSED_SUFFIXES = {
    ".qweight": "GPTQ/AWQ packed",
    ".qzeros": "GPTQ/AWQ packed",
    ".g_idx": "GPTQ",
    ".scales": "GPTQ/AWQ",
    ".absmax": "bitsandbytes 4-bit",
    ".quant_map": "bitsandbytes 4-bit",
    ".nested_absmax": "bitsandbytes 4-bit",
    ".SCB": "bitsandbytes int8",
    ".weight_format": "bitsandbytes int8",
    ".weight_scale": "per-tensor/channel FP8 or INT8",
    ".input_scale": "FP8 activation-scaled",
    ".weight_packed": "compressed-tensors packed",
    ".weight_zero_point": "compressed-tensors",
    ".weight_global_scale": "NVFP4",
}


def _refusal(name: str, info: TensorInfo, names: set[str]) -> str | None:
    """The quantized format tensor `name` belongs to, when mergefast cannot merge it."""
    if ".quant_state." in name:
        return "bitsandbytes 4-bit"
    fmt = next((f for suffix, f in REFUSED_SUFFIXES.items() if name.endswith(suffix)), None)
    if fmt is not None:
        return fmt
    if info.dtype_name in FP8 and name + SCALE_SUFFIX not in names:
        return f"torch.{info.dtype_name} without a {SCALE_SUFFIX} block scale"
    if name.endswith(".weight") and info.dtype_name in ("int8", "uint8") and len(info.shape) == 2:
        return "8-bit or packed 4-bit integer"
    return None


def check_quantization(ref: str, reader: CheckpointReader, config: dict, where: str) -> dict[str, str]:
    """weight -> its scale tensor for a block-scaled FP8 checkpoint ({} for an unquantized
    one); ConfigError naming the first tensor of any other quantized format."""
    names = set(reader.names())
    method = (
        (config.get("quantization_config") or {}).get("quant_method")
        if isinstance(config.get("quantization_config"), dict)
        else None
    )
    scaled = {}
    for name in reader.names():
        info = reader.info(name)
        fmt = _refusal(name, info, names)
        if fmt is not None:
            raise ConfigError(
                f"{where}: model {ref}: tensor {name} ({info.dtype_name}) is "
                f"a {fmt} quantized weight{f' (quant_method: {method})' if method else ''}; mergefast "
                "merges unquantized and block-scaled FP8 checkpoints only: use the model's "
                "unquantized release"
            )
        if info.dtype_name in FP8:
            scaled[name] = name + SCALE_SUFFIX
            _check_scale(reader, name, info, block_size(config), where)
    if method and method != "fp8" and not scaled:
        raise ConfigError(
            f"{where}: model {ref}: config.json says quant_method: {method}; mergefast merges "
            "unquantized and block-scaled FP8 checkpoints only: use the model's unquantized release"
        )
    return scaled


def _check_scale(reader, name: str, info: TensorInfo, block: tuple[int, int], where: str) -> None:
    """A 2-D FP8 weight's scale must hold one factor per block."""
    scale = reader.info(name + SCALE_SUFFIX).shape
    expected = tuple(-(-d // b) for d, b in zip(info.shape, block))
    if len(info.shape) != 2 or tuple(scale) != expected:
        raise ModelError(
            f"{where}: {name + SCALE_SUFFIX} has shape {list(scale)}, but {name} {list(info.shape)} in "
            f"{list(block)} blocks needs {list(expected)}; the FP8 checkpoint is inconsistent "
            "(check quantization_config.weight_block_size)"
        )


def check_fp8_dtype(config, models: dict, refs: list[str], source: str) -> None:
    """FP8 inputs are merged in float32: the config must say which dtype to write."""
    fp8 = [r for r in refs if isinstance(models[r].reader, Fp8Reader)]
    if fp8 and not (config.out_dtype or config.dtype):
        raise ConfigError(
            f"{source}: model {fp8[0]} is a block-scaled FP8 checkpoint, dequantized to float32 for "
            "the merge; set `dtype:` (e.g. bfloat16) to say what the output is written in"
        )


def block_size(config: dict) -> tuple[int, int]:
    """The FP8 scale block ([rows, cols]) from config.json, [128, 128] when not stated."""
    quant = config.get("quantization_config")
    size = quant.get("weight_block_size") if isinstance(quant, dict) else None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return size[0], size[1]
    return 128, 128


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """float32 `weight * scale`, one scale per `block` of a 2-D weight (edge blocks may be short)."""
    import torch  # planning runs without torch (mergefast/dtypes.py)

    rows, cols = weight.shape
    w = weight.to(torch.float32)
    if rows % block[0] == 0 and cols % block[1] == 0:
        blocks = w.view(rows // block[0], block[0], cols // block[1], block[1])
        return (blocks * scale.to(torch.float32)[:, None, :, None]).view(rows, cols)
    full = scale.to(torch.float32).repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return w * full


class Fp8Reader:
    """A CheckpointReader whose block-scaled FP8 weights read as float32 and whose scale
    tensors are hidden (they are part of their weight). Everything else is delegated."""

    def __init__(self, reader: CheckpointReader, scaled: dict[str, str], block: tuple[int, int]):
        self._reader, self._scaled, self._block = reader, scaled, block
        self._scales = set(scaled.values())

    def __getattr__(self, attr):
        return getattr(self._reader, attr)

    def names(self) -> list[str]:
        """Tensor names, without the scale tensors."""
        return [n for n in self._reader.names() if n not in self._scales]

    def __contains__(self, name: str) -> bool:
        return name not in self._scales and name in self._reader

    def info(self, name: str) -> TensorInfo:
        """A scaled FP8 weight's info as the float32 tensor it reads as."""
        info = self._reader.info(name)
        if name not in self._scaled:
            return info
        return replace(info, dtype_name="float32", nbytes=math.prod(info.shape) * 4)

    def read(self, name: str, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor; a scaled FP8 weight dequantized to float32 (into `out` when given)."""
        if name not in self._scaled:
            return self._reader.read(name, out=out)
        import torch

        value = dequantize_fp8(self._reader.read(name), self._reader.read(self._scaled[name]), self._block)
        if out is None:
            return value
        dst = out.reshape(-1).view(torch.uint8)[: value.numel() * 4].view(torch.float32).view(value.shape)
        return dst.copy_(value)
