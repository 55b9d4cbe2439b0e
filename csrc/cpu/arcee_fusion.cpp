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

// The row sweeps' lambdas are inlined into each clone too (a lambda compiled on its own gets
// the default instruction set: the AVX2 clone would call SSE code).
#if defined(__GNUC__)
#define MF_LAMBDA_INLINE __attribute__((always_inline))
#else
#define MF_LAMBDA_INLINE
#endif

constexpr int kBins = 1 << 16;
constexpr float kSoftmaxEps = 1e-8f;
// Rows up to this many columns are staged once into a per-thread row buffer (2 x 4 bytes an
// element: 88 KiB for 11008 columns, L2-resident) for the four sweeps; longer rows restage.
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

// One row's float32 values, block by block: from the row buffer (`cache`: base then other,
// filled by the first sweep) or staged again per block (rows past kCacheCols).
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

// sum of v[0..len) into the float64 lanes acc (vectorises; the same sum on every machine).
MF_INLINE void lane_sum(const float* v, int64_t len, double* acc) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(v[j + l]);
  }
  for (; j < len; ++j) acc[j % 8] += static_cast<double>(v[j]);
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
    lane_sum(eb, len, sb);
    lane_sum(ex, len, sx);
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
    lane_sum(t, len, acc);
  });
  return lanes_total(acc);
}

// The order keys of the importance |x - b| * kl of `len` elements into `keys`.
MF_INLINE void importance_keys(const float* b, const float* x, float kl, int64_t len, uint32_t* keys) {
  for (int64_t j = 0; j < len; ++j) keys[j] = order_key(std::fabs(x[j] - b[j]) * kl);
}

// Pass 1 for rows [r0, r1): their KL into kl, the top-16-bit histogram of their keys into h.
#define MF_ARCEE_ROWS(NAME, TARGET)                                                                   \
  TARGET void NAME(const ArceeArgs& a, int64_t r0, int64_t r1, Scratch& s, float* cache, float* kl,  \
                   uint32_t* h) {                                                                     \
    uint32_t* keys = reinterpret_cast<uint32_t*>(s.buf(2));                                          \
    for (int64_t r = r0; r < r1; ++r) {                                                               \
      RowSource row{a, r * a.cols, s, cache};                                                         \
      const float k = static_cast<float>(kl_row(row));                                                \
      kl[r] = k;                                                                                      \
      row.blocks(false, [&](int64_t, const float* b, const float* x, int64_t len) MF_LAMBDA_INLINE {                  \
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
    Scratch scratch(6);
    std::vector<float> cache(a.cols <= kCacheCols ? 4 * a.cols : 0);
    float* c = cache.empty() ? nullptr : cache.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < a.rows; r0 += chunk) {
      body(a, r0, std::min(a.rows, r0 + chunk), scratch, c, kl, part.data() + tid * kBins);
    }
  }
  return merged(part, nthreads, kBins);
}

// The codes of the keys of a block for pass 2: q * kBins + the low 16 bits for a key in bucket
// top[q] (top: 3 entries, unused ones ~0u), kMissCode for the others. Vectorises (the AVX2
// clone: 8 lanes), leaving pass 2 no per-element branch.
constexpr uint32_t kMissCode = 0xFFFFFFFFu;
#define MF_ARCEE_CODES(NAME, TARGET)                                                                  \
  TARGET void NAME(const ArceeArgs& a, const float* kl, const uint32_t* top, int64_t off, int64_t len, \
                   Scratch& s, uint32_t* codes) {                                                     \
    const float* b = stage(a.base, off, len, s.buf(0));                                              \
    const float* x = stage(a.other, off, len, s.buf(1));                                             \
    row_runs(off, len, a.cols, [&](int64_t j0, int64_t j1, int64_t row) MF_LAMBDA_INLINE {            \
      importance_keys(b + j0, x + j0, kl[row], j1 - j0, codes + j0);                                 \
    });                                                                                               \
    for (int64_t j = 0; j < len; ++j) {                                                               \
      const uint32_t hi = codes[j] >> 16, lo = codes[j] & 0xFFFFu;                                    \
      codes[j] = hi == top[0] ? lo : hi == top[1] ? kBins + lo : hi == top[2] ? 2 * kBins + lo : kMissCode; \
    }                                                                                                 \
  }
MF_ARCEE_CODES(block_codes, )
#if MF_AVX2_CLONES
MF_ARCEE_CODES(block_codes_avx2, MF_TARGET_AVX2)
#endif

// Copies the codes other than kMissCode to hits (in order), without a branch (the buckets hold
// a few % of the keys); returns their count.
MF_INLINE int64_t pack_hits_scalar(const uint32_t* codes, int64_t j, int64_t len, uint32_t* hits, int64_t count) {
  for (; j < len; ++j) {
    hits[count] = codes[j];
    count += codes[j] != kMissCode;
  }
  return count;
}

#if MF_AVX2_CLONES
// pack_hits_scalar with AVX2: 8 codes per compare, movemask and permute (kPack). Writes up to
// 7 codes past the count.
MF_TARGET_AVX2 int64_t pack_hits_avx2(const uint32_t* codes, int64_t len, uint32_t* hits) {
  const __m256i miss = _mm256_set1_epi32(static_cast<int32_t>(kMissCode));
  int64_t count = 0, j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + j));
    const int mask = ~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(c, miss))) & 0xFF;
    const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hits + count), _mm256_permutevar8x32_epi32(c, lanes));
    count += __builtin_popcount(static_cast<unsigned>(mask));
  }
  return pack_hits_scalar(codes, j, len, hits, count);
}
#endif

int64_t pack_hits(const uint32_t* codes, int64_t len, uint32_t* hits) {
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) return pack_hits_avx2(codes, len, hits);
#endif
  return pack_hits_scalar(codes, 0, len, hits, 0);
}

// Pass 2: the low-16-bit histograms of the keys in each of the buckets `top` (distinct).
std::vector<int64_t> pass_low(const ArceeArgs& a, const float* kl, const std::vector<uint32_t>& top, int threads) {
  const int64_t n = a.rows * a.cols;
  const int nthreads = team_size(n, threads), B = static_cast<int>(top.size());
  const size_t bins = static_cast<size_t>(B) * kBins;
  std::vector<uint32_t> part(nthreads * bins, 0);
  uint32_t top3[3] = {~0u, ~0u, ~0u};
  std::copy(top.begin(), top.end(), top3);
  auto codes_of = &block_codes;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) codes_of = &block_codes_avx2;
#endif
  for_each_block_raw(n, nthreads, 5, [&](int tid, int64_t, int64_t off, int64_t len, Scratch& s) {
    uint32_t* codes = reinterpret_cast<uint32_t*>(s.buf(2));
    uint32_t* hits = reinterpret_cast<uint32_t*>(s.buf(3));  // buffer 4: pack_hits' overrun
    codes_of(a, kl, top3, off, len, s, codes);
    const int64_t count = pack_hits(codes, len, hits);
    uint32_t* h = part.data() + tid * bins;
    for (int64_t i = 0; i < count; ++i) h[hits[i]]++;
  });
  return merged(part, nthreads, bins);
}

// out = b + (|x - b| * kl[row] >= threshold ? x - b : 0) for the block [off, off + len).
#define MF_ARCEE_APPLY(NAME, TARGET)                                                                  \
  TARGET void NAME(const Src& base, const Src& other, int64_t cols, const float* kl, float threshold, \
                   const Dst& dst, int64_t off, int64_t len, Scratch& s) {                            \
    const float* b = stage(base, off, len, s.buf(0));                                                \
    const float* x = stage(other, off, len, s.buf(1));                                               \
    float* r = s.buf(2);                                                                              \
    row_runs(off, len, cols, [&](int64_t j0, int64_t j1, int64_t row) MF_LAMBDA_INLINE {              \
      const float k = kl[row];                                                                        \
      for (int64_t j = j0; j < j1; ++j) {                                                             \
        const float d = x[j] - b[j];                                                                  \
        r[j] = b[j] + (std::fabs(d) * k >= threshold ? d : 0.0f);                                     \
      }                                                                                               \
    });                                                                                               \
    store(dst, off, len, r);                                                                          \
  }
MF_ARCEE_APPLY(apply_block, )
#if MF_AVX2_CLONES
MF_ARCEE_APPLY(apply_block_avx2, MF_TARGET_AVX2)
#endif

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
  auto body = &apply_block;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) body = &apply_block_avx2;
#endif
  for_each_block_raw(n, team_size(n, threads), 3, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    body(base, other, cols, kl, threshold, dst, off, len, s);
  });
}

}  // namespace mergefast
