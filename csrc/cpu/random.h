// The counter-based generator of DARE / DELLA (mergefast/methods/random.py is the spec),
// evaluated per element: element i of a model's stream draws mix64(key + GOLDEN * (i + 1))
// and keeps its top 24 bits, u = (bits >> 40) * 2^-24, an exact float32 in [0, 1). The key
// (seed, tensor name, model index) is computed by the caller (mergefast/kernels/dare.py), so
// the kernels need only 64-bit wrapping multiplies, xors and shifts: the same draws on every
// device, thread count and block split.
#pragma once

#include <cstdint>

#include "common.h"

namespace mergefast {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;

// splitmix64's finaliser (logical shifts, wrapping multiplies).
MF_INLINE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

// The uniform draw of flat element i of the stream started at `key` (random.uniform's).
MF_INLINE float uniform_at(uint64_t key, int64_t i) {
  const uint64_t bits = mix64(key + kGolden * static_cast<uint64_t>(i + 1));
  return static_cast<float>(static_cast<int32_t>(bits >> 40)) * 0x1.0p-24f;
}

}  // namespace mergefast
