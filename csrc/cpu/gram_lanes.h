// The Gram pass's inner sums on x86-64 with AVX2 and FMA, or AVX-512 (gram.cpp): for every
// pair (i, q), i <= q, of the staged float32 vectors d_i of one block, 8 float64 lane sums,
// element j in lane j % 8, added in index order. With AVX2, lanes 0-3 and 4-7 are two sweeps
// of 4-wide registers, so every pair's accumulator stays in a register: K <= 4 inputs update
// all K (K + 1) / 2 pairs per load (at most 10 accumulators of the 16 ymm registers), more
// inputs go row by row (d_i against up to 8 d_q at a time); AVX-512 holds a pair's 8 lanes in
// one register (below). Products of float32 values are exact in float64, so the fused
// multiply-add rounds exactly as the product-then-add of the portable path: the same sums,
// bit for bit.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace mergefast {

// sum of one pair's 8 lanes, pairwise (the order of every build)
MF_INLINE double combine_lanes(const double* l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// The tail [n8, len) (fewer than 8 elements), element j in lane j - n8.
MF_INLINE void add_tail_lanes(const float* const* d, int K, int64_t n8, int64_t len, double* lanes) {
  for (int64_t j = n8; j < len; ++j) {
    double* l = lanes + (j - n8);
    for (int i = 0; i < K; ++i) {
      const double di = static_cast<double>(d[i][j]);
      for (int q = i; q < K; ++q, l += 8) *l += di * static_cast<double>(d[q][j]);
    }
  }
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
  add_tail_lanes(d, K, n8, len, lanes);
}

// 8 float32 to float64. The zero-masked form with every lane set is the plain conversion;
// GCC 12's unmasked _mm512_cvtps_pd passes an undefined merge source that
// -Wmaybe-uninitialized reports.
MF_TARGET_AVX512BW MF_INLINE __m512d widen_512(const float* x) {
  return _mm512_maskz_cvtps_pd(static_cast<__mmask8>(0xFF), _mm256_loadu_ps(x));
}

// The AVX-512 sums: one 8-wide float64 register holds all 8 lanes of a pair, so one sweep
// does what the two 4-wide sweeps above do (lane j % 8 gets element j, in index order: the
// same sums). 32 registers hold every pair of up to 6 inputs (21 accumulators + 6 inputs).
// The 0.3B family's 147 jobs, kernels alone on one thread (benchmarks/jobs.py, 2-vCPU Intel
// Xeon VM, 3 alternated runs): model_stock 0.96x the time of the two 4-wide sweeps, karcher
// 0.98x, nuslerp 0.97x.
template <int K>
MF_TARGET_AVX512BW MF_INLINE void lanes_all_pairs_512(const float* const* d, int64_t n8, double* lanes) {
  constexpr int P = K * (K + 1) / 2;
  __m512d acc[P];
  for (int p = 0; p < P; ++p) acc[p] = _mm512_loadu_pd(lanes + 8 * p);
  for (int64_t j = 0; j < n8; j += 8) {
    __m512d v[K];
    for (int i = 0; i < K; ++i) v[i] = widen_512(d[i] + j);
    int p = 0;
    for (int i = 0; i < K; ++i) {
      for (int q = i; q < K; ++q, ++p) acc[p] = _mm512_fmadd_pd(v[i], v[q], acc[p]);
    }
  }
  for (int p = 0; p < P; ++p) _mm512_storeu_pd(lanes + 8 * p, acc[p]);
}

// The N pairs (i, q0) .. (i, q0 + N - 1) over [0, n8), as lanes_row.
template <int N>
MF_TARGET_AVX512BW MF_INLINE void lanes_row_512(const float* di, const float* const* dq, int64_t n8,
                                                double* lanes) {
  __m512d acc[N];
  for (int n = 0; n < N; ++n) acc[n] = _mm512_loadu_pd(lanes + 8 * n);
  for (int64_t j = 0; j < n8; j += 8) {
    const __m512d v = widen_512(di + j);
    for (int n = 0; n < N; ++n) acc[n] = _mm512_fmadd_pd(v, widen_512(dq[n] + j), acc[n]);
  }
  for (int n = 0; n < N; ++n) _mm512_storeu_pd(lanes + 8 * n, acc[n]);
}

// Row by row, any K: pairs (i, q) for q = i.., up to 8 at a time.
MF_TARGET_AVX512BW MF_INLINE void lanes_rows_512(const float* const* d, int K, int64_t n8, double* lanes) {
  double* l = lanes;
  for (int i = 0; i < K; ++i) {
    for (int q0 = i; q0 < K; q0 += 8) {
      const int n = std::min(8, K - q0);
      switch (n) {
        case 1: lanes_row_512<1>(d[i], d + q0, n8, l); break;
        case 2: lanes_row_512<2>(d[i], d + q0, n8, l); break;
        case 3: lanes_row_512<3>(d[i], d + q0, n8, l); break;
        case 4: lanes_row_512<4>(d[i], d + q0, n8, l); break;
        case 5: lanes_row_512<5>(d[i], d + q0, n8, l); break;
        case 6: lanes_row_512<6>(d[i], d + q0, n8, l); break;
        case 7: lanes_row_512<7>(d[i], d + q0, n8, l); break;
        default: lanes_row_512<8>(d[i], d + q0, n8, l); break;
      }
      l += 8 * n;
    }
  }
}

// pair_lanes_fma's sums, 8 lanes per register.
MF_TARGET_AVX512BW MF_INLINE void pair_lanes_512(const float* const* d, int K, int64_t len, double* lanes) {
  const int64_t n8 = len / 8 * 8;
  switch (K) {
    case 1: lanes_all_pairs_512<1>(d, n8, lanes); break;
    case 2: lanes_all_pairs_512<2>(d, n8, lanes); break;
    case 3: lanes_all_pairs_512<3>(d, n8, lanes); break;
    case 4: lanes_all_pairs_512<4>(d, n8, lanes); break;
    case 5: lanes_all_pairs_512<5>(d, n8, lanes); break;
    case 6: lanes_all_pairs_512<6>(d, n8, lanes); break;
    default: lanes_rows_512(d, K, n8, lanes); break;
  }
  add_tail_lanes(d, K, n8, len, lanes);
}
#endif

}  // namespace mergefast
