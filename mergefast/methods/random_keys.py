"""The integer half of the counter-based generator of methods/random.py (which states it in
full): splitmix64 on Python ints and each model's stream key. Imports no torch: the
torch-free engine (host/) computes DARE's keys with it.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
UNIFORM_BITS = 24


def _signed(x: int) -> int:
    """The int64 (two's complement) value with the same 64 bits as unsigned `x`."""
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def mix64_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (unsigned 64-bit)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def name_hash(tensor_name: str) -> int:
    """A stable 64-bit hash of a tensor name (BLAKE2b, 8-byte digest, little-endian)."""
    import hashlib  # here: its OpenSSL bindings took ~3 ms of every merge's start, random or not

    digest = hashlib.blake2b(tensor_name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stream_key(seed: int, tensor_name: str, model_index: int) -> int:
    """The splitmix64 stream start for one (seed, tensor name, model index)."""
    k = mix64_int(mix64_int(seed + GOLDEN) ^ name_hash(tensor_name))
    return (k + GOLDEN * (model_index + 1)) & MASK64


def stream_keys(seed: int, tensor_name: str, k: int) -> list[int]:
    """The splitmix64 stream start of each of the k models (unsigned 64-bit ints)."""
    return [stream_key(int(seed), tensor_name, i) for i in range(k)]
