"""Parsing and validating a safetensors file's header (8-byte little-endian length, then JSON).

Only the header bytes are read. Every entry is checked against the file: a known dtype, a byte
range that matches its shape, inside the file, and not overlapping another tensor's range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..dtypes import ITEMSIZE, SAFETENSORS_NAMES, torch_dtype
from ..errors import ModelError
from .model_files import header_length

# The safetensors library parses a header (at most MAX_HEADER_BYTES, io/model_files.py) with
# serde_json, which refuses JSON nested deeper than 128 levels.
MAX_JSON_DEPTH = 128
_MAX_BYTES = 2**64 - 1  # a tensor's byte count must fit the library's usize (64-bit)
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: name, dtype (by name, mergefast/dtypes.py), shape and where its bytes are."""

    name: str
    dtype_name: str
    shape: tuple[int, ...]
    file: Path  # absolute path of the file holding it
    nbytes: int
    data_offsets: tuple[int, int] | None  # absolute byte range in `file`; None for .bin

    @property
    def dtype(self):
        """The torch dtype (imports torch; the planner uses `dtype_name`)."""
        return torch_dtype(self.dtype_name)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate one safetensors file's header; returns (infos by name, __metadata__).

    Reads only the header bytes and refuses, with a ModelError naming the file (and the tensor),
    at least what the safetensors library refuses: a bad length, JSON that is not strict UTF-8
    JSON or is nested too deeply, a key given twice (a tensor listed twice), a `__metadata__`
    that is not a string -> string map, an unknown dtype, a byte range that does not match the
    shape, ranges that overlap, leave gaps or do not end where the file ends; and a header
    with no tensors at all.
    """
    path = Path(path).absolute()
    raw, _, size = _read_header_bytes(path)
    return parse_safetensors_header(path, raw, size)


def parse_safetensors_header(path: Path, raw: bytes, size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """`read_safetensors_header` of header JSON bytes `raw` already read (e.g. over HTTP range
    requests, io/hub_headers.py) from file `path` of `size` bytes: the same checks, one parser."""
    header_len = len(raw)
    header = _parse_header_json(path, raw)
    metadata = _metadata(path, header.pop("__metadata__", None))
    if not header:
        raise ModelError(
            f"{path}: the safetensors header lists no tensors, so the file holds no weights; "
            "re-download it, or remove it if it does not belong to the model"
        )
    data_start = 8 + header_len
    infos = [_tensor_info(path, name, entry, data_start, size) for name, entry in header.items()]
    ordered = sorted(infos, key=lambda i: i.data_offsets)
    _check_layout(path, ordered, data_start, size)
    return {i.name: i for i in ordered}, metadata


def _read_header_bytes(path: Path) -> tuple[bytes, int, int]:
    """(the header's JSON bytes, its declared length, the file's size); ModelError for a bad
    length or an unreadable file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(
                    f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length); "
                    "re-download it"
                )
            n = header_length(path, head, size)
            raw = f.read(n)
            if len(raw) < n:
                raise ModelError(f"{path}: the file shrank while its header was read; re-download it")
            return raw, n, size
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e}); check the file exists and is readable") from e


class _DuplicateKey(ValueError):
    """A JSON object names the same key twice (Python's json would keep the last silently)."""

    def __init__(self, key: str, pairs: list):
        super().__init__(key)
        self.key, self.top_level = key, any(isinstance(v, dict) for _, v in pairs)


def _unique_keys(pairs: list) -> dict:
    """json's object_pairs_hook: the object as a dict, or _DuplicateKey."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key, pairs)
            seen.add(key)
    return out


def _no_constant(name: str):
    """json's parse_constant: NaN and Infinity are not JSON (the library refuses them)."""
    raise ValueError(f"{name} is not valid JSON")


def _parse_header_json(path: Path, raw: bytes) -> dict:
    """The header's JSON object, parsed as strictly as the safetensors library parses it
    (ModelError when it is not valid UTF-8 JSON, not an object, nested too deeply, or has a
    key twice)."""
    bad = f"{path}: corrupt safetensors header"
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as e:
        if e.top_level:
            raise ModelError(
                f"{path}: tensor {e.key!r} is listed twice in the safetensors header (Python would "
                "keep one silently, the safetensors library refuses the file); re-download it"
            ) from None
        raise ModelError(f"{bad} (key {e.key!r} appears twice in one object); re-download the file") from None
    except RecursionError:
        raise ModelError(
            f"{bad} (JSON nested deeper than {MAX_JSON_DEPTH} levels); the file is corrupt or malicious: re-download it"
        ) from None
    except ValueError as e:  # invalid UTF-8, invalid JSON, NaN, a number too long to convert
        raise ModelError(f"{bad} (invalid JSON: {_first_line(e)}); re-download the file") from None
    if not isinstance(header, dict):
        raise ModelError(f"{bad} (JSON is not an object); re-download the file")
    return header


def _metadata(path: Path, metadata) -> dict[str, str]:
    """`__metadata__` checked as the library checks it: absent, null or a string -> string map."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ModelError(
            f"{path}: corrupt safetensors header (__metadata__ is {type(metadata).__name__}, not an "
            "object of strings); re-download the file"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ModelError(
                f"{path}: corrupt safetensors header (__metadata__ entry {_short(key)} is "
                f"{_short(value)}, not a string); re-download the file"
            )
        _check_text(path, f"__metadata__ entry {_short(key)}", key, value)
    return metadata


def _check_text(path: Path, what: str, *texts: str) -> None:
    """ModelError when a string holds a lone surrogate (a `\\ud800` escape): it is not UTF-8,
    the library refuses it, and the writer could not encode it."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ModelError(
                f"{path}: corrupt safetensors header ({what} is not valid UTF-8: {_short(text)}); re-download the file"
            ) from None


def _tensor_info(path: Path, name: str, entry, data_start: int, size: int) -> TensorInfo:
    """One validated header entry as a TensorInfo with absolute byte offsets."""
    _check_text(path, "a tensor name", name)
    where = f"{path}: tensor {name!r}"
    dtype_name, shape, (begin, end) = _entry_fields(where, entry)
    name_of_dtype = SAFETENSORS_NAMES.get(dtype_name)
    if name_of_dtype is None:
        raise ModelError(
            f"{where}: unsupported dtype {_short(dtype_name)} (supported: {', '.join(SAFETENSORS_NAMES)}); "
            "convert the checkpoint"
        )
    nbytes = _nbytes(where, shape, ITEMSIZE[name_of_dtype])
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
    return TensorInfo(name, name_of_dtype, shape, path, nbytes, (data_start + begin, data_start + end))


def _nbytes(where: str, shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of a tensor of `shape`; ModelError for a negative dimension or a size past 2**64
    (the library's overflow check, which also keeps a header of huge dimensions cheap)."""
    n = itemsize
    for d in shape:
        if d < 0:
            raise ModelError(
                f"{where}: negative dimension in shape {_short(list(shape))}; the file is corrupt, re-download it"
            )
        n *= d
        if n > _MAX_BYTES:
            raise ModelError(
                f"{where}: shape {_short(list(shape))} is too large to exist (over 2**64 bytes); the "
                "file is corrupt, re-download it"
            )
    return n


def _entry_fields(where: str, entry) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype name, shape, relative data offsets) of a header entry, type-checked."""
    try:
        dtype_name = entry["dtype"]
        shape = tuple(_json_int(d) for d in _json_list(entry["shape"]))
        begin, end = (_json_int(o) for o in _json_list(entry["data_offsets"]))
        if not isinstance(dtype_name, str):
            raise TypeError("dtype is not a string")
    except (TypeError, KeyError, ValueError) as e:
        raise ModelError(
            f"{where}: corrupt safetensors header entry {_short(entry)} (needs dtype, shape, data_offsets); "
            "re-download the file"
        ) from e
    extra = [key for key in entry if key not in _ENTRY_FIELDS] if len(entry) > len(_ENTRY_FIELDS) else ()
    for key in extra:  # the library ignores other fields, unless nested past its parser's limit
        if _depth(entry[key]) + 2 > MAX_JSON_DEPTH:
            raise ModelError(
                f"{where}: corrupt safetensors header (field {_short(key)} is nested deeper than "
                f"{MAX_JSON_DEPTH} levels); the file is corrupt or malicious: re-download it"
            )
    return dtype_name, shape, (begin, end)


def _check_layout(path: Path, ordered: list[TensorInfo], data_start: int, size: int) -> None:
    """The tensors (sorted by offset) tile the data region exactly, as the library requires:
    the first starts at its beginning, each starts where the previous one ends (no overlap,
    no gap) and the last ends at the end of the file."""
    pos, previous = data_start, None
    for info in ordered:
        begin, end = info.data_offsets
        if begin < pos:
            raise ModelError(
                f"{path}: tensors {previous!r} and {info.name!r} overlap in the file "
                f"(bytes {begin} < {pos}); the file is corrupt, re-download it"
            )
        if begin > pos:
            after = f"after tensor {previous!r}" if previous else "at the start of the data"
            raise ModelError(
                f"{path}: tensor {info.name!r} starts at byte {begin}, leaving {begin - pos} unused "
                f"bytes {after} (from byte {pos}); the safetensors library refuses such gaps: the "
                "file is corrupt, re-download it"
            )
        pos, previous = end, info.name
    if pos != size:
        raise ModelError(
            f"{path}: {size - pos} bytes after the end of the last tensor {previous!r} (byte {pos}, "
            f"file size {size}); the safetensors library refuses a file its tensors do not cover: "
            "it is corrupt or not safetensors, re-download it"
        )


def _json_list(value) -> list:
    """A JSON array from a header (a string or an object there means a corrupt file)."""
    if not isinstance(value, list):
        raise TypeError(f"{_short(value)} is not a list")
    return value


def _json_int(value) -> int:
    """A JSON integer from a header (not a bool, float or string: those mean a corrupt file)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _depth(value) -> int:
    """How deeply JSON containers nest in `value` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _short(value, limit: int = 120) -> str:
    """repr(value) cut to `limit` characters, so that one line stays one readable line."""
    try:
        text = repr(value)
    except RecursionError:  # a list nested a few hundred levels deep is valid JSON
        return f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
