// DELLA's keep decisions from rank bounds (della.cpp), for rows of kSortMin elements or more
// (takes_bounds: bf16 rows up to kBoundMaxCols). An element is kept where its draw u < p(rank),
// p(r) = pmin + (r / (cols - 1)) * span in float32 (the reference's operations). Each of those
// operations rounds monotonically, so p moves one way as r grows (down where epsilon < 0): an
// element whose rank lies in [lo, hi] is kept where u < min(p(lo), p(hi)) and dropped where
// u >= max(p(lo), p(hi)), whatever its exact rank. So per row:
//   1. a histogram of the keys (mag_key) in buckets (a monotone map: bucket 0 the zeros,
//      bucket 1 the keys below the window, then the keys' top bits) and its prefix counts: each
//      bucket's rank range, and p's min and max over it (p at its two edges);
//   2. per element, u against its bucket's min and max (a draw outside p's range over its
//      bucket's group of 32 needs no bucket: decide_avx2): kept, dropped, or open (u within the bucket's p
//      range: a bucket of s elements leaves ~s * 2 |epsilon| / cols of them open, ~5 of a
//      1024-wide row of bf16 deltas at epsilon 0.15: its ties make the buckets large);
//      a zero delta is dropped, never open: kept or not, it adds nothing to the output, the
//      sign election or the norms. Rows of a frozen or sparse fine-tune no longer leave their
//      zeros open (one large bucket: the full ranks' fallback): with bucket_bounds' four
//      histograms, ab_libs 16384 x 1024 bf16, half the deltas zero 0.44x the time (232 -> 103
//      ms), all zero 0.42x (229 -> 97 ms), 2% zero 0.99x (dense rows: 110 ms);
//   3. each open element's exact rank (smaller keys, then equal keys before it): up to
//      kScanMax open elements by counting over the row's keys (compare-and-count loops in L1;
//      a bucket's least key counts only its equal keys before it: open_rank), more through
//      the members of their buckets, listed by one counting scatter; where those members
//      exceed kMemberBudget * cols (few distinct keys: zeros, a grid of values), every rank
//      from della_rank.h, so the worst case is that path's.
// No per-row sort, no tie counting over every element, no prefix sums over thousands of
// buckets. Measured on a 2-vCPU Intel Xeon VM (AVX-512), base + 3 bf16, deltas N(0, 2e-3) on
// N(0, 2e-2), 2% unchanged, DELLA with rescale, the whole kernel call's time with the bounds
// over that with the full ranks (benchmarks/ab_libs.py): 16384 x 1024 0.80-0.83x, 5958 x 2816
// 0.955x. Long rows' open elements grow with the row (each costing a pass over it), while
// della_rank.h's tie counting spreads its per-row cost (the bucket window's prefix sums) over
// more elements: so long rows of bf16 deltas keep the full ranks (kBoundMaxCols). Deltas of
// float16 or float32 inputs have too many distinct keys for the tie counting (its radix-sort
// fallback ranks them), and every row length takes the bounds.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "della_rank.h"
#include "select/rules.h"

namespace mergefast {

// key >> 18: the exponent and 5 significand bits, 32 buckets a binade; 254 of the 256 buckets
// cover ~8 binades below the row's largest key (the other two: zeros, and the keys below). 64
// a binade over 8 or 16 binades, or 16 over 12, were no faster (within the VM's noise) on
// 1024-wide rows.
constexpr int kBoundShift = 18;
constexpr uint32_t kBoundBins = 256;
// At most this many open elements are resolved by a scan of the row each (open_rank),
// more through their buckets' members. Whole DELLA calls (ab_libs, bf16, 2-vCPU AMD EPYC VM,
// same bits) against 16: 2048 x 4096 0.95x, 1024 x 6144 0.965x, 2816 x 1024 1.00x; 64 no
// faster than 32.
constexpr uint32_t kScanMax = 32;
// decide_avx2 first tells draws from the bounds of their bucket's group: 8 groups of 32
// buckets (one binade each), whose bounds one permute looks up for eight elements.
constexpr int kGroupShift = 5;
constexpr int kGroups = kBoundBins >> kGroupShift;
// The longest row of bf16 deltas (base and model bf16) decided by rank bounds. DELLA's masks
// pass alone, one thread, bounds over full ranks, 2-vCPU Intel Xeon VM (AVX-512): bf16 rows of
// 3584 0.80x, 4096 0.96x, 6144 0.93x, 7168 1.05x, 8192 1.03x, 11008 1.07x, 14336 1.10x; float16
// rows of 4096 / 7168 / 11008 0.60x / 0.75x / 0.70x, float32 0.48x / 0.52x / 0.53x.
constexpr int64_t kBoundMaxCols = 6144;
// The members the open elements may count, in row lengths: past it the row takes the full ranks
// (a few passes over the row). Not tuned: rows this tied (zeros, a grid) are rare in deltas.
constexpr uint64_t kMemberBudget = 8;

// One model's keep rule: p(r) = pmin + (r / denom) * span.
struct DellaRule {
  float pmin, denom, span;

  // The keep probability of rank r (the reference's float32 operations, in its order).
  MF_INLINE float p(uint32_t r) const { return pmin + (static_cast<float>(static_cast<int32_t>(r)) / denom) * span; }

  // All ones where the draw u keeps an element of rank r (u < p(r)), else 0.
  MF_INLINE uint32_t keep_mask(float u, uint32_t r) const { return 0u - static_cast<uint32_t>(u < p(r)); }
};

// Whether a row of `cols` elements takes the rank bounds (else the full ranks, della_rank.h);
// bf16_deltas: base and model both bf16 (deltas of few significant bits, many ties).
MF_INLINE bool takes_bounds(int64_t cols, bool bf16_deltas) {
  return cols >= kSortMin && (cols <= kBoundMaxCols || !bf16_deltas);
}

// One thread's buffers for rows of up to `cols` elements; the rank bounds' row-sized ones only
// where some row takes them (`bounds`: else della.cpp keeps the full ranks in its tile buffer,
// and no second row-sized rank array is made).
struct BoundScratch {
  std::vector<uint32_t> keys, undecided, open, rank, mkey, midx;
  std::vector<uint16_t> bucket;
  uint32_t start[kBoundBins + 8], pos[kBoundBins];
  uint32_t sub[4][kBoundBins + 8];  // bucket_bounds' four interleaved histograms
  float keep_below[kBoundBins], open_below[kBoundBins], p_edge[kBoundBins + 8];
  // Over each group of buckets (bucket >> kGroupShift; the zeros excepted): every draw below
  // group_keep keeps its element, every draw at or above group_open drops it.
  alignas(32) float group_keep[kGroups], group_open[kGroups];
  uint32_t nb = 0;  // the row's buckets
  RankScratch rs;
  BoundScratch(int64_t cols, bool bounds)
      : keys(bounds ? cols : 0), undecided(keys.size() + 8), open(keys.size()), rank(keys.size()), mkey(keys.size()),
        midx(keys.size()), bucket(keys.size()), rs(cols) {}
};

// The first rank of each of nb buckets and of the next (s.start), and each bucket's thresholds
// for its elements' draws: kept below min(p(first), p(next first)), open below the max; bucket 0
// (the zeros) neither. The row's elements already bucketed.
MF_INLINE void bucket_bounds(const uint16_t* bucket, int64_t cols, uint32_t nb, const DellaRule& r,
                             BoundScratch& s) {
  // Element j counts in histogram j % 4: a run of one bucket (a row's zeros, a frozen row)
  // waits on one counter's store every fourth element, not every one. ab_libs 16384 x 1024
  // bf16 against one histogram: all zero 0.71x the time, half zero 0.86x, 2% zero 1.00x.
  for (auto& h : s.sub) std::memset(h, 0, (nb + 1) * sizeof(uint32_t));
  int64_t j = 0;
  for (; j + 4 <= cols; j += 4) {
    for (int q = 0; q < 4; ++q) ++s.sub[q][bucket[j + q] + 1];
  }
  for (; j < cols; ++j) ++s.sub[0][bucket[j] + 1];
  uint32_t* start = s.start;
  uint32_t sum = 0;  // in a register: start[b] += start[b - 1] waits on each store
  for (uint32_t b = 0; b <= nb; ++b) start[b] = sum += s.sub[0][b] + s.sub[1][b] + s.sub[2][b] + s.sub[3][b];
  // p at every edge in a loop of its own, which vectorises (eight divisions at a time): a
  // scalar division per bucket took a quarter of bound_decisions' time on 1024-wide rows (256
  // buckets for 1024 elements); whole DELLA calls on 16384 x 1024 bf16 took 0.94x the time.
  float* p_edge = s.p_edge;
  for (uint32_t b = 0; b <= nb; ++b) p_edge[b] = r.p(start[b]);
  for (uint32_t b = 0; b < nb; ++b) {
    s.keep_below[b] = std::min(p_edge[b], p_edge[b + 1]);
    s.open_below[b] = std::max(p_edge[b], p_edge[b + 1]);
  }
  s.keep_below[0] = s.open_below[0] = -1.0f;  // every draw u >= 0
  // p is monotone in the rank: a group's extremes are at the ends of its nonzero buckets
  for (int g = 0; g < kGroups; ++g) {
    const uint32_t lo = std::max<uint32_t>(1, g << kGroupShift), hi = std::min<uint32_t>(nb, (g + 1) << kGroupShift);
    s.group_keep[g] = lo < hi ? std::min(p_edge[lo], p_edge[hi]) : -1.0f;  // no bucket: no element
    s.group_open[g] = lo < hi ? std::max(p_edge[lo], p_edge[hi]) : -1.0f;
  }
}

// Keys of buckets from 2 on (one key >> kBoundShift each) with none of these bits are their
// bucket's least key.
constexpr uint32_t kBoundLow = (1u << kBoundShift) - 1;

// The exact rank of element j among the row's keys: smaller keys, then equal keys before j.
MF_INLINE uint32_t exact_rank(const uint32_t* keys, int64_t cols, int64_t j) {
  const uint32_t kj = keys[j];
  uint32_t r = 0;
  for (int64_t t = 0; t < j; ++t) r += keys[t] <= kj;
  for (int64_t t = j + 1; t < cols; ++t) r += keys[t] < kj;
  return r;
}

// How many of keys[0, j) equal k.
MF_INLINE uint32_t equal_before(const uint32_t* keys, int64_t j, uint32_t k) {
  uint32_t r = 0;
  for (int64_t t = 0; t < j; ++t) r += keys[t] == k;
  return r;
}

#if MF_AVX2_CLONES
// All ones in the lanes of keys[0, 8) below b (Equal: equal to it).
template <bool Equal>
MF_TARGET_AVX2 inline __m256i key_hits_avx2(const uint32_t* keys, __m256i b) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys));
  return Equal ? _mm256_cmpeq_epi32(v, b) : _mm256_cmpgt_epi32(b, v);
}

// How many of keys[from, to) lie below `bound` (Equal: equal it), 16 a step: keys are below
// 2^31 (mag_key), so signed compares against a broadcast bound (one vpcmpgtd with its load; the
// unsigned compare the compiler makes of exact_rank costs a bias or a min each), two counters
// in flight.
template <bool Equal>
MF_TARGET_AVX2 inline uint32_t count_keys_avx2(const uint32_t* keys, int64_t from, int64_t to, int32_t bound) {
  const __m256i b = _mm256_set1_epi32(bound);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0;
  int64_t t = from;
  for (; t + 16 <= to; t += 16) {
    c0 = _mm256_sub_epi32(c0, key_hits_avx2<Equal>(keys + t, b));
    c1 = _mm256_sub_epi32(c1, key_hits_avx2<Equal>(keys + t + 8, b));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi32(c0, c1));
  uint32_t r = 0;
  for (uint32_t v : lanes) r += v;
  for (; t < to; ++t) r += Equal ? static_cast<int32_t>(keys[t]) == bound : static_cast<int32_t>(keys[t]) < bound;
  return r;
}

// exact_rank: keys before j at or below keys[j] (below keys[j] + 1: no overflow, keys < 2^31),
// keys after j below it. Whole DELLA calls against exact_rank's loops (ab_libs, bf16, 2-vCPU
// AMD EPYC VM, same bits): 2816 x 1024 0.96x, 2048 x 4096 0.87x.
MF_TARGET_AVX2 inline uint32_t exact_rank_avx2(const uint32_t* keys, int64_t cols, int64_t j) {
  const int32_t kj = static_cast<int32_t>(keys[j]);
  return count_keys_avx2<false>(keys, 0, j, kj + 1) + count_keys_avx2<false>(keys, j + 1, cols, kj);
}
#endif

// The exact rank of the open element j. Where its key is its bucket's least (kBoundLow), that
// is the bucket's first rank plus its equal keys before j: one count over keys[0, j) instead of
// two over the row. ~92 % of the open elements of the 0.3B family's bf16 deltas (few significant
// bits: most buckets hold one key); its DELLA jobs (benchmarks/jobs.py, same bits, 2-vCPU Intel
// Xeon VM) 0.96x the time on one thread (48 MLP jobs), 0.95-0.98x on two (all 147).
template <bool Avx2>
MF_INLINE uint32_t open_rank(const uint32_t* keys, const uint16_t* bucket, const uint32_t* start, int64_t cols,
                             int64_t j) {
  const uint32_t k = keys[j];
  const bool least = bucket[j] >= 2 && (k & kBoundLow) == 0;
#if MF_AVX2_CLONES
  if constexpr (Avx2) {
    if (least) return start[bucket[j]] + count_keys_avx2<true>(keys, 0, j, static_cast<int32_t>(k));
    return exact_rank_avx2(keys, cols, j);
  }
#endif
  return least ? start[bucket[j]] + equal_before(keys, j, k) : exact_rank(keys, cols, j);
}

// The row's keys and indices listed bucket by bucket (index order within a bucket): a counting
// scatter through s.pos, from the buckets' first ranks.
MF_INLINE void list_members(const uint32_t* keys, const uint16_t* bucket, int64_t cols, uint32_t nb,
                            BoundScratch& s) {
  uint32_t* pos = s.pos;
  std::memcpy(pos, s.start, nb * sizeof(uint32_t));
  for (int64_t t = 0; t < cols; ++t) {
    const uint32_t at = pos[bucket[t]]++;
    s.mkey[at] = keys[t];
    s.midx[at] = static_cast<uint32_t>(t);
  }
}

// The exact rank of the element (key k, index j) whose bucket's members lie in [from, to):
// the ranks before the bucket, then its members of smaller keys and its equal keys before j.
MF_INLINE uint32_t member_rank(uint32_t k, uint32_t j, uint32_t from, uint32_t to, const BoundScratch& s) {
  uint32_t r = from;
  for (uint32_t a = from; a < to; ++a) r += (s.mkey[a] < k) | ((s.mkey[a] == k) & (s.midx[a] < j));
  return r;
}

// kept[j] (all ones where kept, else 0) for a row taken from its full ranks (della_rank.h).
template <bool Avx2>
MF_INLINE void keep_by_ranks(const float* d, const float* u, int64_t cols, const DellaRule& r, BoundScratch& s,
                             uint32_t* kept) {
  uint32_t* rank = s.rank.data();
  row_ranks<Avx2>(d, cols, s.rs, rank);
  for (int64_t j = 0; j < cols; ++j) {
    kept[j] = r.keep_mask(u[j], rank[j]);
  }
}

// Element j of a row decided by its bucket's thresholds: kept[j] all ones where u[j] <
// keep_below, else 0; j appended to s.open where open (u[j] below open_below only).
MF_INLINE void decide_one(const float* u, const uint16_t* bucket, uint32_t j, BoundScratch& s, uint32_t* kept,
                          uint32_t& m) {
  const uint32_t keep = u[j] < s.keep_below[bucket[j]];
  kept[j] = 0u - keep;
  s.open[m] = j;
  m += (keep ^ 1u) & static_cast<uint32_t>(u[j] < s.open_below[bucket[j]]);
}

// Elements from..cols-1 of a row decided by their buckets' thresholds, the open ones listed in
// s.open (index order) after the m listed already; the count listed.
MF_INLINE uint32_t decide_scalar(const float* u, const uint16_t* bucket, int64_t from, int64_t cols,
                                 BoundScratch& s, uint32_t* kept, uint32_t m) {
  for (int64_t j = from; j < cols; ++j) decide_one(u, bucket, static_cast<uint32_t>(j), s, kept, m);
  return m;
}

#if MF_AVX2_CLONES
// decide_scalar, eight elements at a time. A draw below the least keep threshold of its
// bucket's group (a binade of 32 buckets, one permute for eight elements) keeps a nonzero
// delta, one at or above the group's greatest open threshold drops it: only draws between those
// (a group holding a fraction f of the row's ranks leaves ~2 |epsilon| f of its draws; ~2 |epsilon|
// f^2 summed over the groups) need their bucket's thresholds. Those elements are listed
// (common.h kPack) and decided one by one (Zen 4's gathers of both thresholds for every element
// took ~29% of the masks pass). Whole DELLA calls (ab_libs, bf16, epsilon 0.15, same bits, 2-vCPU
// AMD EPYC VM) against the row's bounds for every group: 0.88x the time on 2816 x 1024 (one
// thread), 0.925x on 16384 x 1024 (one thread), 0.96x on 11008 x 4096 (two); 16 groups (two
// permutes and a blend) no faster (0.99-1.00x).
MF_TARGET_AVX2 inline uint32_t decide_avx2(const float* u, const uint16_t* bucket, int64_t cols, BoundScratch& s,
                                           uint32_t* kept) {
  const __m256 group_keep = _mm256_load_ps(s.group_keep), group_open = _mm256_load_ps(s.group_open);
  const __m256i zero = _mm256_setzero_si256(), eight = _mm256_set1_epi32(8);
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t* undecided = s.undecided.data();
  uint32_t n = 0;
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bucket + j)));
    const __m256 uj = _mm256_loadu_ps(u + j);
    const __m256 zeros = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, zero));  // bucket 0: dropped
    const __m256i group = _mm256_srli_epi32(b, kGroupShift);
    const __m256 keep_min = _mm256_permutevar8x32_ps(group_keep, group);
    const __m256 open_max = _mm256_permutevar8x32_ps(group_open, group);
    const __m256 keep = _mm256_andnot_ps(zeros, _mm256_cmp_ps(uj, keep_min, _CMP_LT_OQ));
    const __m256 drop = _mm256_or_ps(zeros, _mm256_cmp_ps(uj, open_max, _CMP_GE_OQ));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(kept + j), _mm256_castps_si256(keep));
    const int mask = _mm256_movemask_ps(_mm256_or_ps(keep, drop)) ^ 0xFF;
    const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(undecided + n), _mm256_permutevar8x32_epi32(idx, lanes));
    n += static_cast<uint32_t>(__builtin_popcount(static_cast<unsigned>(mask)));
    idx = _mm256_add_epi32(idx, eight);
  }
  uint32_t m = 0;
  for (uint32_t t = 0; t < n; ++t) decide_one(u, bucket, undecided[t], s, kept, m);
  return decide_scalar(u, bucket, j, cols, s, kept, m);
}
#endif

template <bool Avx2>
MF_INLINE uint32_t decide(const float* u, const uint16_t* bucket, int64_t cols, BoundScratch& s, uint32_t* kept) {
#if MF_AVX2_CLONES
  if constexpr (Avx2) return decide_avx2(u, bucket, cols, s, kept);
#endif
  return decide_scalar(u, bucket, 0, cols, s, kept, 0);
}

// Steps 1 and 2 (above) for one row: the keys, buckets and p at the bucket edges into s, kept[j]
// all ones where the bounds keep element j, and the elements they leave open listed in s.open;
// their count.
template <bool Avx2>
MF_INLINE uint32_t bound_decisions(const float* d, const float* u, int64_t cols, const DellaRule& r,
                                   BoundScratch& s, uint32_t* kept) {
  uint32_t* keys = s.keys.data();
  uint32_t kmax = 0;
  for (int64_t j = 0; j < cols; ++j) {
    keys[j] = mag_key(d[j]);
    kmax = std::max(kmax, keys[j]);
  }
  const uint32_t top = kmax >> kBoundShift;
  const uint32_t lo = top >= kBoundBins - 2 ? top - (kBoundBins - 2) : 0u;
  uint16_t* bucket = s.bucket.data();
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t q = keys[j] >> kBoundShift;
    bucket[j] = static_cast<uint16_t>(std::max(q, lo) - lo + static_cast<uint32_t>(keys[j] != 0));
  }
  s.nb = top - lo + 2;
  bucket_bounds(bucket, cols, s.nb, r, s);
  return decide<Avx2>(u, bucket, cols, s, kept);
}

// kept[j] (all ones where u[j] < p(rank of d[j]), else 0) for one row that takes_bounds.
template <bool Avx2>
MF_INLINE void row_keep(const float* d, const float* u, int64_t cols, const DellaRule& r, BoundScratch& s,
                        uint32_t* kept) {
  const uint32_t m = bound_decisions<Avx2>(d, u, cols, r, s, kept);
  if (m == 0) return;
  const uint32_t* open = s.open.data();
  const uint32_t* keys = s.keys.data();
  const uint16_t* bucket = s.bucket.data();
  if (m > kScanMax) {
    uint64_t work = 0;  // the members the open elements count
    for (uint32_t t = 0; t < m; ++t) work += s.start[bucket[open[t]] + 1] - s.start[bucket[open[t]]];
    if (work > kMemberBudget * static_cast<uint64_t>(cols)) return keep_by_ranks<Avx2>(d, u, cols, r, s, kept);
    list_members(keys, bucket, cols, s.nb, s);
  }
  for (uint32_t t = 0; t < m; ++t) {
    const uint32_t j = open[t];
    const uint32_t rank = m <= kScanMax ? open_rank<Avx2>(keys, bucket, s.start, cols, j)
                                        : member_rank(keys[j], j, s.start[bucket[j]], s.start[bucket[j] + 1], s);
    kept[j] = r.keep_mask(u[j], rank);
  }
}

}  // namespace mergefast
