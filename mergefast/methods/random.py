"""Counter-based random numbers for the random methods (DARE, DELLA).

Every random draw is a pure function of (seed, tensor name, model index, element index), so
a mask is the same on any device, with any thread count, whole or computed in chunks, and
never touches torch's global RNG.

The generator, exactly (all arithmetic modulo 2**64):

- `mix64(z)`: the splitmix64 finaliser
  `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31`
  (logical shifts).
- `name_hash` = the first 8 bytes (little-endian) of BLAKE2b-64 of the UTF-8 tensor name.
- `key = mix64(mix64(seed + GOLDEN) ^ name_hash) + GOLDEN * (model_index + 1)`, with
  GOLDEN = 0x9E3779B97F4A7C15. `model_index` is the input's position among the non-base
  models of the tensor group (0 for the first).
- element `i` (flat, row-major index) draws `mix64(key + GOLDEN * (i + 1))`, i.e. the
  (i+1)-th output of a splitmix64 stream started at `key`, and keeps its top 24 bits:
  `u_i = (bits >> 40) / 2**24`, a float32 in [0, 1) that is exactly representable.
- A Bernoulli(p) draw is `u_i < p`, compared in float32.

The per-element step only needs 64-bit wrapping multiply, xor and shifts, so C++ and Triton
kernels can reproduce it bit for bit.
"""

from __future__ import annotations

import torch

from .random_keys import (  # noqa: F401 - the generator's integer half, re-exported
    GOLDEN,
    MASK64,
    MIX1,
    MIX2,
    UNIFORM_BITS,
    _signed,
    mix64_int,
    name_hash,
    stream_key,
)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic on the bit patterns)."""
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    return z ^ _shr(z, 31)


def uniform(
    seed: int,
    tensor_name: str,
    model_index: int,
    numel: int,
    *,
    start: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform float32 draws in [0, 1) for flat element indices [start, start + numel).

    Pure function of its arguments (see the module docstring), so `uniform(..., n, start=0)`
    equals the concatenation of any split of [0, n) into chunks.
    """
    return uniform_from_key(stream_key(seed, tensor_name, model_index), numel, start=start, device=device)


def uniform_from_key(key: int, numel: int, *, start: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """`uniform` of the stream started at `key` (a `stream_key`), for flat element indices
    [start, start + numel)."""
    return uniform_at(key, torch.arange(start, start + numel, dtype=torch.int64, device=device))


def uniform_at(key: int, index: torch.Tensor) -> torch.Tensor:
    """`uniform` of the stream started at `key` for the flat element indices `index` (int64,
    any shape and order), on index's device."""
    bits = mix64((index + 1) * _signed(GOLDEN) + _signed(key))
    return _shr(bits, 64 - UNIFORM_BITS).to(torch.float32) * (1.0 / (1 << UNIFORM_BITS))


def uniform_like(tensor: torch.Tensor, seed: int, tensor_name: str, model_index: int) -> torch.Tensor:
    """`uniform` for every element of `tensor`, shaped like it, on its device."""
    return uniform(seed, tensor_name, model_index, tensor.numel(), device=tensor.device).view(tensor.shape)
