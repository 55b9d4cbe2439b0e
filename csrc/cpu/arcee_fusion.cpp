// arcee_fusion (mergefast/methods/arcee_fusion.py) on the CPU: three reads of base + other,
// nothing of the tensor's size allocated but the output.
//
//   1 (rows)  per row of `cols` elements, in the row's own cache-resident sweeps: both maxima,
//             the float64 sums of e^(v - max), then KL = sum p log(p / q), p = e^(x - mx) / sx
//             + 1e-8, q likewise of the base, all in float64 (arcee_math.h), rounded once to
//             float32; then a histogram of the top 16 bits of every importance's order key
//             (importance = |x - b| * KL, float32, as the reference).
//   2 (flat)  a histogram of the low 16 bits of the keys in the buckets of the three ranks.
//             The three order statistics (torch.kthvalue's: every NaN above +inf) are exact.
//   3 (flat)  out = b + (importance >= threshold ? x - b : 0), rounded once (arcee_apply).
//
// The caller turns the three values into the threshold with the reference's float32 formula.
#include <algorithm>
#include <cmath>
#include <limits>

#include "arcee_math.h"
#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

constexpr int kBins = 1 << 16;
constexpr double kSoftmaxEps = 1e-8;
// Scratch buffers: 0 staged base, 1 staged other, 2 keys, 3-4 and 5-6 float64 exps.
constexpr int kExpB = 3, kExpX = 5, kBuffers = 7;
// Rows up to this many columns keep their exps (2 x 8 bytes an element, per thread).
constexpr int64_t kCacheCols = 1 << 16;

struct ArceeArgs {
  Src base, other;
  int64_t rows, cols;
};

// Calls f(j0, j1, row) for the runs of the block [off, off + len) within one row.
template <class F>
MF_INLINE void row_runs(int64_t off, int64_t len, int64_t cols, F&& f) {
  for (int64_t j = 0; j < len;) {
    const int64_t row = (off + j) / cols;
    const int64_t end = std::min(len, (row + 1) * cols - off);
    f(j, end, row);
    j = end;
  }
}

// Calls f(j, b, x, len) for the blocks of kBlock of the row starting at `start`: j the column,
// b and x staged as float32.
template <class F>
MF_INLINE void row_blocks(const ArceeArgs& a, int64_t start, Scratch& s, F&& f) {
  for (int64_t j = 0; j < a.cols; j += kBlock) {
    const int64_t len = std::min(kBlock, a.cols - j);
    f(j, stage(a.base, start + j, len, s.buf(0)), stage(a.other, start + j, len, s.buf(1)), len);
  }
}

// sum of v[0..len) over 4 fixed lanes (vectorises; the same sum on every machine).
MF_INLINE double lane_sum(const double* v, int64_t len) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= len; j += 4) {
    for (int l = 0; l < 4; ++l) acc[l] += v[j + l];
  }
  for (; j < len; ++j) acc[j % 4] += v[j];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

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

// e[j] = e^(v[j] - m) in float64.
MF_INLINE void exps(const float* v, float m, int64_t len, double* e) {
  for (int64_t j = 0; j < len; ++j) e[j] = exp_nonpositive(static_cast<double>(v[j]) - m);
}

// The KL of the row starting at element `start` (see the file comment), float64: three
// sweeps over the row (in cache), block by block. `cache` (2 cols doubles, or nullptr for rows
// past kCacheCols) keeps the second sweep's exps for the third: 2 of its 4 exps an element.
MF_INLINE double kl_row(const ArceeArgs& a, int64_t start, Scratch& s, double* cache) {
  double* eb = reinterpret_cast<double*>(s.buf(kExpB));
  double* ex = reinterpret_cast<double*>(s.buf(kExpX));
  float mb = -std::numeric_limits<float>::infinity(), mx = mb;
  row_blocks(a, start, s, [&](int64_t, const float* b, const float* x, int64_t len) {
    mb = lane_max(b, len, mb);
    mx = lane_max(x, len, mx);
  });
  double sb = 0.0, sx = 0.0;
  row_blocks(a, start, s, [&](int64_t j, const float* b, const float* x, int64_t len) {
    double* cb = cache != nullptr ? cache + j : eb;
    double* cx = cache != nullptr ? cache + a.cols + j : ex;
    exps(b, mb, len, cb);
    exps(x, mx, len, cx);
    sb += lane_sum(cb, len);
    sx += lane_sum(cx, len);
  });
  const double ib = 1.0 / sb, ix = 1.0 / sx;
  double kl = 0.0;
  row_blocks(a, start, s, [&](int64_t j, const float* b, const float* x, int64_t len) {
    const double* cb = cache != nullptr ? cache + j : eb;
    const double* cx = cache != nullptr ? cache + a.cols + j : ex;
    if (cache == nullptr) {
      exps(b, mb, len, eb);
      exps(x, mx, len, ex);
    }
    for (int64_t i = 0; i < len; ++i) {
      const double p = cx[i] * ix + kSoftmaxEps, q = cb[i] * ib + kSoftmaxEps;
      eb[i] = p * log_positive(p / q);
    }
    kl += lane_sum(eb, len);
  });
  return kl;
}

// The order keys of the importance |x - b| * kl of `len` elements into `keys`.
MF_INLINE void importance_keys(const float* b, const float* x, float kl, int64_t len, uint32_t* keys) {
  for (int64_t j = 0; j < len; ++j) keys[j] = order_key(std::fabs(x[j] - b[j]) * kl);
}

// Pass 1 for rows [r0, r1): their KL into kl, the top-16-bit histogram of their keys into h.
#define MF_ARCEE_ROWS(NAME, TARGET)                                                                   \
  TARGET void NAME(const ArceeArgs& a, int64_t r0, int64_t r1, Scratch& s, double* cache, float* kl, \
                   uint32_t* h) {                                                                     \
    uint32_t* keys = reinterpret_cast<uint32_t*>(s.buf(2));                                          \
    for (int64_t row = r0; row < r1; ++row) {                                                         \
      const float k = static_cast<float>(kl_row(a, row * a.cols, s, cache));                          \
      kl[row] = k;                                                                                    \
      row_blocks(a, row * a.cols, s, [&](int64_t, const float* b, const float* x, int64_t len) {      \
        importance_keys(b, x, k, len, keys);                                                          \
        for (int64_t j = 0; j < len; ++j) h[keys[j] >> 16]++;                                         \
      });                                                                                             \
    }                                                                                                 \
  }
MF_ARCEE_ROWS(kl_and_top_rows, )
#if MF_AVX2_CLONES
MF_ARCEE_ROWS(kl_and_top_rows_avx2, MF_TARGET_AVX2)
#endif

// Sums per-thread histograms (nthreads x bins) into int64 counts.
std::vector<int64_t> merged(const std::vector<uint32_t>& part, int nthreads, size_t bins) {
  std::vector<int64_t> hist(bins, 0);
  for (int t = 0; t < nthreads; ++t) {
    for (size_t i = 0; i < bins; ++i) hist[i] += part[t * bins + i];
  }
  return hist;
}

// The bin holding the rank-k (0-based, ascending) value of a histogram, and k's rank within it.
std::pair<uint32_t, int64_t> bin_of_rank(const std::vector<int64_t>& h, size_t lo, size_t bins, int64_t k) {
  for (size_t i = 0; i < bins; ++i) {
    if (k < h[lo + i]) return {static_cast<uint32_t>(i), k};
    k -= h[lo + i];
  }
  return {static_cast<uint32_t>(bins - 1), 0};  // unreachable for k < n
}

// Pass 1: every row's KL, and the top-16-bit histogram of all the keys.
std::vector<int64_t> pass_rows(const ArceeArgs& a, int threads, float* kl) {
  const int nthreads = team_size(a.rows * a.cols, threads);
  std::vector<uint32_t> part(static_cast<size_t>(nthreads) * kBins, 0);
  auto body = &kl_and_top_rows;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) body = &kl_and_top_rows_avx2;
#endif
  const int64_t chunk = std::max<int64_t>(1, kBlock / std::max<int64_t>(a.cols, 1));
#pragma omp parallel num_threads(nthreads)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    Scratch scratch(kBuffers);
    std::vector<double> cache(a.cols <= kCacheCols ? 2 * a.cols : 0);
    double* c = cache.empty() ? nullptr : cache.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < a.rows; r0 += chunk) {
      body(a, r0, std::min(a.rows, r0 + chunk), scratch, c, kl, part.data() + tid * kBins);
    }
  }
  return merged(part, nthreads, kBins);
}

// Pass 2: the low-16-bit histograms of the keys in each of the buckets `top` (distinct).
std::vector<int64_t> pass_low(const ArceeArgs& a, const float* kl, const std::vector<uint32_t>& top, int threads) {
  const int64_t n = a.rows * a.cols;
  const int nthreads = team_size(n, threads), B = static_cast<int>(top.size());
  const size_t bins = static_cast<size_t>(B) * kBins;
  std::vector<uint32_t> part(nthreads * bins, 0);
  for_each_block_raw(n, nthreads, 3, [&](int tid, int64_t, int64_t off, int64_t len, Scratch& s) {
    const float* b = stage(a.base, off, len, s.buf(0));
    const float* x = stage(a.other, off, len, s.buf(1));
    uint32_t* keys = reinterpret_cast<uint32_t*>(s.buf(2));
    row_runs(off, len, a.cols, [&](int64_t j0, int64_t j1, int64_t row) {
      importance_keys(b + j0, x + j0, kl[row], j1 - j0, keys + j0);
    });
    uint32_t* h = part.data() + tid * bins;
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t hi = keys[j] >> 16;
      for (int q = 0; q < B; ++q) {
        if (hi == top[q]) h[q * kBins + (keys[j] & 0xFFFFu)]++;
      }
    }
  });
  return merged(part, nthreads, bins);
}

}  // namespace

void arcee_select(const Src& base, const Src& other, int64_t rows, int64_t cols, const int64_t* ranks,
                  int threads, float* kl, float* values) {
  const ArceeArgs a{base, other, rows, cols};
  const std::vector<int64_t> top = pass_rows(a, threads, kl);
  std::vector<uint32_t> buckets, bucket_of(3);
  std::vector<int64_t> within(3);
  for (int r = 0; r < 3; ++r) {
    const auto [bucket, k] = bin_of_rank(top, 0, kBins, ranks[r]);
    auto at = std::find(buckets.begin(), buckets.end(), bucket);
    bucket_of[r] = static_cast<uint32_t>(at - buckets.begin());
    if (at == buckets.end()) buckets.push_back(bucket);
    within[r] = k;
  }
  const std::vector<int64_t> low = pass_low(a, kl, buckets, threads);
  for (int r = 0; r < 3; ++r) {
    const uint32_t q = bucket_of[r];
    const uint32_t lo = bin_of_rank(low, static_cast<size_t>(q) * kBins, kBins, within[r]).first;
    values[r] = key_value((buckets[q] << 16) | lo);
  }
}

void arcee_apply(const Src& base, const Src& other, int64_t cols, const float* kl, float threshold,
                 const Dst& dst, int64_t n, int threads) {
  for_each_block_raw(n, team_size(n, threads), 3, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    const float* b = stage(base, off, len, s.buf(0));
    const float* x = stage(other, off, len, s.buf(1));
    float* r = s.buf(2);
    row_runs(off, len, cols, [&](int64_t j0, int64_t j1, int64_t row) {
      const float k = kl[row];
      for (int64_t j = j0; j < j1; ++j) {
        const float d = x[j] - b[j];
        r[j] = b[j] + (std::fabs(d) * k >= threshold ? d : 0.0f);
      }
    });
    store(dst, off, len, r);
  });
}

}  // namespace mergefast
