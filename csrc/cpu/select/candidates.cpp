// The threshold of a model from its window scan (see candidates.h): T is hi, lo or one of the
// candidates; among the candidates a radix select of at most two histogram passes over the
// candidate keys alone finds it, exactly.
#include "candidates.h"

#include <algorithm>

namespace mergefast {
namespace {

// Histogram over all candidates of bin(key), a bin index in [0, bins] where `bins` means
// "skip" (counted in a spare bin: no branch). Single-threaded (the models are resolved in
// parallel instead), as 4 interleaved copies: bf16 deltas repeat a few values, and
// back-to-back increments of one counter wait for each other.
template <class Bin>
std::vector<int64_t> candidate_histogram(const WindowScan& s, size_t bins, const Bin& bin) {
  constexpr int kWays = 4;
  const size_t stride = bins + 1;
  std::vector<uint32_t> part(kWays * stride, 0);
  uint32_t* h = part.data();
  for (size_t t = 0; t < s.lists.size(); ++t) {
    const uint32_t* list = s.lists[t];
    const int64_t size = s.size[t];
    int64_t j = 0;
    for (; j + kWays <= size; j += kWays) {
      for (int w = 0; w < kWays; ++w) h[w * stride + bin(list[j + w])]++;
    }
    for (; j < size; ++j) h[bin(list[j])]++;
  }
  std::vector<int64_t> total(bins, 0);
  for (int w = 0; w < kWays; ++w) {
    for (size_t i = 0; i < bins; ++i) total[i] += part[w * stride + i];
  }
  return total;
}

// The k-th largest candidate key (all in (lo, hi)), the candidates above it and equal to it.
struct Pick {
  uint32_t key;
  int64_t above, equal;
};

// A radix select over v = key - lo - 1, most significant digit first, each pass counting
// only the candidates that share the digits found so far. Digits of about log2(count) - 3
// bits, between 6 and 16: clearing and scanning 2^16 bins costs more than counting the ~40k
// candidates of a 1M-element tensor (0.36 ms with 16-bit digits there).
Pick pick_candidate(const WindowScan& s, int64_t k) {
  const uint32_t first = s.w.lo + 1, range = s.w.hi - s.w.lo - 2;  // v in [0, range]
  const int count_bits = 64 - __builtin_clzll(static_cast<uint64_t>(s.candidates()) | 1u);
  const int digit = std::clamp(count_bits - 3, 6, 16);
  int low = 32 - __builtin_clz(range | 1u);  // bits of v not yet decided
  uint32_t prefix = 0;                        // the decided high bits of v
  int64_t above = 0;
  while (true) {
    const int bits = std::min(low, digit), shift = low - bits;
    const uint32_t mask = (1u << bits) - 1u;
    const uint32_t skip = mask + 1;
    const auto h = candidate_histogram(s, skip, [=](uint32_t key) {
      const uint32_t v = key - first;
      return (v >> low) == prefix ? (v >> shift) & mask : skip;
    });
    const auto [bin, cum] = bin_from_top(h, k - above);
    above += cum;
    prefix = (prefix << bits) | static_cast<uint32_t>(bin);
    low = shift;
    if (low == 0) return {first + prefix, above, h[bin]};
  }
}

}  // namespace

bool resolve_window(const WindowScan& s, int64_t k, int64_t nb, KeepRule& r) {
  const int64_t above = s.above();
  if (s.overflow || k <= above) return false;
  const int64_t eq_hi = s.eq_hi_total(), inside = s.candidates();
  int64_t at = above;  // keys above the range being looked at
  if (k <= at + eq_hi) {
    if (set_threshold(r, s.w.hi, k, at, eq_hi, nb)) r.eq_in.assign(s.eq_hi.begin(), s.eq_hi.end());
  } else if (k <= at + eq_hi + inside) {
    at += eq_hi;
    const Pick p = pick_candidate(s, k - at);
    if (set_threshold(r, p.key, k, at + p.above, p.equal, nb)) {
      for (int64_t blk = 0; blk < nb; ++blk) {
        const uint32_t* seg = s.block_candidates(blk);
        r.eq_in[blk] = std::count(seg, seg + s.cand_cnt[blk], p.key);
      }
    }
  } else {
    at += eq_hi + inside;
    const int64_t eq_lo = s.eq_lo_total();
    if (s.w.lo == s.w.hi || k > at + eq_lo) return false;
    if (set_threshold(r, s.w.lo, k, at, eq_lo, nb)) r.eq_in.assign(s.eq_lo.begin(), s.eq_lo.end());
  }
  if (r.cut) scan_eq(r);
  return true;
}

}  // namespace mergefast
