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

// u of elements 0 .. len-1 of the stream whose element 0 draws mix64(z0): u[j] is
// uniform_at's value for counter z0 + GOLDEN * j. The loop form of the scalar kernels.
MF_INLINE void uniforms(uint64_t z0, int64_t len, float* u) {
  for (int64_t j = 0; j < len; ++j) {
    const uint64_t bits = mix64(z0 + kGolden * static_cast<uint64_t>(j));
    u[j] = static_cast<float>(static_cast<int32_t>(bits >> 40)) * 0x1.0p-24f;
  }
}

#if MF_AVX2_CLONES
// a * b mod 2^64 per 64-bit lane, b given as its 32-bit halves (AVX2 has no 64-bit multiply:
// three 32 x 32 -> 64-bit products).
MF_TARGET_AVX2 MF_INLINE __m256i mul64_avx2(__m256i a, __m256i b_lo, __m256i b_hi) {
  const __m256i lo = _mm256_mul_epu32(a, b_lo);
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b_lo), _mm256_mul_epu32(a, b_hi));
  return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

// mix64 of four 64-bit lanes, exact in bits 33-63 only, which are all a draw keeps (bits 40-63):
// mix64's last step, z ^ (z >> 31), changes no bit above 32, so it is left out. The same draws;
// the kernel calls of the 0.3B family (benchmarks/jobs.py, one thread, 2-vCPU Intel Xeon VM,
// AVX-512, 3 alternated runs) took 0.98x the time for DELLA and 0.97x for dare_ties.
MF_TARGET_AVX2 MF_INLINE __m256i mix64_high_avx2(__m256i z) {
  const __m256i m1_lo = _mm256_set1_epi64x(static_cast<int64_t>(kMix1 & 0xFFFFFFFFu));
  const __m256i m1_hi = _mm256_set1_epi64x(static_cast<int64_t>(kMix1 >> 32));
  const __m256i m2_lo = _mm256_set1_epi64x(static_cast<int64_t>(kMix2 & 0xFFFFFFFFu));
  const __m256i m2_hi = _mm256_set1_epi64x(static_cast<int64_t>(kMix2 >> 32));
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), m1_lo, m1_hi);
  return mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), m2_lo, m2_hi);
}

// The loop of uniforms_avx2 and uniforms_vl, eight counters per step, MIX(z) the mix64 of four
// 64-bit lanes in the bits the draws take: the same floats as uniforms(). Lanes of `a` hold
// counters j, j+1, j+4, j+5 and of `b` j+2, j+3, j+6, j+7, so that one shuffle of the high halves
// puts the eight draws in order.
#define MF_UNIFORMS_LOOP(MIX)                                                                                  \
  const auto at = [z0](int64_t j) { return static_cast<int64_t>(z0 + kGolden * static_cast<uint64_t>(j)); }; \
  __m256i a = _mm256_set_epi64x(at(5), at(4), at(1), at(0));                                                  \
  __m256i b = _mm256_set_epi64x(at(7), at(6), at(3), at(2));                                                  \
  const __m256i step = _mm256_set1_epi64x(static_cast<int64_t>(kGolden * 8u));                               \
  const __m256 scale = _mm256_set1_ps(0x1.0p-24f);                                                           \
  int64_t j = 0;                                                                                               \
  for (; j + 8 <= len; j += 8) {                                                                               \
    const __m256 ha = _mm256_castsi256_ps(MIX(a));                                                             \
    const __m256 hb = _mm256_castsi256_ps(MIX(b));                                                             \
    const __m256i hi = _mm256_castps_si256(_mm256_shuffle_ps(ha, hb, _MM_SHUFFLE(3, 1, 3, 1)));              \
    _mm256_storeu_ps(u + j, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 8)), scale));             \
    a = _mm256_add_epi64(a, step);                                                                             \
    b = _mm256_add_epi64(b, step);                                                                             \
  }                                                                                                            \
  uniforms(z0 + kGolden * static_cast<uint64_t>(j), len - j, u + j)

// uniforms() with AVX2, eight counters per step. Measured on a 2-vCPU AMD EPYC VM (shared),
// DELLA's masks pass on a 7B layer: the draws took ~9 of 16.5 ns per element and model as a
// scalar loop branching on u < p; with this and a branch-free compare loop the pass took
// 7.4-8.6 ns (before its tie-counting ranks). A call of its own (not inlined): its callers are
// templates compiled for both instruction sets.
MF_TARGET_AVX2 inline void uniforms_avx2(uint64_t z0, int64_t len, float* u) { MF_UNIFORMS_LOOP(mix64_high_avx2); }

// mix64_high_avx2 with AVX-512DQ's 64-bit multiply on 256-bit vectors (vpmullq ymm).
MF_TARGET_AVX512 MF_INLINE __m256i mix64_high_vl(__m256i z) {
  const __m256i m1 = _mm256_set1_epi64x(static_cast<int64_t>(kMix1));
  const __m256i m2 = _mm256_set1_epi64x(static_cast<int64_t>(kMix2));
  z = _mm256_mullo_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), m1);
  return _mm256_mullo_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), m2);
}

// uniforms_avx2 with mix64_high_vl. On a 2-vCPU Intel Xeon VM (AVX-512), DELLA's masks pass alone,
// one thread, 4096 x 1024 and 1024 x 2816 bf16: 0.91-0.92x the time with uniforms_avx2. The same
// loop on 512-bit vectors drew faster in a loop of its own (0.33 ns a draw against 0.41 here and
// AVX2's 0.67) but left the pass's time unchanged: the rest of the pass ran slower beside it.
MF_TARGET_AVX512 inline void uniforms_vl(uint64_t z0, int64_t len, float* u) { MF_UNIFORMS_LOOP(mix64_high_vl); }

#undef MF_UNIFORMS_LOOP

// u of elements 0 .. len-1 of the stream at z0 (uniforms()), by the fastest clone the CPU has.
MF_TARGET_AVX2 inline void uniforms_wide(uint64_t z0, int64_t len, float* u) {
  if (cpu_has_avx512dq()) return uniforms_vl(z0, len, u);
  uniforms_avx2(z0, len, u);
}
#endif

}  // namespace mergefast
