// The combining half of the task-arithmetic / TIES apply, shared by the apply pass
// (task_arithmetic.cpp) and the speculative pass with its fix-up (speculative.cpp): from the
// weighted deltas of a block (or of one element) to the result. The block and the element
// versions do the same float32 operations in the same order (-ffp-contract=off), so an
// element fixed up afterwards is bit-identical to what the block pass would have computed.
#pragma once

#include <vector>

#include "common.h"
#include "select.h"

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
};

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

// combine_block for one element: wd holds its K weighted deltas, mixed their sum (summed
// from 0.0f in model order, as the block pass does).
template <bool Consensus>
MF_INLINE float combine_element(const ApplyArgs& a, const float* wd, float b, float mixed) {
  float r = mixed;
  if constexpr (Consensus) {
    const float sgn = mixed >= 0.0f ? 1.0f : -1.0f;
    float acc = 0.0f, dacc = 0.0f;
    for (int i = 0; i < a.K; ++i) {
      const bool agree = sgn * wd[i] > 0.0f;
      acc = acc + (agree ? wd[i] : 0.0f);
      dacc = dacc + (agree ? a.w[i] : 0.0f);
    }
    r = acc;
    if (a.normalize) r = r / (dacc == 0.0f ? 1.0f : dacc);
  } else if (a.normalize) {
    r = r / a.divisor;
  }
  if (a.scale) r = r * a.lambda;
  return b + r;
}

}  // namespace mergefast
