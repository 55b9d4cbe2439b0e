// The Gram pass's inner sums on x86-64 with AVX2 and FMA (gram.cpp): for every pair (i, q),
// i <= q, of the staged float32 vectors d_i of one block, 8 float64 lane sums, element j in
// lane j % 8, added in index order. Lanes 0-3 and 4-7 are two sweeps of 4-wide registers, so
// every pair's accumulator stays in a register: K <= 4 inputs update all K (K + 1) / 2 pairs
// per load (at most 10 accumulators of the 16 ymm registers), more inputs go row by row (d_i
// against up to 8 d_q at a time). Products of float32 values are exact in float64, so the
// fused multiply-add rounds exactly as the product-then-add of the portable path: the same
// sums, bit for bit.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace mergefast {

// sum of one pair's 8 lanes, pairwise (the order of every build)
MF_INLINE double combine_lanes(const double* l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

#if MF_AVX2_CLONES
// Elements per sweep pair (lanes 0-3, then 4-7): 2 KiB of each input stays in L1 between the
// two sweeps.
constexpr int64_t kGramChunk = 512;

// All pairs of K inputs over elements [j0, j1) (multiples of 8); lanes: P x 8, pair order
// (0,0) (0,1) .. (1,1) ..
template <int K>
MF_TARGET_FMA MF_INLINE void lanes_all_pairs(const float* const* d, int64_t j0, int64_t j1, double* lanes) {
  constexpr int P = K * (K + 1) / 2;
  for (int h = 0; h < 2; ++h) {
    __m256d acc[P];
    for (int p = 0; p < P; ++p) acc[p] = _mm256_loadu_pd(lanes + 8 * p + 4 * h);
    for (int64_t j = j0 + 4 * h; j < j1; j += 8) {
      __m256d v[K];
      for (int i = 0; i < K; ++i) v[i] = _mm256_cvtps_pd(_mm_loadu_ps(d[i] + j));
      int p = 0;
      for (int i = 0; i < K; ++i) {
        for (int q = i; q < K; ++q, ++p) acc[p] = _mm256_fmadd_pd(v[i], v[q], acc[p]);
      }
    }
    for (int p = 0; p < P; ++p) _mm256_storeu_pd(lanes + 8 * p + 4 * h, acc[p]);
  }
}

// The N pairs (i, q0) .. (i, q0 + N - 1) over [j0, j1): di = d_i, dq = d_q0.., lanes of those
// pairs consecutive (pair order).
template <int N>
MF_TARGET_FMA MF_INLINE void lanes_row(const float* di, const float* const* dq, int64_t j0, int64_t j1,
                                       double* lanes) {
  for (int h = 0; h < 2; ++h) {
    __m256d acc[N];
    for (int n = 0; n < N; ++n) acc[n] = _mm256_loadu_pd(lanes + 8 * n + 4 * h);
    for (int64_t j = j0 + 4 * h; j < j1; j += 8) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(di + j));
      for (int n = 0; n < N; ++n) acc[n] = _mm256_fmadd_pd(v, _mm256_cvtps_pd(_mm_loadu_ps(dq[n] + j)), acc[n]);
    }
    for (int n = 0; n < N; ++n) _mm256_storeu_pd(lanes + 8 * n + 4 * h, acc[n]);
  }
}

// Row by row, any K: pairs (i, q) for q = i.., up to 8 at a time.
MF_TARGET_FMA MF_INLINE void lanes_rows(const float* const* d, int K, int64_t j0, int64_t j1, double* lanes) {
  double* l = lanes;
  for (int i = 0; i < K; ++i) {
    for (int q0 = i; q0 < K; q0 += 8) {
      const int n = std::min(8, K - q0);
      switch (n) {
        case 1: lanes_row<1>(d[i], d + q0, j0, j1, l); break;
        case 2: lanes_row<2>(d[i], d + q0, j0, j1, l); break;
        case 3: lanes_row<3>(d[i], d + q0, j0, j1, l); break;
        case 4: lanes_row<4>(d[i], d + q0, j0, j1, l); break;
        case 5: lanes_row<5>(d[i], d + q0, j0, j1, l); break;
        case 6: lanes_row<6>(d[i], d + q0, j0, j1, l); break;
        case 7: lanes_row<7>(d[i], d + q0, j0, j1, l); break;
        default: lanes_row<8>(d[i], d + q0, j0, j1, l); break;
      }
      l += 8 * n;
    }
  }
}

// Adds every pair's products of elements [0, len) to its lanes (P x 8, zeroed by the caller).
MF_TARGET_FMA MF_INLINE void pair_lanes_fma(const float* const* d, int K, int64_t len, double* lanes) {
  const int64_t n8 = len / 8 * 8;
  for (int64_t j0 = 0; j0 < n8; j0 += kGramChunk) {
    const int64_t j1 = std::min(n8, j0 + kGramChunk);
    switch (K) {
      case 1: lanes_all_pairs<1>(d, j0, j1, lanes); break;
      case 2: lanes_all_pairs<2>(d, j0, j1, lanes); break;
      case 3: lanes_all_pairs<3>(d, j0, j1, lanes); break;
      case 4: lanes_all_pairs<4>(d, j0, j1, lanes); break;
      default: lanes_rows(d, K, j0, j1, lanes); break;
    }
  }
  for (int64_t j = n8; j < len; ++j) {  // the tail, element j in lane j - n8
    double* l = lanes + (j - n8);
    for (int i = 0; i < K; ++i) {
      const double di = static_cast<double>(d[i][j]);
      for (int q = i; q < K; ++q, l += 8) *l += di * static_cast<double>(d[q][j]);
    }
  }
}
#endif

}  // namespace mergefast
