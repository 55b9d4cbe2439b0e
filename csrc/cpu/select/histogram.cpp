// Full histogram passes (see histogram.h): a histogram of the top 15 bits of every key, one of
// the low 16 bits inside the k-th bucket, then per-block counts of the threshold key T.
#include "histogram.h"

#include <algorithm>

namespace mergefast {
namespace {

constexpr int kHiBins = 1 << 15;           // top 15 bits of the 31-bit key
constexpr int kLoBins = 1 << 16;           // low 16 bits

// Per model, a histogram of bin(q, key) over all its keys, a bin in [0, bins] where `bins`
// means "skip" (a spare bin, no branch). Private histograms per thread, merged.
template <class Bin>
std::vector<std::vector<int64_t>> key_histograms(const Src& base, const std::vector<Src>& xs,
                                                 const std::vector<int>& models, int64_t n,
                                                 size_t bins, int threads, const Bin& bin) {
  const int nthreads = team_size(n, threads), M = static_cast<int>(models.size());
  const size_t stride = bins + 1;
  std::vector<std::vector<uint32_t>> part(nthreads, std::vector<uint32_t>(M * stride, 0));
  for_each_block(base, n, nthreads, [&](int tid, int64_t, int64_t off, int64_t len,
                                        const float* b, float* spare) {
    uint32_t* kb = reinterpret_cast<uint32_t*>(spare);
    for (int q = 0; q < M; ++q) {
      keys_of_block(xs[models[q]], off, b, len, kb);
      uint32_t* h = part[tid].data() + q * stride;
      for (int64_t j = 0; j < len; ++j) h[bin(q, kb[j])]++;
    }
  });
  std::vector<std::vector<int64_t>> hist(M, std::vector<int64_t>(bins, 0));
  for (const auto& p : part) {
    for (int q = 0; q < M; ++q) {
      for (size_t i = 0; i < bins; ++i) hist[q][i] += p[q * stride + i];
    }
  }
  return hist;
}

}  // namespace

void select_by_histograms(const Src& base, const std::vector<Src>& xs,
                          const std::vector<int>& models, const std::vector<int64_t>& keep,
                          int64_t n, std::vector<KeepRule>& rules, int threads) {
  const int B = static_cast<int>(models.size());
  const int64_t nb = num_blocks(n);
  const auto top = key_histograms(base, xs, models, n, kHiBins, threads, [](int, uint32_t key) {
    return key >> 16;
  });
  std::vector<std::pair<int64_t, int64_t>> buckets;  // (bucket, keys above it)
  std::vector<uint32_t> bucket;
  for (int q = 0; q < B; ++q) {
    buckets.push_back(bin_from_top(top[q], keep[models[q]]));
    bucket.push_back(static_cast<uint32_t>(buckets[q].first));
  }
  const auto low = key_histograms(base, xs, models, n, kLoBins, threads,
                                  [&bucket](int q, uint32_t key) {
    return (key >> 16) == bucket[q] ? key & 0xFFFFu : static_cast<uint32_t>(kLoBins);
  });
  std::vector<int> split;  // indices into models
  for (int q = 0; q < B; ++q) {
    const int64_t k = keep[models[q]];
    const auto [lo, above] = bin_from_top(low[q], k - buckets[q].second);
    const uint32_t thr = (bucket[q] << 16) | static_cast<uint32_t>(lo);
    if (set_threshold(rules[models[q]], thr, k, buckets[q].second + above, low[q][lo], nb)) {
      split.push_back(q);
    }
  }
  if (split.empty()) return;
  for_each_block(base, n, team_size(n, threads), [&](int, int64_t blk, int64_t off, int64_t len,
                                                    const float* b, float* spare) {
    uint32_t* kb = reinterpret_cast<uint32_t*>(spare);
    for (int q : split) {
      KeepRule& r = rules[models[q]];
      keys_of_block(xs[models[q]], off, b, len, kb);
      r.eq_in[blk] = std::count(kb, kb + len, r.thr);
    }
  });
  for (int q : split) scan_eq(rules[models[q]]);
}

}  // namespace mergefast
