// DELLA (della, della_linear) on the CPU. Per row (the last axis), |delta|'s ranks give each
// element a keep probability p = pmin + (rank / (cols - 1)) * span (float32, the reference's
// operations: pmin = density - epsilon, span = 2 epsilon), kept where the counter-based draw
// u < p (random.h: the reference's stream on any thread count). Two passes over base + K models:
//   1. della_masks, per tile of whole rows: deltas, draws, each row's keep decisions (rank
//      bounds, della_keep.h, or every rank, della_rank.h), the keep bits of every model
//      packed into a 16-bit word per element, stored in that element's own slot of the output
//      (the apply reads it there before overwriting it: no n-sized scratch), and per tile
//      sum |d| and sum |kept d| per model in float64 (the L1 rescale's norms, summed in tile
//      order: the same on any thread count);
//   2. della_apply, per block: v = ((kept ? d : 0) * s) * w (the reference's order), then
//      TIES' sign election and disjoint mean or the plain sum (apply.h), rounded once.
#include <algorithm>
#include <cmath>

#include "apply.h"
#include "common.h"
#include "della_keep.h"
#include "kernels.h"
#include "random.h"

namespace mergefast {
namespace {

struct MaskArgs {
  const Src* base;
  const std::vector<Src>* xs;
  const uint64_t* keys;
  const float *pmin, *span;
  OutputSlots slots;
  int64_t n, cols, tile_rows;
  int K;
};

// Whether model i's deltas are of two bf16 tensors (della_keep.h's takes_bounds).
MF_INLINE bool bf16_deltas(const MaskArgs& a, int i) {
  return a.base->dt == DType::BF16 && (*a.xs)[i].dt == DType::BF16;
}

// Per-thread buffers of the masks pass for tiles of up to `cap` elements.
struct TileScratch {
  std::vector<float> b, x, d, u;
  std::vector<uint32_t> kept;
  std::vector<uint16_t> bits;
  BoundScratch bounds;
  TileScratch(int64_t cap, int64_t cols, bool bounds)
      : b(cap), x(cap), d(cap), u(cap), kept(cap), bits(cap), bounds(cols, bounds) {}
};

// The keep bits (bit) of one tile into bits, |d| into x and |kept d| into d (the norms'
// terms), from kept (all ones where kept) or, FromRanks, from the ranks held in kept: p and
// u < p here, in the same loop (rows of the full ranks: ~2.5% less time on 4096-wide rows than
// a loop of their own).
template <bool FromRanks>
MF_INLINE void tile_bits(const uint32_t* kept, const float* u, const DellaRule& rule, uint16_t bit, int64_t len,
                         uint16_t* bits, float* x, float* d) {
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t k = FromRanks ? rule.keep_mask(u[j], kept[j]) : kept[j];
    bits[j] = static_cast<uint16_t>(bits[j] | (bit & k));
    const float m = std::fabs(d[j]);
    x[j] = m;
    d[j] = bits_to_f32(f32_to_bits(m) & k);
  }
}

#if MF_AVX2_CLONES
// tile_bits and the two lane_sums of its terms in one pass, eight elements a step (lanes j % 8:
// the two halves of the step's float64 accumulators), the same bits and sums without storing
// the terms. norms[0] = sum |d|, norms[1] = sum |kept d|. DELLA's masks pass alone, one thread,
// base + 3 bf16 (2-vCPU Intel Xeon VM, builds alternated): 0.94x the time of the three loops
// on 1024-wide rows, 0.92x on 2816-wide ones.
template <bool FromRanks>
MF_TARGET_AVX2 inline void tile_bits_norms_avx2(const uint32_t* kept, const float* u, const float* d,
                                                const DellaRule& rule, uint16_t bit, int64_t len, uint16_t* bits,
                                                double* norms) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m128i bit16 = _mm_set1_epi16(static_cast<int16_t>(bit));
  const __m256 pmin = _mm256_set1_ps(rule.pmin), denom = _mm256_set1_ps(rule.denom);
  const __m256 span = _mm256_set1_ps(rule.span);
  __m256d all[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()}, on[2] = {all[0], all[1]};
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kept + j));
    if constexpr (FromRanks) {  // rule.p(rank) > u, the same float32 operations
      const __m256 p = _mm256_add_ps(pmin, _mm256_mul_ps(_mm256_div_ps(_mm256_cvtepi32_ps(k), denom), span));
      k = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(u + j), p, _CMP_LT_OQ));
    }
    const __m256 m = _mm256_and_ps(_mm256_loadu_ps(d + j), abs_mask);
    add_lanes_avx2(m, all);
    add_lanes_avx2(_mm256_and_ps(m, _mm256_castsi256_ps(k)), on);
    or_keep_bits_avx2(k, bit16, bits + j);
  }
  double lanes[2][8];
  store_lanes_avx2(all, lanes[0]);
  store_lanes_avx2(on, lanes[1]);
  for (; j < len; ++j) {
    const uint32_t k = FromRanks ? rule.keep_mask(u[j], kept[j]) : kept[j];
    bits[j] = static_cast<uint16_t>(bits[j] | (bit & k));
    const float m = std::fabs(d[j]);
    lanes[0][j % 8] += static_cast<double>(m);
    lanes[1][j % 8] += static_cast<double>(bits_to_f32(f32_to_bits(m) & k));
  }
  norms[0] = lanes_in_order(lanes[0]);
  norms[1] = lanes_in_order(lanes[1]);
}
#endif

// The tile's keep bits (tile_bits) and norms: norms[0] = sum |d|, norms[1] = sum |kept d|.
template <bool Avx2, bool FromRanks>
MF_INLINE void bits_and_norms(const uint32_t* kept, const float* u, const DellaRule& rule, uint16_t bit, int64_t len,
                              TileScratch& s, double* norms) {
  float* d = s.d.data();
#if MF_AVX2_CLONES
  if constexpr (Avx2) return tile_bits_norms_avx2<FromRanks>(kept, u, d, rule, bit, len, s.bits.data(), norms);
#endif
  tile_bits<FromRanks>(kept, u, rule, bit, len, s.bits.data(), s.x.data(), d);
  norms[0] = lane_sum(s.x.data(), len);
  norms[1] = lane_sum(d, len);
}

// Model i's keep bits over one tile (off, len) from its deltas d, into bits; sum |d| and
// sum |kept d| into norms. The draws first (a loop of their own: AVX2 evaluates eight counters
// at once), then each row's keep decisions (rank bounds, della_keep.h) or ranks
// (della_rank.h), then one branch-free pass for the bits and the norms.
template <bool Avx2>
MF_INLINE void keep_bits(const MaskArgs& a, int i, int64_t off, int64_t len, TileScratch& s, double* norms) {
  float* d = s.d.data();
  float* u = s.u.data();
  uint32_t* kept = s.kept.data();  // keep masks, or ranks
  const uint64_t z0 = a.keys[i] + kGolden * static_cast<uint64_t>(off + 1);
#if MF_AVX2_CLONES
  if constexpr (Avx2) uniforms_wide(z0, len, u);
#endif
  if constexpr (!Avx2) uniforms(z0, len, u);
  const uint16_t bit = static_cast<uint16_t>(1u << i);
  const bool ranked = a.span[i] != 0.0f && a.cols > 1;
  // unranked: the reference's pmin + (0 / 1) * 0 == pmin
  const DellaRule rule{a.pmin[i], ranked ? static_cast<float>(a.cols - 1) : 1.0f, ranked ? a.span[i] : 0.0f};
  if (ranked && takes_bounds(a.cols, bf16_deltas(a, i))) {
    for (int64_t r = 0; r < len; r += a.cols) row_keep<Avx2>(d + r, u + r, a.cols, rule, s.bounds, kept + r);
    return bits_and_norms<Avx2, false>(kept, u, rule, bit, len, s, norms);
  }
  if (ranked) {
    for (int64_t r = 0; r < len; r += a.cols) row_ranks<Avx2>(d + r, a.cols, s.bounds.rs, kept + r);
  } else {
    std::fill(kept, kept + len, 0u);
  }
  bits_and_norms<Avx2, true>(kept, u, rule, bit, len, s, norms);
}

// Tile t's keep words and its norms part[2i], part[2i + 1].
template <bool Avx2>
MF_INLINE void mask_tile(const MaskArgs& a, int64_t t, TileScratch& s, double* part) {
  const int64_t off = t * a.tile_rows * a.cols;
  const int64_t len = std::min(a.tile_rows * a.cols, a.n - off);
  const float* b = stage(*a.base, off, len, s.b.data());
  std::fill(s.bits.begin(), s.bits.begin() + len, uint16_t(0));
  for (int i = 0; i < a.K; ++i) {
    stage_deltas((*a.xs)[i], b, off, len, s.d.data());
    keep_bits<Avx2>(a, i, off, len, s, part + 2 * i);
  }
  for (int64_t j = 0; j < len; ++j) a.slots.p[(off + j) * a.slots.stride] = s.bits[j];
}

void mask_tile_default(const MaskArgs& a, int64_t t, TileScratch& s, double* part) {
  mask_tile<false>(a, t, s, part);
}

#if MF_AVX2_CLONES
MF_TARGET_AVX2 void mask_tile_avx2(const MaskArgs& a, int64_t t, TileScratch& s, double* part) {
  mask_tile<true>(a, t, s, part);
}

MF_TARGET_AVX512BW void mask_tile_avx512(const MaskArgs& a, int64_t t, TileScratch& s, double* part) {
  mask_tile<true>(a, t, s, part);
}

#endif

// Model i's weighted kept deltas for one block (bit i of the keep words w16), as DARE's
// weigh_random with the draw replaced by the stored bit. Nonzero when a delta is not finite.
template <DType D, bool Consensus, bool First>
MF_INLINE uint32_t weigh_kept(const void* xp, int64_t off, const float* b, const uint16_t* w16,
                              int64_t len, int i, float s, float wi, float* wd, float* mixed) {
  uint32_t nonfinite = 0;
  for (int64_t j = 0; j < len; ++j) {
    float d = load_f32<D>(xp, off + j) - b[j];
    nonfinite |= mag_key(d) >= kNonFiniteKey;
    d = (w16[j] >> i) & 1u ? d : 0.0f;
    const float v = (d * s) * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
  return nonfinite;
}

struct KeptArgs : ApplyArgs {
  const float* scales;
  OutputSlots slots;
};

template <DType D, bool Consensus>
MF_INLINE uint32_t weigh_kept_dt(const KeptArgs& a, int i, int64_t off, const float* b,
                                 const uint16_t* w16, int64_t len, float* wd, float* mixed) {
  const void* xp = (*a.xs)[i].ptr;
  if (i == 0) return weigh_kept<D, Consensus, true>(xp, off, b, w16, len, i, a.scales[i], a.w[i], wd, mixed);
  return weigh_kept<D, Consensus, false>(xp, off, b, w16, len, i, a.scales[i], a.w[i], wd, mixed);
}

// One block of the apply pass; nonzero when a delta of the block is NaN or infinite.
template <bool Consensus>
MF_INLINE uint32_t apply_block(const KeptArgs& a, float* const* bufs, float* const* wd,
                               uint16_t* w16, int64_t blk) {
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  for (int64_t j = 0; j < len; ++j) w16[j] = a.slots.p[(off + j) * a.slots.stride];
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  uint32_t nonfinite = 0;
  for (int i = 0; i < a.K; ++i) {
    switch ((*a.xs)[i].dt) {
      case DType::BF16: nonfinite |= weigh_kept_dt<DType::BF16, Consensus>(a, i, off, b, w16, len, wd[i], mixed); break;
      case DType::F16: nonfinite |= weigh_kept_dt<DType::F16, Consensus>(a, i, off, b, w16, len, wd[i], mixed); break;
      default: nonfinite |= weigh_kept_dt<DType::F32, Consensus>(a, i, off, b, w16, len, wd[i], mixed);
    }
  }
  combine_block<Consensus>(a, wd, b, mixed, bufs[2], len, bufs[3], bufs[4]);
  store(a.dst, off, len, bufs[2]);
  return nonfinite;
}

template <bool Consensus>
uint32_t apply_block_default(const KeptArgs& a, float* const* bufs, float* const* wd, uint16_t* w16, int64_t blk) {
  return apply_block<Consensus>(a, bufs, wd, w16, blk);
}

#if MF_AVX2_CLONES
template <bool Consensus>
MF_TARGET_AVX2 uint32_t apply_block_avx2(const KeptArgs& a, float* const* bufs, float* const* wd, uint16_t* w16,
                                         int64_t blk) {
  return apply_block<Consensus>(a, bufs, wd, w16, blk);
}

template <bool Consensus>
MF_TARGET_AVX512BW uint32_t apply_block_avx512(const KeptArgs& a, float* const* bufs, float* const* wd, uint16_t* w16,
                                               int64_t blk) {
  return apply_block<Consensus>(a, bufs, wd, w16, blk);
}
#endif

template <bool Consensus>
bool della_apply_impl(const KeptArgs& a) {
  auto block = &apply_block_default<Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &apply_block_avx2<Consensus>;
  if (cpu_has_avx512bw()) block = &apply_block_avx512<Consensus>;
#endif
  const int K = a.K;
  const auto merge = [&](float* const* bufs, float* const* wd, int64_t blk) {
    thread_local std::vector<uint16_t> w16(kBlock);  // the block's keep words
    prefetch_after(a.base, *a.xs, (blk + 1) * kBlock, a.n);  // common.h: side by side, dare_ties 0.93-0.98x
    return block(a, bufs, wd, w16.data(), blk);
  };
  return apply_blocks<Consensus>(a.n, K, a.threads, merge);
}

}  // namespace

void della_masks(const Src& base, const std::vector<Src>& xs, const std::vector<uint64_t>& keys,
                 const std::vector<float>& pmin, const std::vector<float>& span, int64_t cols,
                 const Dst& dst, int64_t n, int threads, double* sums) {
  const int K = static_cast<int>(xs.size());
  const int64_t tile_rows = std::max<int64_t>(1, kBlock / cols);
  const int64_t cap = tile_rows * cols;
  const MaskArgs a{&base, &xs, keys.data(), pmin.data(), span.data(), output_slots(dst), n, cols, tile_rows, K};
  auto tile = &mask_tile_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) tile = &mask_tile_avx2;
  if (cpu_has_avx512bw()) tile = &mask_tile_avx512;
#endif
  bool any_bounds = false;  // some model's rows take the rank bounds
  for (int i = 0; i < K; ++i) any_bounds |= takes_bounds(cols, bf16_deltas(a, i));
  const int64_t ntiles = (n + cap - 1) / cap;
  const int64_t chunk = std::max<int64_t>(1, kChunkBlocks * kBlock / cap);
  std::vector<double> part(static_cast<size_t>(ntiles) * 2 * K);
#pragma omp parallel num_threads(team_size(n, threads))
  {
    TileScratch s(cap, cols, any_bounds);
#pragma omp for schedule(dynamic, chunk)
    for (int64_t t = 0; t < ntiles; ++t) tile(a, t, s, part.data() + t * 2 * K);
  }
  std::fill(sums, sums + 2 * K, 0.0);
  for (int64_t t = 0; t < ntiles; ++t) {
    for (int q = 0; q < 2 * K; ++q) sums[q] += part[t * 2 * K + q];
  }
}

bool della_apply(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
                 const std::vector<float>& scales, bool consensus, bool normalize, float divisor,
                 float lambda, const Dst& dst, int64_t n, int threads) {
  KeptArgs a{};
  static_cast<ApplyArgs&>(a) = ApplyArgs{&base, &xs, w.data(), nullptr, normalize, lambda != 1.0f,
                                         divisor, lambda, dst, n, static_cast<int>(xs.size()),
                                         threads};
  a.scales = scales.data();
  a.slots = output_slots(dst);
  return consensus ? della_apply_impl<true>(a) : della_apply_impl<false>(a);
}

}  // namespace mergefast
