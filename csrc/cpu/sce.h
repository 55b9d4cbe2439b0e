// What SCE's two calls share (sce.cpp: the variance keys, the selection and the energies;
// sce_apply.cpp: the election and merge): the arguments, the keys kept in the output's slots
// (and the exact key of one element), the keep-mask of a block from its variance keys, and the
// AVX2 clone picking of their block functions.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "select/rules.h"

namespace mergefast {

// No coarse key equals it (they are at most kNaNKey >> 16).
constexpr uint32_t kNoBucket = 0xFFFFFFFFu;

struct SceArgs {
  const Src* base;
  const std::vector<Src>* xs;
  int K;
  int64_t n;
  int threads;
  OutputSlots slots;  // the top 15 bits of every variance key (key >> 16), from the keys pass on
  uint32_t hi;  // the coarse key whose elements get their exact key recomputed (kNoBucket: none)
};

// a / d as torch's Welford divides (d the model count so far, a small integer; inv = 1 / d),
// correctly rounded: a product where 1 / d is exact (d a power of two), else a division, or
// with Fma (the clones whose CPUs fuse multiply-adds) the product and one correction, which
// give the division's bits:
//   q = a * inv is within 1.5 ulp of a / d, so r = a - d * q is a small multiple of q's ulp,
//   exact as one fma; q + r * inv is a / d + r * (inv - 1 / d), within 2^-52 ulp of it. And
//   a / d (d = m * 2^t, m odd) lies k / m ulp past a representable number, k an integer, so
//   at least 1 / (2m) ulp from every rounding boundary: fma(r, inv, q) rounds as a / d does.
// Zeros, infinities and NaN keep the product a * inv (a / d's value; the correction would turn
// -0 into +0 and inf into NaN). The SCE inputs' doubles (float32 values, their products) lie
// far from double overflow and underflow. 1.5e9 random quotients (d = 3..63, exponents
// -300..300, significands near 1 and 2 among them) all equal the division's. The 0.3B family's
// 3-model SCE jobs, kernels alone on one thread (benchmarks/jobs.py, 2-vCPU Intel Xeon VM, 3
// alternated runs): 0.95x the time of the divisions (vdivpd took ~10% of theirs).
template <bool Fma = false>
MF_INLINE double sce_divide(double a, double d, double inv, bool exact) {
  if (exact) return a * inv;
  if constexpr (!Fma) return a / d;
  const double q = a * inv;
  const double corrected = __builtin_fma(__builtin_fma(-q, d, a), inv, q);
  return q != 0.0 && std::fabs(q) < HUGE_VAL ? corrected : q;
}

MF_INLINE constexpr bool sce_power_of_two(int v) { return (v & (v - 1)) == 0; }

// The variance key of element j from the inputs: sce.cpp's keys pass for one element (the same
// Welford updates in the same order, the same rounding), for the elements of bucket a.hi.
MF_INLINE uint32_t sce_key_at(const SceArgs& a, int64_t j) {
  const float b = load_at(*a.base, j);
  double mean = 0.0, m2 = 0.0;
  for (int i = 0; i < a.K; ++i) {
    const double v = static_cast<double>(load_at((*a.xs)[i], j) - b);
    const double delta = v - mean;
    mean = mean + sce_divide(delta, i + 1.0, 1.0 / (i + 1.0), sce_power_of_two(i + 1));
    m2 = m2 + delta * (v - mean);
  }
  return mag_key(static_cast<float>(sce_divide(m2, a.K, 1.0 / a.K, sce_power_of_two(a.K))));
}

// Keys of block (off, len) that order exactly like the variance keys against any threshold in
// bucket a.hi: the exact key there, slot << 16 elsewhere (above or below the whole bucket).
MF_INLINE void sce_block_keys(const SceArgs& a, int64_t off, int64_t len, uint32_t* kb) {
  const uint16_t* sl = a.slots.p + off * a.slots.stride;
  const int64_t st = a.slots.stride;
  if (st == 1) {  // 16-bit outputs: a contiguous loop (vectorised)
    for (int64_t j = 0; j < len; ++j) kb[j] = static_cast<uint32_t>(sl[j]) << 16;
  } else {
    for (int64_t j = 0; j < len; ++j) kb[j] = static_cast<uint32_t>(sl[j * st]) << 16;
  }
  if (a.hi == kNoBucket) return;
  const uint32_t hk = a.hi << 16;
  for (int64_t j = 0; j < len; ++j) {
    if (kb[j] == hk) kb[j] = sce_key_at(a, off + j);
  }
}

// energies[i] = the sum over the blocks, in order, of part[blk * K + i].
inline void sce_sum_parts(const std::vector<double>& part, int K, double* energies) {
  std::fill(energies, energies + K, 0.0);
  for (size_t q = 0; q < part.size(); ++q) energies[q % K] += part[q];
}

// Whether a rule keeps every position (select_topk >= 1): no keys are needed then.
inline bool sce_keeps_all(const KeepRule& r) { return r.thr == 0 && !r.cut; }

// m[j] = 1.0f where block blk's rule keeps element j (variance key kb[j]), else 0.0f: the
// reference multiplies the deltas by its bool mask (NaN * 0 stays NaN).
MF_INLINE void sce_block_mask(const KeepRule& r, int64_t blk, const uint32_t* kb, int64_t len,
                              float* m) {
  uint32_t teff = 0;
  int64_t rem = 0;
  if (r.block_rule(blk, teff, rem)) {
    for (int64_t j = 0; j < len; ++j) m[j] = kb[j] >= teff ? 1.0f : 0.0f;
    return;
  }
  for (int64_t j = 0; j < len; ++j) m[j] = r.keeps_in_split(kb[j], rem) ? 1.0f : 0.0f;
}

// Calls f(j, key) for the elements j of block (off, len) in bucket a.hi, in flat order, with
// their exact variance key (sce_key_at). The slots are compared 16 at a time (vectorised for
// 16-bit outputs) and only a group holding a match is walked: ~0.1 % of the elements match.
template <class F>
MF_INLINE void sce_for_bucket(const SceArgs& a, int64_t off, int64_t len, F&& f) {
  if (a.hi == kNoBucket) return;
  const uint16_t* p = a.slots.p + off * a.slots.stride;
  const int64_t st = a.slots.stride;
  const uint16_t h = static_cast<uint16_t>(a.hi);
  for (int64_t g = 0; g < len; g += 16) {
    const int64_t end = std::min(len, g + 16);
    uint32_t any = 0;
    if (st == 1) {
      for (int64_t j = g; j < end; ++j) any |= p[j] == h;
    } else {
      for (int64_t j = g; j < end; ++j) any |= p[j * st] == h;
    }
    if (any == 0) continue;
    for (int64_t j = g; j < end; ++j) {
      if (p[j * st] == h) f(j, sce_key_at(a, off + j));
    }
  }
}

// sce_block_mask of block blk from the slots: where the block's rule is "key >= teff" (every
// block but the one where the tie quota runs out) slot << 16 decides each element outside
// bucket a.hi alone, and the few inside get their exact key; kb (kBlock keys of scratch) for
// the other block.
MF_INLINE void sce_slot_mask(const SceArgs& a, const KeepRule& r, int64_t blk, int64_t len, uint32_t* kb,
                             float* m) {
  const int64_t off = blk * kBlock;
  uint32_t teff = 0;
  int64_t rem = 0;
  if (!r.block_rule(blk, teff, rem)) {
    sce_block_keys(a, off, len, kb);
    return sce_block_mask(r, blk, kb, len, m);
  }
  const uint16_t* p = a.slots.p + off * a.slots.stride;
  const int64_t st = a.slots.stride;
  if (st == 1) {
    for (int64_t j = 0; j < len; ++j) m[j] = (static_cast<uint32_t>(p[j]) << 16) >= teff ? 1.0f : 0.0f;
  } else {
    for (int64_t j = 0; j < len; ++j) m[j] = (static_cast<uint32_t>(p[j * st]) << 16) >= teff ? 1.0f : 0.0f;
  }
  sce_for_bucket(a, off, len, [m, teff](int64_t j, uint32_t key) { m[j] = key >= teff ? 1.0f : 0.0f; });
}

// The kept deltas of block (off, len) of model i: d[j] = (x[j] - b[j]) * m[j] (m null: every
// position kept, and d * 1.0f == d).
MF_INLINE void sce_kept_deltas(const Src& x, const float* b, const float* m, int64_t off,
                               int64_t len, float* stage_buf, float* d) {
  const float* xv = stage(x, off, len, stage_buf);
  if (m == nullptr) {
    for (int64_t j = 0; j < len; ++j) d[j] = xv[j] - b[j];
  } else {
    for (int64_t j = 0; j < len; ++j) d[j] = (xv[j] - b[j]) * m[j];
  }
}

// NAME##_default and, on x86-64, NAME##_avx2 and NAME##_avx512 (common.h) of the always-inlined
// NAME##_impl, and NAME##_pick() choosing the widest the CPU runs. SIG is the parameter list,
// ARGS the call's arguments.
#define MF_SCE_CLONED(NAME, SIG, ARGS)          \
  void NAME##_default SIG { NAME##_impl ARGS; } \
  MF_SCE_SIMD_VARIANTS(NAME, SIG, ARGS)         \
  using NAME##_fn = decltype(&NAME##_default);  \
  NAME##_fn NAME##_pick() { return MF_SCE_SIMD_PICK(NAME); }

#if MF_AVX2_CLONES
#define MF_SCE_SIMD_VARIANTS(NAME, SIG, ARGS)                 \
  MF_TARGET_AVX2 void NAME##_avx2 SIG { NAME##_impl ARGS; } \
  MF_TARGET_AVX512BW void NAME##_avx512 SIG { NAME##_impl ARGS; }
#define MF_SCE_SIMD_PICK(NAME) \
  cpu_has_avx512bw() ? &NAME##_avx512 : cpu_has_avx2() ? &NAME##_avx2 : &NAME##_default
#else
#define MF_SCE_SIMD_VARIANTS(NAME, SIG, ARGS)
#define MF_SCE_SIMD_PICK(NAME) &NAME##_default
#endif

}  // namespace mergefast
