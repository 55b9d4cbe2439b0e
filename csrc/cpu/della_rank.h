// DELLA's per-row magnitude ranks (della_keep.h: rows outside its rank bounds' range, and rows
// with too many elements those bounds leave open): the 0-based position of every element of a
// row in the reference's order, torch.sort(|delta|, stable=True) ascending
// (mergefast/methods/task_arithmetic.py, della_keep_probability). That order is the integer
// order of mag_key (select/rules.h: |d|'s bits, every NaN one key above +inf, as torch ranks
// NaNs above inf and equal to each other), ties lowest index first.
//
// Rows are short (a weight matrix's last axis: 4096 or 11008 in a 7B model) and stay in L1/L2.
// Two methods, both exact:
// - tie counting (tie_ranks): deltas of bf16 weights have few significant bits (a difference
//   of two 8-bit significands: about 570 distinct magnitudes in a 4096-element row of a 7B
//   layer), so the key's top bits (>> kTieShift) name each distinct key of most elements: one
//   bucket per key. A histogram of the buckets, its prefix sums, then one pass in index order
//   gives each element rank = (elements of smaller keys) + (equal keys before it): no sort.
//   The few "odd" keys that share a bucket with other keys (more significant bits, ~1.5 % of
//   a row) or lie below the bucket window are sorted (key, index) and placed after their
//   bucket's plain key. Measured on a 2-vCPU AMD EPYC VM (shared), 7B layer bf16 deltas:
//   2.4-2.8 ns per element against 5-6.7 ns for the radix sort below (about 2x).
// - otherwise (float32 or float16 deltas: more than 1/8 of the row odd) a least-significant-
//   digit radix sort of (key, index) over 11/11/9-bit digits, stable, so equal keys keep index
//   order without comparing indices; a digit every key of the row shares is skipped.
// Rows below kSortMin elements use std::sort on key << 32 | index (histograms would cost more).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "della_ties.h"
#include "select/rules.h"

namespace mergefast {

constexpr int kRankBits = 11;
constexpr uint32_t kRankBins = 1u << kRankBits;
constexpr int64_t kSortMin = 256;

// One thread's scratch for rows of up to `cols` elements.
struct RankScratch {
  std::vector<uint32_t> keys[2], idx[2];
  std::vector<uint64_t> pairs;
  uint32_t hist[3][kRankBins];
  TieScratch ties;
  explicit RankScratch(int64_t cols) : pairs(cols < kSortMin ? cols : 0), ties(cols < kSortMin ? 0 : cols) {
    if (cols >= kSortMin) {
      for (int q = 0; q < 2; ++q) {
        keys[q].resize(cols);
        idx[q].resize(cols);
      }
    }
  }
};

// rank[j] for a row below kSortMin elements: sort key << 32 | j (all distinct).
inline void small_row_ranks(const float* d, int64_t cols, RankScratch& s, uint32_t* rank) {
  uint64_t* p = s.pairs.data();
  for (int64_t j = 0; j < cols; ++j) p[j] = (uint64_t(mag_key(d[j])) << 32) | uint64_t(j);
  std::sort(p, p + cols);
  for (int64_t pos = 0; pos < cols; ++pos) rank[p[pos] & 0xFFFFFFFFu] = static_cast<uint32_t>(pos);
}

// One stable counting pass over digit q of (src_k, src_i) (src_i null: the identity), hist the
// digit's prefix counts; the last pass writes each element's final position to rank[index],
// the others scatter to dst.
MF_INLINE void radix_pass(int q, bool last, int64_t cols, uint32_t* hist, const uint32_t* src_k,
                          const uint32_t* src_i, uint32_t* dst_k, uint32_t* dst_i, uint32_t* rank) {
  const int shift = q * kRankBits;
  for (int64_t pos = 0; pos < cols; ++pos) {
    const uint32_t k = src_k[pos];
    const uint32_t i = src_i ? src_i[pos] : static_cast<uint32_t>(pos);
    const uint32_t to = hist[(k >> shift) & (kRankBins - 1)]++;
    if (last) {
      rank[i] = to;
    } else {
      dst_k[to] = k;
      dst_i[to] = i;
    }
  }
}

// rank[j] by the radix sort, the row's keys given in s.keys[0]. The prefix sums visit only
// nonempty bins (della_ties.h's prefix_counts): a 1024-wide row fills at most half of a digit's
// 2048, and summing all three digits' bins took over a quarter of DELLA's masks pass on float32
// rows (perf, 2-vCPU AMD EPYC VM).
template <bool Avx2>
MF_INLINE void radix_ranks(int64_t cols, RankScratch& s, uint32_t* rank) {
  std::memset(s.hist, 0, sizeof(s.hist));
  const uint32_t* k0 = s.keys[0].data();
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t k = k0[j];
    ++s.hist[0][k & (kRankBins - 1)];
    ++s.hist[1][(k >> kRankBits) & (kRankBins - 1)];
    ++s.hist[2][k >> (2 * kRankBits)];
  }
  int passes[3], np = 0;
  for (int q = 0; q < 3; ++q) {
    if (s.hist[q][(k0[0] >> (q * kRankBits)) & (kRankBins - 1)] != static_cast<uint32_t>(cols)) {
      passes[np++] = q;
    }
  }
  if (np == 0) {  // one key: index order
    for (int64_t j = 0; j < cols; ++j) rank[j] = static_cast<uint32_t>(j);
    return;
  }
  const uint32_t* src_k = k0;
  const uint32_t* src_i = nullptr;
  for (int t = 0; t < np; ++t) {
    uint32_t* dst_k = s.keys[(t + 1) & 1].data();
    uint32_t* dst_i = s.idx[(t + 1) & 1].data();
    prefix_counts<Avx2>(s.hist[passes[t]], kRankBins);
    radix_pass(passes[t], t == np - 1, cols, s.hist[passes[t]], src_k, src_i, dst_k, dst_i, rank);
    src_k = dst_k;
    src_i = dst_i;
  }
}

// rank[j] = the position of d[j] in its row's stable ascending order of mag_key (above): the
// keys, their extremes and how many have bits below kTieShift (a lower bound of the odd keys:
// a float32 or float16 row goes to the radix sort without the tie passes), then either method.
template <bool Avx2>
MF_INLINE void row_ranks(const float* d, int64_t cols, RankScratch& s, uint32_t* rank) {
  if (cols < kSortMin) return small_row_ranks(d, cols, s, rank);
  uint32_t* k0 = s.keys[0].data();
  uint32_t kmax = 0, kmin1 = 0xFFFFFFFFu, low = 0;  // kmin1: the least nonzero key - 1
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t k = mag_key(d[j]);
    k0[j] = k;
    kmax = std::max(kmax, k);
    kmin1 = std::min(kmin1, k - 1u);
    low += (k & kTieLow) != 0;
  }
  if (kmax == 0) {  // every delta zero (a frozen tensor): column order (4096 x 4096 bf16: 0.48x the time)
    for (int64_t j = 0; j < cols; ++j) rank[j] = static_cast<uint32_t>(j);
    return;
  }
  if (low <= cols / 8 && tie_ranks<Avx2>(k0, cols, kmax, kmin1 + 1u, s.ties, rank)) return;
  radix_ranks<Avx2>(cols, s, rank);
}

}  // namespace mergefast
