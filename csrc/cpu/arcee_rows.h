// The per-row sweeps of arcee_fusion's first pass (arcee_fusion.cpp): the row's KL from its
// cache-resident copy, and the order keys of its importance values.
//
// Per row: (1) stage base and other into the row buffer, and their maxima; (2) the float32
// exps e^(v - max) into the buffer, summed in float64; (3) the KL as sum q f(p / q)
// (arcee_math.h), each term in float32, summed in float64. A block whose deltas are all
// small (|x - b| + |c| <= 0.1: fine-tunes' deltas are ~1e-3) takes a series of f without a
// division; the others the general form (two divisions). Float32 lanes: 8 with the AVX2
// clone, where the float64 exps and log of the reference's form took 4.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "arcee_math.h"
#include "common.h"

namespace mergefast {
namespace arcee {

// The row sweeps' lambdas are inlined into each clone too (a lambda compiled on its own gets
// the default instruction set: the AVX2 clone would call SSE code).
#if defined(__GNUC__)
#define MF_LAMBDA_INLINE __attribute__((always_inline))
#else
#define MF_LAMBDA_INLINE
#endif

constexpr float kSoftmaxEps = 1e-8f;
// Rows up to this many columns are staged once into a per-thread row buffer, with their exps
// (4 x 4 bytes an element: 176 KiB for 11008 columns, L2-resident), for the four sweeps;
// longer rows are staged again, and their exps recomputed, block by block.
constexpr int64_t kCacheCols = 1 << 16;

struct ArceeArgs {
  Src base, other;
  int64_t rows, cols;
};

// One row's float32 values, block by block: from the row buffer (`cache`: base, other, then
// their exps; filled by the first two sweeps) or staged again per block (rows past kCacheCols).
struct RowSource {
  const ArceeArgs& a;
  int64_t start;
  Scratch& s;
  float* cache;  // 2 x cols floats, or nullptr

  // Calls f(j, b, x, len) for the blocks of kBlock of the row; `fill` stages into the cache.
  template <class F>
  MF_INLINE void blocks(bool fill, F&& f) {
    for (int64_t j = 0; j < a.cols; j += kBlock) {
      const int64_t len = std::min(kBlock, a.cols - j);
      if (cache != nullptr && !fill) {
        f(j, cache + j, cache + a.cols + j, len);
        continue;
      }
      float* bb = cache != nullptr ? cache + j : s.buf(0);
      float* bx = cache != nullptr ? cache + a.cols + j : s.buf(1);
      const float* b = stage(a.base, start + j, len, bb);
      const float* x = stage(a.other, start + j, len, bx);
      if (cache != nullptr && b != bb) std::memcpy(bb, b, len * sizeof(float));
      if (cache != nullptr && x != bx) std::memcpy(bx, x, len * sizeof(float));
      f(j, b, x, len);
    }
  }

  // Where the exps of the block at column j go: base (which 0) or other (1).
  MF_INLINE float* exps(int64_t j, int which) {
    return cache != nullptr ? cache + (2 + which) * a.cols + j : s.buf(3 + which);
  }
};

// max(m, v[0..len)) over 8 lanes (vectorises). NaN never wins: it reaches the sums instead.
MF_INLINE float lane_max(const float* v, int64_t len, float m) {
  float acc[8] = {m, m, m, m, m, m, m, m};
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] = v[j + l] > acc[l] ? v[j + l] : acc[l];
  }
  for (; j < len; ++j) acc[0] = v[j] > acc[0] ? v[j] : acc[0];
  for (int l = 1; l < 8; ++l) acc[0] = acc[l] > acc[0] ? acc[l] : acc[0];
  return acc[0];
}

// e[j] = e^(v[j] - m), float32.
MF_INLINE void exps(const float* __restrict v, float m, int64_t len, float* __restrict e) {
  for (int64_t j = 0; j < len; ++j) e[j] = exp32_nonpositive(v[j] - m);
}

// The row constants of the KL terms: the maxima, 1 / the sums of the exps, and
// c = (mx - mb) + log(sx / sb), so that p / q = e^((x - b) - c) up to the 1e-8s.
struct RowConsts {
  float mb, mx, ib, ix, c;
};

// q f(p / q) of one element (see arcee_math.h): p - q = q0 expm1(d) while |d| <= 1/2 (no
// cancellation), else p0 - q0 (which then cancels by less than a factor of 2.6).
MF_INLINE float kl_term(float b, float x, float eb, float ex, const RowConsts& k) {
  const float q0 = eb * k.ib, p0 = ex * k.ix;
  const float d = (x - b) - k.c;
  const float diff = std::fabs(d) <= 0.5f ? q0 * expm1_small(d) : p0 - q0;
  const float q = q0 + kSoftmaxEps;
  return q * kl_f(diff / q);
}

// kl_term where |d| <= 0.1: then |u| <= 0.106, and f is a polynomial (no second division).
MF_INLINE float kl_term_small(float b, float x, float eb, const RowConsts& k) {
  const float q0 = eb * k.ib, q = q0 + kSoftmaxEps;
  return q * kl_f_small(q0 * expm1_tiny((x - b) - k.c) / q);
}

// max |x - b| of a block (NaN: a NaN), as the unsigned maximum of the bits of |x - b|, which
// orders them as their values (a loop reduction GCC vectorises; a float max reduction it does
// not without -ffast-math).
MF_INLINE float max_delta(const float* __restrict b, const float* __restrict x, int64_t len) {
  uint32_t m = 0;
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t d = f32_to_bits(x[j] - b[j]) & 0x7FFFFFFFu;
    m = d > m ? d : m;
  }
  return bits_to_f32(m);
}

// t[j] = the KL term of element j (eb, ex: its exps). A block of small deltas (fine-tunes':
// |d| <= 0.1) takes kl_term_small.
MF_INLINE void kl_terms(const float* __restrict b, const float* __restrict x, const float* __restrict eb,
                        const float* __restrict ex, const RowConsts& k, int64_t len, float* __restrict t) {
  if (max_delta(b, x, len) + std::fabs(k.c) <= 0.1f) {
    for (int64_t j = 0; j < len; ++j) t[j] = kl_term_small(b[j], x[j], eb[j], k);
    return;
  }
  for (int64_t j = 0; j < len; ++j) t[j] = kl_term(b[j], x[j], eb[j], ex[j], k);
}

MF_INLINE double lanes_total(const double* v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// The KL of one row (see the file comment): three sweeps, the first filling the row buffer.
MF_INLINE double kl_row(RowSource& row) {
  RowConsts k{-std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 0, 0, 0};
  row.blocks(true, [&](int64_t, const float* b, const float* x, int64_t len) MF_LAMBDA_INLINE {
    k.mb = lane_max(b, len, k.mb);
    k.mx = lane_max(x, len, k.mx);
  });
  double sb[8] = {}, sx[8] = {};
  row.blocks(false, [&](int64_t j, const float* b, const float* x, int64_t len) MF_LAMBDA_INLINE {
    float *eb = row.exps(j, 0), *ex = row.exps(j, 1);
    exps(b, k.mb, len, eb);
    exps(x, k.mx, len, ex);
    add_lanes(eb, len, sb);
    add_lanes(ex, len, sx);
  });
  const double tb = lanes_total(sb), tx = lanes_total(sx);
  k.ib = static_cast<float>(1.0 / tb);
  k.ix = static_cast<float>(1.0 / tx);
  k.c = static_cast<float>((static_cast<double>(k.mx) - k.mb) + log_positive(tx / tb));
  double acc[8] = {};
  float* t = row.s.buf(5);
  row.blocks(false, [&](int64_t j, const float* b, const float* x, int64_t len) MF_LAMBDA_INLINE {
    float *eb = row.exps(j, 0), *ex = row.exps(j, 1);
    if (row.cache == nullptr) {
      exps(b, k.mb, len, eb);
      exps(x, k.mx, len, ex);
    }
    kl_terms(b, x, eb, ex, k, len, t);
    add_lanes(t, len, acc);
  });
  return lanes_total(acc);
}

// The order keys of the importance |x - b| * kl of `len` elements into `keys`.
MF_INLINE void importance_keys(const float* b, const float* x, float kl, int64_t len, uint32_t* keys) {
  for (int64_t j = 0; j < len; ++j) keys[j] = order_key(std::fabs(x[j] - b[j]) * kl);
}

}  // namespace arcee
}  // namespace mergefast
