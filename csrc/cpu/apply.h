// The per-element arithmetic of the task-arithmetic / TIES apply, shared by the apply pass
// (task_arithmetic.cpp) and the one-read pass with its fix-up (select/one_read.cpp,
// select/fix_up.cpp): from a block's inputs (or a block's records) to the result. The same float32
// operations in the same order (-ffp-contract=off) wherever an element is computed, so an
// element fixed up afterwards is bit-identical to what the apply pass would have computed.
#pragma once

#include <vector>

#include "common.h"
#include "select/rules.h"

namespace mergefast {

// The TIES result of a block for KK models (KK > 0: unrolled; KK == 0: any K, looping over
// the models with accumulators in `acc` / `dacc`): mixed holds sum_i wd_i, whose sign is
// elected (0 counts as +); then the agreeing weighted deltas and their weights are summed
// (zero deltas never agree; sign * wd is exact, NaN never agrees), divided, scaled, added
// to base and rounded once to the output dtype. Branch free (the signs are random).
template <int KK>
MF_INLINE void consensus_block(const float* const* wd, const float* w, int K,
                            const float* __restrict b, const float* __restrict mixed,
                            bool normalize, bool scale, float lambda, float* __restrict out,
                            int64_t len, float* __restrict acc, float* __restrict dacc) {
  if constexpr (KK > 0) {
    const float* __restrict p[KK];
    float wl[KK];
    for (int i = 0; i < KK; ++i) {
      p[i] = wd[i];
      wl[i] = w[i];
    }
    for (int64_t j = 0; j < len; ++j) {
      const float sgn = mixed[j] >= 0.0f ? 1.0f : -1.0f;
      float a = 0.0f, da = 0.0f;
      for (int i = 0; i < KK; ++i) {
        const float v = p[i][j];
        const bool agree = sgn * v > 0.0f;
        a = a + (agree ? v : 0.0f);
        da = da + (agree ? wl[i] : 0.0f);
      }
      float r = a;
      if (normalize) r = r / (da == 0.0f ? 1.0f : da);
      if (scale) r = r * lambda;
      out[j] = b[j] + r;
    }
  } else {
    for (int64_t j = 0; j < len; ++j) {
      acc[j] = 0.0f;
      dacc[j] = 0.0f;
    }
    for (int i = 0; i < K; ++i) {
      const float* wdi = wd[i];
      const float wi = w[i];
      for (int64_t j = 0; j < len; ++j) {
        const bool agree = (mixed[j] >= 0.0f ? 1.0f : -1.0f) * wdi[j] > 0.0f;
        acc[j] = acc[j] + (agree ? wdi[j] : 0.0f);
        dacc[j] = dacc[j] + (agree ? wi : 0.0f);
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      float r = acc[j];
      if (normalize) r = r / (dacc[j] == 0.0f ? 1.0f : dacc[j]);
      if (scale) r = r * lambda;
      out[j] = b[j] + r;
    }
  }
}

// Everything the apply does to one block (the loop body of apply()).
struct ApplyArgs {
  const Src* base;
  const std::vector<Src>* xs;
  const float* w;
  const KeepRule* rules;
  bool normalize, scale;
  float divisor, lambda;
  Dst dst;
  int64_t n;
  int K;
  int threads;  // the caller's team size (team_size(n, threads) for a pass over n elements)
};

// Deltas of model `x` against staged base `b` into `d`; nonzero when one is NaN or infinite.
MF_INLINE uint32_t deltas(const float* x, const float* b, int64_t len, float* d) {
  uint32_t nonfinite = 0;
  for (int64_t j = 0; j < len; ++j) {
    d[j] = x[j] - b[j];
    nonfinite |= mag_key(d[j]) >= kNonFiniteKey;
  }
  return nonfinite;
}

// One model's pass over a block of the apply: wd = keep(x - b) * wi (zeroed where dropped),
// stored to `wd` when the consensus needs it, and added to the running sum `mixed` (which
// starts from 0.0f + wd for the first model, as the reference's sum() does). x is converted
// as it is read: no staging buffer.
// Returns nonzero when a delta of the block is NaN or infinite (then x or base is).
template <DType D, bool Mag, bool Consensus, bool First>
MF_INLINE uint32_t weigh_block(const void* xp, int64_t off, const float* b, int64_t len,
                               uint32_t teff, float wi, float* wd, float* mixed) {
  uint32_t nonfinite = 0;
  for (int64_t j = 0; j < len; ++j) {
    float d = load_f32<D>(xp, off + j) - b[j];
    nonfinite |= mag_key(d) >= kNonFiniteKey;
    if constexpr (Mag) d = mag_key(d) >= teff ? d : 0.0f;
    const float v = d * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
  return nonfinite;
}

template <DType D, bool Mag, bool Consensus>
MF_INLINE uint32_t weigh_block_first_or_not(bool first, const void* xp, int64_t off,
                                            const float* b, int64_t len, uint32_t teff, float wi,
                                            float* wd, float* mixed) {
  if (first) return weigh_block<D, Mag, Consensus, true>(xp, off, b, len, teff, wi, wd, mixed);
  return weigh_block<D, Mag, Consensus, false>(xp, off, b, len, teff, wi, wd, mixed);
}

// Model i's share of block blk of the apply, from x's elements off .. off + len and the
// staged base b: its kept deltas times w[i] into wd (when Consensus) and added to the running
// sum `mixed` (from 0.0f for model 0, as the reference's sum() does). The one block where
// the model's tie quota runs out is walked in flat order, in d (kBlock floats of scratch).
// Returns nonzero when a delta is NaN or infinite (then x or base is).
template <bool Mag, bool Consensus>
MF_INLINE uint32_t weigh_model(const ApplyArgs& a, int i, const Src& x, int64_t off, int64_t blk,
                               const float* b, int64_t len, float* d, float* wd, float* mixed) {
  uint32_t teff = 0;
  int64_t rem = 0;
  bool whole = true;  // the block's rule is key >= teff
  if constexpr (Mag) whole = a.rules[i].block_rule(blk, teff, rem);
  const float wi = a.w[i];
  if (whole) {
    switch (x.dt) {
      case DType::BF16:
        return weigh_block_first_or_not<DType::BF16, Mag, Consensus>(i == 0, x.ptr, off, b, len, teff, wi, wd, mixed);
      case DType::F16:
        return weigh_block_first_or_not<DType::F16, Mag, Consensus>(i == 0, x.ptr, off, b, len, teff, wi, wd, mixed);
      default:
        return weigh_block_first_or_not<DType::F32, Mag, Consensus>(i == 0, x.ptr, off, b, len, teff, wi, wd, mixed);
    }
  }
  const uint32_t nonfinite = deltas(stage(x, off, len, d), b, len, d);
  walk_tie_block(a.rules[i], rem, len, d, [d](int64_t j, bool kept) {
    if (!kept) d[j] = 0.0f;
  });
  for (int64_t j = 0; j < len; ++j) {
    const float v = d[j] * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (i == 0 ? 0.0f : mixed[j]) + v;
  }
  return nonfinite;
}

// The result of a block from the weighted deltas wd[i] (when consensus) and their sum
// `mixed`: out[j] = b[j] + (consensus or mixed / divisor) * lambda. acc / dacc: kBlock-float
// scratch for K > 4 models.
template <bool Consensus>
MF_INLINE void combine_block(const ApplyArgs& a, const float* const* wd, const float* b,
                             const float* mixed, float* res, int64_t len, float* acc,
                             float* dacc) {
  const int K = a.K;
  const bool normalize = a.normalize, scale = a.scale;
  const float lambda = a.lambda;
  if constexpr (Consensus) {
    switch (K) {
      case 1: consensus_block<1>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      case 2: consensus_block<2>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      case 3: consensus_block<3>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      case 4: consensus_block<4>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      default: consensus_block<0>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc);
    }
  } else {
    const float divisor = a.divisor;
    for (int64_t j = 0; j < len; ++j) {
      float r = mixed[j];
      if (normalize) r = r / divisor;
      if (scale) r = r * lambda;
      res[j] = b[j] + r;
    }
  }
}

// The OpenMP loop of the fused applies (task_arithmetic, dare, breadcrumbs, della): each thread
// gets buffers 0 base, 1 mixed, 2 delta / result, 3 acc, 4 dacc and, with Consensus, K
// weighted-delta buffers; block(bufs, wd, blk) merges block blk and returns nonzero when one of
// its deltas was not finite. True when every delta was finite.
template <bool Consensus, class Block>
bool apply_blocks(int64_t n, int K, int threads, const Block& block) {
  const int64_t nb = num_blocks(n);
  uint32_t nonfinite = 0;
#pragma omp parallel num_threads(team_size(n, threads)) reduction(| : nonfinite)
  {
    Scratch scratch(5 + (Consensus ? K : 0));
    float* bufs[5];
    for (int q = 0; q < 5; ++q) bufs[q] = scratch.buf(q);
    std::vector<float*> wd(K, nullptr);
    if constexpr (Consensus) {
      for (int i = 0; i < K; ++i) wd[i] = scratch.buf(5 + i);
    }
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) nonfinite |= block(bufs, wd.data(), blk);
  }
  return nonfinite == 0;
}

}  // namespace mergefast
