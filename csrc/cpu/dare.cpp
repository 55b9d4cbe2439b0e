// DARE (dare_linear, dare_ties) on the CPU: a Bernoulli drop of each delta from the
// counter-based generator (random.h), evaluated per element inside the passes, so nothing of
// size n is allocated but the output and the masks are the reference's on any thread count.
//
// Passes over base + K models:
//   1. (only with the L1 rescale) dare_norms: per block, sum |d| and sum |kept d| per model
//      in float64 over 8 fixed lanes, then the blocks in order: a thread-count independent
//      sum. The caller turns them into one float32 scale per model, as the reference does.
//      Given an output (at most 16 models), it also leaves each element's keep bits in the
//      element's slot there, and DELLA's apply (della.cpp) reads them instead of pass 2
//      drawing again: 0.83-0.85x the time of dare_ties with AVX2 draws, 0.92-0.96x with
//      AVX-512VL ones (16384 x 1024 bf16, base + 3, 2-vCPU Intel Xeon VM).
//   2. the apply: per element and model, d = x - b, kept = u < p, v = ((kept ? d : 0) * s) * w
//      (the reference's order), then TIES' sign election and disjoint mean or the plain sum
//      (apply.h's combine_block), base + result, rounded once.
#include <algorithm>
#include <cmath>

#include "apply.h"
#include "common.h"
#include "kernels.h"
#include "random.h"

namespace mergefast {
namespace {

// The AVX2 clones take each block's draws from uniforms_wide (random.h), eight at a time, with
// AVX-512DQ's 64-bit multiply (vpmullq) on 256-bit vectors where the CPU has it. On a 2-vCPU
// Intel Xeon VM (AVX-512), against an AVX-512 clone of these passes whose compiler-vectorised
// draws used 512-bit vectors, dare_ties with rescale took 0.84-0.91x the time (16384 x 1024 and
// 2048 x 11008 bf16, base + 3).

// The apply's arguments (apply.h) plus each model's stream key, keep probability (float32:
// the reference compares u < density in float32) and L1 scale (1.0f: none).
struct DareArgs : ApplyArgs {
  const uint64_t* keys;
  const float* dens;
  const float* scales;
  OutputSlots words;  // the norms pass's keep-word output (dare_masks), else null
};

// The draws of elements 0 .. len-1 of the stream at z0 into ub when Wide (the AVX2 clones:
// uniforms_wide, eight at a time, with AVX-512DQ's 64-bit multiply where the CPU has it), for
// draw_at. Without: each draw is evaluated in the loop that uses it.
template <bool Wide>
MF_INLINE void fill_draws(uint64_t z0, int64_t len, float* ub) {
#if MF_AVX2_CLONES
  if constexpr (Wide) uniforms_wide(z0, len, ub);
#endif
}

// Draw j of the stream at z0 (uniforms()): from ub when Wide (fill_draws), else evaluated here.
template <bool Wide>
MF_INLINE float draw_at(uint64_t z0, int64_t j, const float* ub) {
  if constexpr (Wide) return ub[j];
  const uint64_t bits = mix64(z0 + kGolden * static_cast<uint64_t>(j));
  return static_cast<float>(static_cast<int32_t>(bits >> 40)) * 0x1.0p-24f;
}

// Model i's weighted kept deltas for one block (x converted as it is read), stored to `wd`
// when the consensus needs them and added to the running sum `mixed` (from 0.0f for model 0,
// as the reference's sum() does); ub: scratch for the draws. Returns nonzero when a delta is
// NaN or infinite.
template <DType D, bool Consensus, bool First, bool Wide>
MF_INLINE uint32_t weigh_random(const void* xp, int64_t off, const float* b, int64_t len,
                                uint64_t key, float p, float s, float wi, float* wd,
                                float* mixed, float* ub) {
  uint32_t nonfinite = 0;
  const uint64_t z0 = key + kGolden * static_cast<uint64_t>(off + 1);
  fill_draws<Wide>(z0, len, ub);
  for (int64_t j = 0; j < len; ++j) {
    float d = load_f32<D>(xp, off + j) - b[j];
    nonfinite |= mag_key(d) >= kNonFiniteKey;
    d = draw_at<Wide>(z0, j, ub) < p ? d : 0.0f;
    const float v = (d * s) * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
  return nonfinite;
}

template <DType D, bool Consensus, bool Wide>
MF_INLINE uint32_t weigh_random_dt(const DareArgs& a, int i, int64_t off, const float* b,
                                   int64_t len, float* wd, float* mixed, float* ub) {
  const void* xp = (*a.xs)[i].ptr;
  if (i == 0) {
    return weigh_random<D, Consensus, true, Wide>(xp, off, b, len, a.keys[i], a.dens[i], a.scales[i], a.w[i], wd,
                                                  mixed, ub);
  }
  return weigh_random<D, Consensus, false, Wide>(xp, off, b, len, a.keys[i], a.dens[i], a.scales[i], a.w[i], wd,
                                                 mixed, ub);
}

// One block of the apply pass. Returns nonzero when a delta of the block is NaN or infinite.
template <bool Consensus, bool Wide>
MF_INLINE uint32_t dare_block_impl(const DareArgs& a, float* const* bufs, float* const* wd,
                                   int64_t blk) {
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  float* ub = bufs[2];  // the draws; combine_block's result afterwards
  uint32_t nonfinite = 0;
  for (int i = 0; i < a.K; ++i) {
    switch ((*a.xs)[i].dt) {
      case DType::BF16:
        nonfinite |= weigh_random_dt<DType::BF16, Consensus, Wide>(a, i, off, b, len, wd[i], mixed, ub);
        break;
      case DType::F16:
        nonfinite |= weigh_random_dt<DType::F16, Consensus, Wide>(a, i, off, b, len, wd[i], mixed, ub);
        break;
      default:
        nonfinite |= weigh_random_dt<DType::F32, Consensus, Wide>(a, i, off, b, len, wd[i], mixed, ub);
    }
  }
  combine_block<Consensus>(a, wd, b, mixed, bufs[2], len, bufs[3], bufs[4]);
  store(a.dst, off, len, bufs[2]);
  return nonfinite;
}

template <bool Consensus>
uint32_t dare_block_default(const DareArgs& a, float* const* bufs, float* const* wd, int64_t blk) {
  return dare_block_impl<Consensus, false>(a, bufs, wd, blk);
}

#if MF_AVX2_CLONES
template <bool Consensus>
MF_TARGET_AVX2 uint32_t dare_block_avx2(const DareArgs& a, float* const* bufs, float* const* wd,
                                        int64_t blk) {
  return dare_block_impl<Consensus, true>(a, bufs, wd, blk);
}

template <bool Consensus>
MF_TARGET_AVX512BW uint32_t dare_block_avx512(const DareArgs& a, float* const* bufs, float* const* wd,
                                              int64_t blk) {
  return dare_block_impl<Consensus, true>(a, bufs, wd, blk);
}
#endif

template <bool Consensus>
bool dare_apply(const DareArgs& a) {
  auto block = &dare_block_default<Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &dare_block_avx2<Consensus>;
  if (cpu_has_avx512bw()) block = &dare_block_avx512<Consensus>;
#endif
  const int K = a.K;
  const auto merge = [&](float* const* bufs, float* const* wd, int64_t blk) {
    return block(a, bufs, wd, blk);
  };
  return apply_blocks<Consensus>(a.n, K, a.threads, merge);
}

#if MF_AVX2_CLONES
// One model's terms of the norms pass, eight elements a step: sum |d| into part[0] and
// sum |kept d| into part[1] by lane (j % 8, two float64 vectors each, as add_lanes), then the
// lanes in order; with Words, the keep bits (bit) or-ed into words. The same sums and bits as
// the scalar loop and its two lane_sums, without storing the terms: dare_ties with rescale
// 0.87x the time on 2816 x 1024, 0.94x on 11008 x 4096 (ab_libs, base + 3 bf16, 2-vCPU AMD
// EPYC VM), where the compiler's own fusion of the three loops did not vectorise (4x).
template <bool Words>
MF_TARGET_AVX2 inline void norms_model_avx2(const float* x, const float* b, const float* ub, float p, int64_t len,
                                            uint16_t bit, uint16_t* words, double* part) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), pv = _mm256_set1_ps(p);
  const __m128i bit16 = _mm_set1_epi16(static_cast<int16_t>(bit));
  __m256d all[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()}, on[2] = {all[0], all[1]};
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(b + j)), abs_mask);
    const __m256 keep = _mm256_cmp_ps(_mm256_loadu_ps(ub + j), pv, _CMP_LT_OQ);
    add_lanes_avx2(d, all);
    add_lanes_avx2(_mm256_and_ps(d, keep), on);
    if constexpr (Words) or_keep_bits_avx2(_mm256_castps_si256(keep), bit16, words + j);
  }
  double lanes[2][8];
  store_lanes_avx2(all, lanes[0]);
  store_lanes_avx2(on, lanes[1]);
  for (; j < len; ++j) {
    const float d = std::fabs(x[j] - b[j]);
    lanes[0][j % 8] += static_cast<double>(d);
    lanes[1][j % 8] += static_cast<double>(ub[j] < p ? d : 0.0f);
    if constexpr (Words) words[j] = static_cast<uint16_t>(words[j] | (static_cast<uint32_t>(ub[j] < p) * bit));
  }
  part[0] = lanes_in_order(lanes[0]);
  part[1] = lanes_in_order(lanes[1]);
}
#endif

// Block blk's sum |d| and sum |kept d| of every model into part[2i], part[2i + 1]; with a
// keep-word output (a.words.p), the block's keep bits (bit i: model i keeps the element)
// into it, for della_apply.
template <bool Wide>
MF_INLINE void norms_block_impl(const DareArgs& a, int64_t blk, Scratch& s, double* part) {
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  prefetch_after(a.base, *a.xs, off + len, a.n);  // common.h: dare_ties' MLP jobs 0.94x the time
  const float* b = stage(*a.base, off, len, s.buf(0));
  float* all = s.buf(2);
  float* kept = s.buf(3);
  uint16_t* words = reinterpret_cast<uint16_t*>(s.buf(4));
  if (a.words.p != nullptr) std::fill(words, words + len, uint16_t(0));
  for (int i = 0; i < a.K; ++i) {
    const float* x = stage((*a.xs)[i], off, len, s.buf(1));
    const uint64_t z0 = a.keys[i] + kGolden * static_cast<uint64_t>(off + 1);
    const float p = a.dens[i];
    float* ub = s.buf(5);
    fill_draws<Wide>(z0, len, ub);
#if MF_AVX2_CLONES
    if constexpr (Wide) {
      const uint16_t bit = static_cast<uint16_t>(1u << i);
      if (a.words.p != nullptr) {
        norms_model_avx2<true>(x, b, ub, p, len, bit, words, part + 2 * i);
      } else {
        norms_model_avx2<false>(x, b, ub, p, len, bit, words, part + 2 * i);
      }
      continue;
    }
#endif
    for (int64_t j = 0; j < len; ++j) {
      const float d = std::fabs(x[j] - b[j]);
      const float u = draw_at<Wide>(z0, j, ub);
      all[j] = d;
      kept[j] = u < p ? d : 0.0f;
      if (a.words.p != nullptr) words[j] = static_cast<uint16_t>(words[j] | (static_cast<uint32_t>(u < p) << i));
    }
    part[2 * i] = lane_sum(all, len);
    part[2 * i + 1] = lane_sum(kept, len);
  }
  if (a.words.p == nullptr) return;
  for (int64_t j = 0; j < len; ++j) a.words.p[(off + j) * a.words.stride] = words[j];
}

void norms_block_default(const DareArgs& a, int64_t blk, Scratch& s, double* part) {
  norms_block_impl<false>(a, blk, s, part);
}

#if MF_AVX2_CLONES
MF_TARGET_AVX2 void norms_block_avx2(const DareArgs& a, int64_t blk, Scratch& s, double* part) {
  norms_block_impl<true>(a, blk, s, part);
}

MF_TARGET_AVX512BW void norms_block_avx512(const DareArgs& a, int64_t blk, Scratch& s, double* part) {
  norms_block_impl<true>(a, blk, s, part);
}

#endif

DareArgs dare_args(const Src& base, const std::vector<Src>& xs, const float* w,
                   const std::vector<uint64_t>& keys, const std::vector<float>& dens,
                   const float* scales, bool normalize, float divisor, float lambda,
                   const Dst& dst, int64_t n, int threads) {
  DareArgs a{};
  static_cast<ApplyArgs&>(a) = ApplyArgs{&base, &xs, w, nullptr, normalize, lambda != 1.0f,
                                         divisor, lambda, dst, n, static_cast<int>(xs.size()),
                                         threads};
  a.keys = keys.data();
  a.dens = dens.data();
  a.scales = scales;
  return a;
}

}  // namespace

void dare_norms(const Src& base, const std::vector<Src>& xs, const std::vector<uint64_t>& keys,
                const std::vector<float>& dens, const Dst& words, int64_t n, int threads, double* sums) {
  DareArgs a = dare_args(base, xs, nullptr, keys, dens, nullptr, false, 1.0f, 1.0f, Dst{nullptr, DType::F32}, n,
                         threads);
  a.words = words.ptr == nullptr ? OutputSlots{nullptr, 0} : output_slots(words);
  auto block = &norms_block_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &norms_block_avx2;
  if (cpu_has_avx512bw()) block = &norms_block_avx512;
#endif
  const int K = a.K;
  std::vector<double> part(static_cast<size_t>(num_blocks(a.n)) * 2 * K);
  for_each_block_raw(a.n, team_size(a.n, a.threads), 6,
                     [&](int, int64_t blk, int64_t, int64_t, Scratch& s) {
                       block(a, blk, s, part.data() + blk * 2 * K);
                     });
  std::fill(sums, sums + 2 * K, 0.0);
  for (size_t blk = 0; blk * 2 * K < part.size(); ++blk) {
    for (int q = 0; q < 2 * K; ++q) sums[q] += part[blk * 2 * K + q];
  }
}

bool dare(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
          const std::vector<uint64_t>& keys, const std::vector<float>& dens,
          const std::vector<float>& scales, bool consensus, bool normalize, float divisor,
          float lambda, const Dst& dst, int64_t n, int threads) {
  const DareArgs a = dare_args(base, xs, w.data(), keys, dens, scales.data(), normalize, divisor,
                               lambda, dst, n, threads);
  return consensus ? dare_apply<true>(a) : dare_apply<false>(a);
}

}  // namespace mergefast
