// DELLA's per-row magnitude ranks (della.cpp): the 0-based position of every element of a
// row in the reference's order, torch.sort(|delta|, stable=True) ascending
// (mergefast/methods/task_arithmetic.py, della_keep_probability). That order is the integer
// order of mag_key (select/rules.h: |d|'s bits, every NaN one key above +inf, as torch ranks
// NaNs above inf and equal to each other), ties lowest index first.
//
// Rows are short (a weight matrix's last axis: 4096 or 11008 in a 7B model) and stay in L1/L2:
// a least-significant-digit radix sort of (key, index) over 11/11/9-bit digits, stable, so
// equal keys keep index order without comparing indices. A digit that every key of the row
// shares is skipped (bf16 fine-tunes: deltas of a few magnitudes). Rows below kSortMin
// elements use std::sort on key << 32 | index instead (the histograms would cost more).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
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
  explicit RankScratch(int64_t cols) : pairs(cols < kSortMin ? cols : 0) {
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

// One stable counting pass over digit q of (src_k, src_i) (src_i null: the identity); the last
// pass writes each element's final position to rank[index], the others scatter to dst.
MF_INLINE void radix_pass(int q, bool last, int64_t cols, uint32_t* hist, const uint32_t* src_k,
                          const uint32_t* src_i, uint32_t* dst_k, uint32_t* dst_i, uint32_t* rank) {
  uint32_t sum = 0;
  for (uint32_t bin = 0; bin < kRankBins; ++bin) {
    const uint32_t c = hist[bin];
    hist[bin] = sum;
    sum += c;
  }
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

// rank[j] = the position of d[j] in its row's stable ascending order of mag_key (above).
inline void row_ranks(const float* d, int64_t cols, RankScratch& s, uint32_t* rank) {
  if (cols < kSortMin) return small_row_ranks(d, cols, s, rank);
  std::memset(s.hist, 0, sizeof(s.hist));
  uint32_t* k0 = s.keys[0].data();
  for (int64_t j = 0; j < cols; ++j) {
    const uint32_t k = mag_key(d[j]);
    k0[j] = k;
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
    radix_pass(passes[t], t == np - 1, cols, s.hist[passes[t]], src_k, src_i, dst_k, dst_i, rank);
    src_k = dst_k;
    src_i = dst_i;
  }
}

}  // namespace mergefast
