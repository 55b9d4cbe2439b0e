"""Parsing and validating a safetensors file's header (8-byte little-endian length, then JSON).

Only the header bytes are read. Every entry is checked against the file: a known dtype, a byte
range that matches its shape, inside the file, and not overlapping another tensor's range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError

# safetensors dtype names <-> torch dtypes (the writer uses the reverse map).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
for _name, _attr in [
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
]:
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# A header larger than this is not a real safetensors header (the Rust library caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path  # absolute path of the file holding it
    nbytes: int
    data_offsets: tuple[int, int] | None  # absolute byte range in `file`; None for .bin


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate one safetensors file's header; returns (infos by name, __metadata__).

    Reads only the header bytes. Raises ModelError naming the file for anything malformed:
    bad length, corrupt JSON, unknown dtype, a byte range that does not match the shape,
    ranges past the end of the file (truncated download) or overlapping each other.
    """
    path = Path(path).absolute()
    raw, header_len, size = _read_header_bytes(path)
    header = _parse_header_json(path, raw)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: corrupt safetensors header (__metadata__ is not an object); re-download the file")
    data_start = 8 + header_len
    infos = [_tensor_info(path, name, entry, data_start, size) for name, entry in header.items()]
    ordered = sorted(infos, key=lambda i: i.data_offsets)
    _check_no_overlap(path, ordered)
    return {i.name: i for i in ordered}, {str(k): str(v) for k, v in metadata.items()}


def _read_header_bytes(path: Path) -> tuple[bytes, int, int]:
    """(the header's JSON bytes, its declared length, the file's size); ModelError for a bad
    length or an unreadable file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(
                    f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length); re-download it"
                )
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelError(
                    f"{path}: corrupt safetensors header (declared header length {n} bytes, file is {size} bytes); "
                    "the file is truncated or not safetensors: re-download it"
                )
            return f.read(n), n, size
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e}); check the file exists and is readable") from e


def _parse_header_json(path: Path, raw: bytes) -> dict:
    """The header's JSON object (ModelError when it is not valid JSON or not an object)."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: corrupt safetensors header (invalid JSON: {e}); re-download the file") from e
    if not isinstance(header, dict):
        raise ModelError(f"{path}: corrupt safetensors header (JSON is not an object); re-download the file")
    return header


def _tensor_info(path: Path, name: str, entry, data_start: int, size: int) -> TensorInfo:
    """One validated header entry as a TensorInfo with absolute byte offsets."""
    where = f"{path}: tensor {name!r}"
    dtype_name, shape, (begin, end) = _entry_fields(where, entry)
    dtype = SAFETENSORS_DTYPES.get(dtype_name)
    if dtype is None:
        raise ModelError(
            f"{where}: unsupported dtype {dtype_name!r} (supported: {', '.join(SAFETENSORS_DTYPES)}); convert the checkpoint"
        )
    if any(d < 0 for d in shape):
        raise ModelError(f"{where}: negative dimension in shape {shape}; the file is corrupt, re-download it")
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * dtype.itemsize
    if begin < 0 or end - begin != nbytes:
        raise ModelError(
            f"{where}: byte range [{begin}, {end}) does not hold {dtype_name}{list(shape)} ({nbytes} bytes); "
            "the file is corrupt, re-download it"
        )
    if end > size - data_start:
        raise ModelError(
            f"{where}: data ends at byte {data_start + end} but the file has {size} bytes; "
            "the file is truncated (interrupted download?): re-download it"
        )
    return TensorInfo(name, dtype, shape, path, nbytes, (data_start + begin, data_start + end))


def _entry_fields(where: str, entry) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype name, shape, relative data offsets) of a header entry, type-checked."""
    try:
        dtype_name = entry["dtype"]
        shape = tuple(_json_int(d) for d in entry["shape"])
        begin, end = (_json_int(o) for o in entry["data_offsets"])
        if not isinstance(dtype_name, str):
            raise TypeError("dtype is not a string")
    except (TypeError, KeyError, ValueError) as e:
        raise ModelError(
            f"{where}: corrupt safetensors header entry {entry!r} (needs dtype, shape, data_offsets); re-download the file"
        ) from e
    return dtype_name, shape, (begin, end)


def _check_no_overlap(path: Path, ordered: list[TensorInfo]) -> None:
    """ModelError when two tensors (sorted by offset) share bytes of the file."""
    for a, b in zip(ordered, ordered[1:]):
        if b.data_offsets[0] < a.data_offsets[1]:
            raise ModelError(
                f"{path}: tensors {a.name!r} and {b.name!r} overlap in the file "
                f"(bytes {b.data_offsets[0]} < {a.data_offsets[1]}); the file is corrupt, re-download it"
            )


def _json_int(value) -> int:
    """A JSON integer from a header (not a bool, float or string: those mean a corrupt file)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value
