"""Tensor dtypes by name, without torch: the planner's view of a dtype.

A dtype is torch's attribute name ("bfloat16", "float8_e4m3fn"). Planning (headers, checks,
jobs) works on these names so that it never imports torch, whose import takes 2.1-2.4 s on the
2-core VM: a Hub merge starts downloading its first shard while torch still imports (run.py).
`torch_dtype` is the one way from a name to torch's dtype, at execution time.
"""

from __future__ import annotations

from typing import Any

# name -> bytes per element, for every dtype a safetensors header may hold
ITEMSIZE: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}
FLOATS = frozenset({"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"})
FP8 = ("float8_e4m3fn", "float8_e5m2")

# safetensors header dtype -> name (the writer maps back with SAFETENSORS_CODES)
SAFETENSORS_NAMES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
SAFETENSORS_CODES: dict[str, str] = {v: k for k, v in SAFETENSORS_NAMES.items()}

# torch.promote_types over the four float dtypes a merge computes in: the wider one, and
# float32 for float16 with bfloat16 (neither holds the other).
_FLOAT_RANK = {"float16": 0, "bfloat16": 0, "float32": 1, "float64": 2}


def name_of(dtype: Any) -> str:
    """The name of a torch dtype (`torch.bfloat16` -> "bfloat16")."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> Any:
    """torch's dtype called `name` (imports torch)."""
    import torch

    return getattr(torch, name)


def promote(a: str, b: str) -> str:
    """torch.promote_types on names; torch itself decides beyond the common float dtypes."""
    if a == b:
        return a
    if a in _FLOAT_RANK and b in _FLOAT_RANK:
        ra, rb = _FLOAT_RANK[a], _FLOAT_RANK[b]
        return "float32" if ra == rb else (a if ra > rb else b)
    import torch

    return name_of(torch.promote_types(torch_dtype(a), torch_dtype(b)))
