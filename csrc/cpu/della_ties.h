// DELLA's row ranks by tie counting (della_rank.h has the method and the measurements): one
// bucket per distinct key for most elements of a bf16 row, ranks = the bucket's prefix count
// plus the equal keys before the element; the odd keys (below) sorted, after their bucket's
// plain key.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace mergefast {

// Buckets are key >> kTieShift: 14 keeps a float's exponent and 9 explicit significand bits,
// so a key of up to 10 significant bits is plain (a difference of two bf16, 8 bits each, up to
// two binades apart). kTieBins buckets (32 KiB of counts: L1) cover 16 binades below the row's
// largest key (512 buckets each). Measured on a 2-vCPU AMD EPYC VM, 7B layer bf16 deltas:
// shift 16 / 15 / 14 / 13 gave 3.6 / 3.1 / 2.4-2.8 / 3.1-3.7 ns per element (more odd keys
// above 14, longer prefix sums below); 2048 or 3072 buckets at shift 14 leave too many small
// keys below the window (1.5-2x slower).
constexpr int kTieShift = 14;
constexpr uint32_t kTieLow = (1u << kTieShift) - 1;
constexpr uint32_t kTieBins = 8192;
constexpr uint32_t kTieOdd = kTieBins;  // the bucket of every odd key in the counting passes

// One thread's buffers for rows of up to `cols` elements.
struct TieScratch {
  std::vector<uint32_t> bucket, hist, odd, nonzero;
  std::vector<uint64_t> pairs;
  explicit TieScratch(int64_t cols)
      : bucket(cols), hist(kTieBins + 1), odd(cols + 8), nonzero(cols), pairs(cols) {}
};

// Bucket 0 holds key 0 (a plain key) and the keys below the window (odd); bucket b >= 1 holds
// (lo + b - 1) << kTieShift (plain) and the keys above it that share its top bits (odd).
MF_INLINE uint32_t tie_bucket(uint32_t k, uint32_t lo) {
  const uint32_t q = k >> kTieShift;
  return q >= lo ? q - lo + 1 : 0u;
}

MF_INLINE uint32_t tie_odd(uint32_t k, uint32_t lo) {
  return k < (lo << kTieShift) ? k != 0 : (k & kTieLow) != 0;
}

// The indices j in [from, cols) of bucket[j] == kTieOdd into out (ascending); their count.
MF_INLINE uint32_t odd_indices(const uint32_t* bucket, int64_t from, int64_t cols, uint32_t* out) {
  uint32_t m = 0;
  for (int64_t j = from; j < cols; ++j) {
    if (bucket[j] == kTieOdd) out[m++] = static_cast<uint32_t>(j);
  }
  return m;
}

#if MF_AVX2_CLONES
// odd_indices, eight at a time: a compare, and where a lane matched, the matching indices
// packed by one permute (common.h, kPack). out has room for 8 past the count.
MF_TARGET_AVX2 inline uint32_t odd_indices_avx2(const uint32_t* bucket, int64_t cols, uint32_t* out) {
  const __m256i odd = _mm256_set1_epi32(static_cast<int>(kTieOdd));
  const __m256i eight = _mm256_set1_epi32(8);
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t m = 0;
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bucket + j));
    const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, odd)));
    if (mask) {
      const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(idx, lanes));
      m += static_cast<uint32_t>(__builtin_popcount(static_cast<unsigned>(mask)));
    }
    idx = _mm256_add_epi32(idx, eight);
  }
  return m + odd_indices(bucket, j, cols, out + m);
}
#endif

// The odd keys' indices: sorted (key, index) into s.pairs, each counted in its bucket; their count.
template <bool Avx2>
MF_INLINE uint32_t odd_pairs(const uint32_t* keys, int64_t cols, uint32_t lo, TieScratch& s) {
  uint32_t* oj = s.odd.data();
  uint32_t m;
#if MF_AVX2_CLONES
  if constexpr (Avx2) m = odd_indices_avx2(s.bucket.data(), cols, oj);
#endif
  if constexpr (!Avx2) m = odd_indices(s.bucket.data(), 0, cols, oj);
  uint64_t* p = s.pairs.data();
  for (uint32_t t = 0; t < m; ++t) {
    const uint32_t k = keys[oj[t]];
    p[t] = (uint64_t(k) << 32) | oj[t];
    ++s.hist[tie_bucket(k, lo)];
  }
  std::sort(p, p + m);
  return m;
}

// h[b] = the count of buckets before b, for every nonempty b < nb (an empty bucket's entry is
// never read, so runs of eight empty ones are skipped: a row has ~600 distinct keys in up to
// 8192 buckets).
MF_INLINE void prefix_counts(uint32_t* h, uint32_t nb) {
  uint32_t sum = 0, b = 0;
  for (; b + 8 <= nb; b += 8) {
    uint64_t w[4];
    std::memcpy(w, h + b, sizeof(w));
    if ((w[0] | w[1] | w[2] | w[3]) == 0) continue;
    for (uint32_t e = b; e < b + 8; ++e) {
      const uint32_t c = h[e];
      h[e] = sum;
      sum += c;
    }
  }
  for (; b < nb; ++b) {
    const uint32_t c = h[b];
    h[b] = sum;
    sum += c;
  }
}

// The m sorted odd keys (odd_pairs) take the ranks after their bucket's plain key.
MF_INLINE void odd_ranks(TieScratch& s, uint32_t m, uint32_t lo, uint32_t* rank) {
  uint32_t* h = s.hist.data();
  const uint64_t* p = s.pairs.data();
  for (uint32_t t = 0; t < m; ++t) rank[static_cast<uint32_t>(p[t])] = h[tie_bucket(uint32_t(p[t] >> 32), lo)]++;
}

// Rows where more than 1 / kTieZeroShare of the keys are 0 (zero deltas: weights a fine-tune
// left unchanged) count and rank only their other keys through memory: a run of zeros would
// chain increments of one counter (bucket 0's). The zeros take ranks 0, 1, ... in index order
// (key 0 is bucket 0's plain key, the least key), counted in a register. Measured on a 2-vCPU
// AMD EPYC VM (shared), one 7B layer bf16, base + 3, the whole DELLA call, best of 5, old and
// new alternated: 70% zero deltas 445-463 -> 352-381 ms, 60% 463-469 -> 366-372 ms; at 40%
// the compaction did not pay (no gain beyond the noise), hence a half; 2% unchanged.
constexpr uint32_t kTieZeroShare = 2;

// tie_ranks' counting and ranking for such a row; bucket[] and the bucket window lo are set,
// h[0, nb) zeroed.
template <bool Avx2>
MF_INLINE void zero_heavy_ranks(const uint32_t* keys, int64_t cols, uint32_t nzero, uint32_t nb, uint32_t lo,
                                uint32_t nodd, TieScratch& s, uint32_t* rank) {
  const uint32_t* bucket = s.bucket.data();
  uint32_t* h = s.hist.data();
  uint32_t* nz = s.nonzero.data();
  uint32_t n = 0, zc = 0;
  for (int64_t j = 0; j < cols; ++j) {  // the nonzero keys' indices; every element's zero rank
    const uint32_t zero = keys[j] == 0;
    nz[n] = static_cast<uint32_t>(j);
    n += zero ^ 1u;
    rank[j] = zc;
    zc += zero;
  }
  for (uint32_t t = 0; t < n; ++t) ++h[bucket[nz[t]]];
  const uint32_t m = nodd ? odd_pairs<Avx2>(keys, cols, lo, s) : 0;
  h[0] += nzero;
  prefix_counts(h, nb);
  h[0] = nzero;  // bucket 0's odd keys come after the zeros
  for (uint32_t t = 0; t < n; ++t) rank[nz[t]] = h[bucket[nz[t]]]++;  // odd ones: junk, set below
  odd_ranks(s, m, lo, rank);
}

// rank[j] of a row whose keys (mag_key) are given, kmax the largest and kmin the least nonzero
// (0: none); false (rank untouched) where more than 1/8 of the row is odd.
template <bool Avx2>
MF_INLINE bool tie_ranks(const uint32_t* keys, int64_t cols, uint32_t kmax, uint32_t kmin, TieScratch& s,
                         uint32_t* rank) {
  const uint32_t qmax = kmax >> kTieShift;
  const uint32_t lo = std::max({kmin >> kTieShift, qmax > kTieBins - 2 ? qmax - (kTieBins - 2) : 1u, 1u});
  uint32_t* bucket = s.bucket.data();
  uint32_t nodd = 0, nzero = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t odd = tie_odd(keys[j], lo);
    bucket[j] = odd ? kTieOdd : tie_bucket(keys[j], lo);
    nodd += odd;
    nzero += keys[j] == 0;
  }
  if (nodd > cols / 8) return false;
  uint32_t* h = s.hist.data();
  const uint32_t nb = tie_bucket(kmax, lo) + 1;
  std::memset(h, 0, nb * sizeof(uint32_t));
  if (nzero > cols / kTieZeroShare) {
    zero_heavy_ranks<Avx2>(keys, cols, nzero, nb, lo, nodd, s, rank);
    return true;
  }
  for (int64_t j = 0; j < cols; ++j) ++h[bucket[j]];
  const uint32_t m = nodd ? odd_pairs<Avx2>(keys, cols, lo, s) : 0;
  prefix_counts(h, nb);
  // plain keys in index order; the odd ones count in kTieOdd (junk), ranked below
  for (int64_t j = 0; j < cols; ++j) rank[j] = h[bucket[j]]++;
  odd_ranks(s, m, lo, rank);
  return true;
}

}  // namespace mergefast
