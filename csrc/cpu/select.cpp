// Exact magnitude selection (see select.h), for the two-pass scheme (large tensors of task
// arithmetic / TIES first try speculative.cpp, which reuses the window and resolve_window
// below without a separate selection pass): for each model, the threshold key T, the quota
// of T-valued elements to keep and, when that quota splits the ties, per-block counts of T
// so that the apply pass keeps the lowest flat indices first. Nothing of size n is
// allocated: the candidate lists (a few % of the keys) live in the output tensor.
//
// - Small tensors (<= kSmallSelect elements): the keys in a vector and nth_element.
// - Larger ones, one pass over the inputs (select_window.cpp): a sampled window (lo, hi) per
//   model, the keys above hi counted, the keys equal to lo and hi counted per block, the
//   keys inside stored as candidates. Then T is hi, lo or a candidate; among the candidates
//   a radix select of at most two histogram passes finds it, exactly.
// - When the window misses or a candidate list overflows (the sample misled by more than
//   3 standard deviations): full passes, a histogram of the top 15 bits of every key, one
//   of the low 16 bits inside the k-th bucket, then per-block counts of T.
//
// Measured on the 2-core box, TIES of the 0.3B e2e family (147 tensors, 3 bf16 fine-tunes,
// density 0.5), kernel time summed over tensors: 1.29 s with the previous scheme (a 65536-key
// strided sample and a 16-bit bucket of candidates compacted by a scalar loop), 0.96 s with
// this one, of which the apply pass is 0.31 s. One 7B layer: 145-257 ms -> 110 ms.
#include "select.h"

#include <algorithm>
#include <memory>

#include "select_window.h"

namespace mergefast {
namespace {

constexpr int kHiBins = 1 << 15;           // fallback: top 15 bits of the 31-bit key
constexpr int kLoBins = 1 << 16;           // fallback: low 16 bits

// Sets thr / quota / cut for a threshold key with `above` keys above it and `equal` keys
// equal to it. Returns r.cut: the caller then fills r.eq_in per block and calls scan_eq.
bool set_threshold(KeepRule& r, uint32_t thr, int64_t k, int64_t above, int64_t equal,
                   int64_t nb) {
  r.thr = thr;
  r.quota = k - above;
  r.cut = r.quota < equal;
  if (r.cut) {
    r.eq_in.assign(nb, 0);
    r.eq_before.assign(nb, 0);
  }
  return r.cut;
}

// eq_before = exclusive prefix sum of eq_in.
void scan_eq(KeepRule& r) {
  int64_t run = 0;
  for (size_t blk = 0; blk < r.eq_in.size(); ++blk) {
    r.eq_before[blk] = run;
    run += r.eq_in[blk];
  }
}

// The bin holding the k-th largest value counted by a histogram, and the count above it.
std::pair<int64_t, int64_t> bin_from_top(const std::vector<int64_t>& h, int64_t k) {
  int64_t cum = 0;
  int64_t bin = static_cast<int64_t>(h.size()) - 1;
  for (; bin > 0; --bin) {
    if (cum + h[bin] >= k) break;
    cum += h[bin];
  }
  return {bin, cum};
}

// ---- small tensors: one thread, nth_element (histograms cost ~0.35 ms per call to set up:
// TIES of 3 x 1024 bf16 elements took 364 us with them, 17 us with this path).
void select_small(const Src& base, const Src& x, int64_t k, int64_t n, KeepRule& r) {
  std::vector<uint32_t> keys(n);
  Scratch scratch(1);
  for (int64_t off = 0; off < n; off += kBlock) {
    const int64_t len = std::min(kBlock, n - off);
    keys_of_block(x, off, stage(base, off, len, scratch.buf(0)), len, keys.data() + off);
  }
  std::vector<uint32_t> tmp(keys);
  std::nth_element(tmp.begin(), tmp.begin() + (n - k), tmp.end());
  const uint32_t t = tmp[n - k];
  int64_t gt = 0, eq = 0;
  for (int64_t j = 0; j < n; ++j) {
    gt += keys[j] > t;
    eq += keys[j] == t;
  }
  if (!set_threshold(r, t, k, gt, eq, num_blocks(n))) return;
  for (int64_t j = 0; j < n; ++j) r.eq_in[j / kBlock] += keys[j] == t;
  scan_eq(r);
}

// ---- resolving a window scan
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
// bits: 16-bit digits cost more to clear and scan than the ~40k candidates of a 1M-element
// tensor to count (measured: 0.36 ms -> see README per model and tensor).
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

// The rule of a model from its window scan; false when its k-th key is outside the window
// or the candidates are incomplete (the full passes then decide).
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

namespace {

// ---- fallback: full histogram passes for the models in `models` (indices into xs)
// Per model, a histogram of bin(q, key) over all its keys, a bin in [0, bins] where `bins`
// means "skip" (a spare bin, no branch). Private histograms per thread, merged.
template <class Bin>
std::vector<std::vector<int64_t>> key_histograms(const Src& base, const std::vector<Src>& xs,
                                                 const std::vector<int>& models, int64_t n,
                                                 size_t bins, const Bin& bin) {
  const int nthreads = num_threads(n), M = static_cast<int>(models.size());
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

// The bucket (top 15 bits) of each model's k-th key from one histogram pass, the exact key
// inside it from a second (low 16 bits), then per-block counts of it when ties are split.
void select_by_histograms(const Src& base, const std::vector<Src>& xs,
                          const std::vector<int>& models, const std::vector<int64_t>& keep,
                          int64_t n, std::vector<KeepRule>& rules) {
  const int B = static_cast<int>(models.size());
  const int64_t nb = num_blocks(n);
  const auto top = key_histograms(base, xs, models, n, kHiBins, [](int, uint32_t key) {
    return key >> 16;
  });
  std::vector<std::pair<int64_t, int64_t>> buckets;  // (bucket, keys above it)
  std::vector<uint32_t> bucket;
  for (int q = 0; q < B; ++q) {
    buckets.push_back(bin_from_top(top[q], keep[models[q]]));
    bucket.push_back(static_cast<uint32_t>(buckets[q].first));
  }
  const auto low = key_histograms(base, xs, models, n, kLoBins, [&bucket](int q, uint32_t key) {
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
  for_each_block(base, n, num_threads(n), [&](int, int64_t blk, int64_t off, int64_t len,
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

}  // namespace

std::vector<int> known_rules(const std::vector<int64_t>& keep, int64_t n,
                             std::vector<KeepRule>& rules) {
  std::vector<int> active;
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] <= 0) {
      rules[i].thr = 0xFFFFFFFFu;  // keep none
      rules[i].quota = 0;
    } else if (keep[i] < n) {
      active.push_back(static_cast<int>(i));
    }  // else keep all: the default rule
  }
  return active;
}

ActiveModels active_models(const std::vector<Src>& xs, const std::vector<int64_t>& keep,
                           const std::vector<int>& active) {
  ActiveModels m;
  for (int i : active) {
    m.xs.push_back(&xs[i]);
    m.keep.push_back(keep[i]);
  }
  return m;
}

std::vector<KeepRule> select_magnitude(const Src& base, const std::vector<Src>& xs,
                                       const std::vector<int64_t>& keep, int64_t n,
                                       void* space, size_t space_bytes) {
  std::vector<KeepRule> rules(xs.size());
  const std::vector<int> active = known_rules(keep, n, rules);
  if (active.empty()) return rules;
  if (n <= kSmallSelect) {
    for (int i : active) select_small(base, xs[i], keep[i], n, rules[i]);
    return rules;
  }
  const ActiveModels selected = active_models(xs, keep, active);
  std::unique_ptr<uint32_t[]> own;  // when `space` is too small (many models, small dtype)
  const int A = static_cast<int>(active.size());
  // One thread count for sizing the lists and for the pass (OpenMP never gives a region
  // more threads than asked for, so every thread id has its lists).
  const int nthreads = num_threads(n);
  if (space_bytes < candidate_bytes_min(A, n, nthreads)) {
    space_bytes = candidate_bytes(A, n, nthreads);
    own.reset(new uint32_t[space_bytes / sizeof(uint32_t)]);  // uninitialised: touched as used
    space = own.get();
  }
  const std::vector<WindowScan> scans =
      scan_windows(base, selected.xs, selected.keep, n, nthreads, space, space_bytes);
  // One parallel region for all models (waking OpenMP's passive workers costs ~20 us).
  std::vector<char> resolved(A, 0);
#pragma omp parallel for num_threads(std::min(A, num_threads())) schedule(dynamic, 1)
  for (int a = 0; a < A; ++a) {
    resolved[a] = resolve_window(scans[a], keep[active[a]], num_blocks(n), rules[active[a]]);
  }
  std::vector<int> missed;
  for (int a = 0; a < A; ++a) {
    if (!resolved[a]) missed.push_back(active[a]);
  }
  if (!missed.empty()) select_by_histograms(base, xs, missed, keep, n, rules);
  return rules;
}

}  // namespace mergefast
