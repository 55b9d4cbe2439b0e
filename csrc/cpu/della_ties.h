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
  std::vector<uint32_t> bucket, hist, odd;
  std::vector<uint64_t> pairs, sorted;
  explicit TieScratch(int64_t cols)
      : bucket(cols), hist(kTieBins + 1), odd(cols + 8), pairs(cols), sorted(cols) {}
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

// The indices j in [from, cols) of v[j] == value into out (ascending); their count.
MF_INLINE uint32_t indices_of(const uint32_t* v, uint32_t value, int64_t from, int64_t cols, uint32_t* out) {
  uint32_t m = 0;
  for (int64_t j = from; j < cols; ++j) {
    if (v[j] == value) out[m++] = static_cast<uint32_t>(j);
  }
  return m;
}

#if MF_AVX2_CLONES
// indices_of, eight at a time: a compare, and where a lane matched, the matching indices
// packed by one permute (common.h, kPack). out has room for 8 past the count.
MF_TARGET_AVX2 inline uint32_t indices_of_avx2(const uint32_t* v, uint32_t value, int64_t cols, uint32_t* out) {
  const __m256i want = _mm256_set1_epi32(static_cast<int>(value));
  const __m256i eight = _mm256_set1_epi32(8);
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t m = 0;
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + j));
    const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, want)));
    if (mask) {
      const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(idx, lanes));
      m += static_cast<uint32_t>(__builtin_popcount(static_cast<unsigned>(mask)));
    }
    idx = _mm256_add_epi32(idx, eight);
  }
  return m + indices_of(v, value, j, cols, out + m);
}
#endif

// The indices j of v[j] == value (ascending) into out (room for cols + 8); their count.
template <bool Avx2>
MF_INLINE uint32_t matching_indices(const uint32_t* v, uint32_t value, int64_t cols, uint32_t* out) {
#if MF_AVX2_CLONES
  if constexpr (Avx2) return indices_of_avx2(v, value, cols, out);
#endif
  return indices_of(v, value, 0, cols, out);
}

// Pairs key << 32 | index, in index order, sorted by key, stably: (key, index) order. Past
// kOddSortMin pairs, a least-significant-digit radix sort over the key's bytes (a byte every key
// shares is skipped; tmp holds m pairs): float16 deltas leave ~9% of a 1024-wide row odd, ~90
// keys, and std::sort of them took 1.5x the whole rank loop (perf, 2-vCPU AMD EPYC VM). On that
// VM the two sorts cost the same at 48 pairs (0.85 us), the radix one 2.2x less at 96.
constexpr uint32_t kOddSortMin = 48;

MF_INLINE void sort_pairs(uint64_t* p, uint32_t m, uint64_t* tmp) {
  if (m <= kOddSortMin) return std::sort(p, p + m);
  uint32_t hist[4][256] = {};
  for (uint32_t t = 0; t < m; ++t) {
    const uint32_t k = static_cast<uint32_t>(p[t] >> 32);
    for (int q = 0; q < 4; ++q) ++hist[q][(k >> (8 * q)) & 255u];
  }
  uint64_t *src = p, *dst = tmp;
  for (int q = 0; q < 4; ++q) {
    uint32_t* h = hist[q];
    if (h[(p[0] >> (32 + 8 * q)) & 255u] == m) continue;
    uint32_t sum = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (uint32_t t = 0; t < m; ++t) dst[h[(src[t] >> (32 + 8 * q)) & 255u]++] = src[t];
    std::swap(src, dst);
  }
  if (src != p) std::memcpy(p, src, m * sizeof(uint64_t));
}

// The odd keys' indices: sorted (key, index) into s.pairs, each counted in its bucket; their count.
template <bool Avx2>
MF_INLINE uint32_t odd_pairs(const uint32_t* keys, int64_t cols, uint32_t lo, TieScratch& s) {
  uint32_t* oj = s.odd.data();
  const uint32_t m = matching_indices<Avx2>(s.bucket.data(), kTieOdd, cols, oj);
  uint64_t* p = s.pairs.data();
  for (uint32_t t = 0; t < m; ++t) {
    const uint32_t k = keys[oj[t]];
    p[t] = (uint64_t(k) << 32) | oj[t];
    ++s.hist[tie_bucket(k, lo)];
  }
  sort_pairs(p, m, s.sorted.data());
  return m;
}

// h[b] = the count of the buckets before b, for every nonempty bucket b < nb; h is zero from
// nb to the next multiple of 8 (nb <= kTieBins). An empty bucket's entry is never read (no key
// maps to it), so the sums visit only the nonempty buckets, found through a bitmap (one bit per
// bucket, built eight buckets at a time without a branch): a 1024-wide row fills ~260 of
// ~5000 tie buckets, and summing all of them took a third of DELLA's masks pass on such rows
// (perf, 2-vCPU AMD EPYC VM); skipping empty groups of eight by a branch instead was 5-10%
// slower than no skip. The radix sort's digits (della_rank.h) use it too.
constexpr uint32_t kTieWords = kTieBins / 64;

// Bit t of word q: h[64 q + t] != 0, for the buckets below groups * 8; the count of words.
MF_INLINE uint32_t nonempty_buckets(const uint32_t* h, uint32_t groups, uint64_t* nonempty) {
  const uint32_t words = (groups + 7) / 8;
  for (uint32_t q = 0; q < words; ++q) {
    const uint32_t n = 8 * std::min<uint32_t>(8, groups - 8 * q);
    uint64_t bits = 0;
    for (uint32_t t = 0; t < n; ++t) bits |= static_cast<uint64_t>(h[64 * q + t] != 0) << t;
    nonempty[q] = bits;
  }
  return words;
}

#if MF_AVX2_CLONES
// nonempty_buckets, eight buckets per compare.
MF_TARGET_AVX2 inline uint32_t nonempty_buckets_avx2(const uint32_t* h, uint32_t groups, uint64_t* nonempty) {
  const uint32_t words = (groups + 7) / 8;
  const __m256i zero = _mm256_setzero_si256();
  for (uint32_t q = 0; q < words; ++q) {
    const uint32_t n = std::min<uint32_t>(8, groups - 8 * q);
    uint64_t bits = 0;
    for (uint32_t t = 0; t < n; ++t) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + 64 * q + 8 * t));
      const int empty = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero)));
      bits |= static_cast<uint64_t>(~empty & 0xFF) << (8 * t);
    }
    nonempty[q] = bits;
  }
  return words;
}
#endif

template <bool Avx2>
MF_INLINE void prefix_counts(uint32_t* h, uint32_t nb) {
  uint64_t nonempty[kTieWords];
  uint32_t words;
#if MF_AVX2_CLONES
  if constexpr (Avx2) words = nonempty_buckets_avx2(h, (nb + 7) / 8, nonempty);
#endif
  if constexpr (!Avx2) words = nonempty_buckets(h, (nb + 7) / 8, nonempty);
  uint32_t sum = 0;
  for (uint32_t q = 0; q < words; ++q) {
    for (uint64_t bits = nonempty[q]; bits; bits &= bits - 1) {
      uint32_t* e = h + 64 * q + static_cast<uint32_t>(__builtin_ctzll(bits));
      const uint32_t c = *e;
      *e = sum;
      sum += c;
    }
  }
}

// rank[j] of a row whose keys (mag_key) are given, kmax the largest and kmin the least nonzero
// (0: none); false (rank untouched) where more than 1/8 of the row is odd.
template <bool Avx2>
MF_INLINE bool tie_ranks(const uint32_t* keys, int64_t cols, uint32_t kmax, uint32_t kmin, TieScratch& s,
                         uint32_t* rank) {
  const uint32_t qmax = kmax >> kTieShift;
  const uint32_t lo = std::max({kmin >> kTieShift, qmax > kTieBins - 2 ? qmax - (kTieBins - 2) : 1u, 1u});
  uint32_t* bucket = s.bucket.data();
  uint32_t nodd = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t odd = tie_odd(keys[j], lo);
    bucket[j] = odd ? kTieOdd : tie_bucket(keys[j], lo);
    nodd += odd;
  }
  if (nodd > cols / 8) return false;
  uint32_t* h = s.hist.data();
  const uint32_t nb = tie_bucket(kmax, lo) + 1;
  std::memset(h, 0, (nb + 7) / 8 * 8 * sizeof(uint32_t));  // whole groups (prefix_counts)
  for (int64_t j = 0; j < cols; ++j) ++h[bucket[j]];
  const uint32_t m = nodd ? odd_pairs<Avx2>(keys, cols, lo, s) : 0;
  prefix_counts<Avx2>(h, nb);
  // plain keys in index order; the odd ones count in kTieOdd (junk), ranked below
  for (int64_t j = 0; j < cols; ++j) rank[j] = h[bucket[j]]++;
  const uint64_t* p = s.pairs.data();
  for (uint32_t t = 0; t < m; ++t) rank[static_cast<uint32_t>(p[t])] = h[tie_bucket(uint32_t(p[t] >> 32), lo)]++;
  return true;
}

}  // namespace mergefast
