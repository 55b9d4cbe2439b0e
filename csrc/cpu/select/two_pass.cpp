// The selection pass of the two-pass scheme (see two_pass.h and README.md): for each model,
// the threshold key T, the quota of T-valued elements to keep and, when that quota splits the
// ties, per-block counts of T so that the apply pass keeps the lowest flat indices first.
// Nothing of size n is allocated: the candidate lists (a few % of the keys) live in the
// output tensor.
//
// - Small tensors (<= kSmallSelect elements): the keys in a vector and nth_element.
// - Larger ones: one read of the inputs, the window scan (window.cpp); T from the counts and
//   candidates (candidates.cpp).
// - The models whose window misses or whose candidate list overflows (the sample misled by
//   more than 3 standard deviations): the full histogram passes (histogram.cpp).
//
// Measured on a 2-vCPU AMD EPYC VM: TIES of the 0.3B e2e family (147 tensors, 3 bf16
// fine-tunes, density 0.5), kernel time summed over tensors, 0.96 s, of which the apply pass
// is 0.31 s; one 7B layer, 110 ms.
#include "two_pass.h"

#include <algorithm>
#include <memory>

#include "candidates.h"
#include "histogram.h"
#include "window.h"

namespace mergefast {
namespace {

// Small tensors: one thread, nth_element (a histogram costs ~0.35 ms per call to set up:
// TIES of 3 x 1024 bf16 elements takes 17 us this way, 364 us with histograms).
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

}  // namespace

std::vector<KeepRule> select_magnitude(const Src& base, const std::vector<Src>& xs,
                                       const std::vector<int64_t>& keep, int64_t n,
                                       void* space, size_t space_bytes, int threads) {
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
  const int nthreads = team_size(n, threads);
  if (space_bytes < candidate_bytes_min(A, n, nthreads)) {
    space_bytes = candidate_bytes(A, n, nthreads);
    own.reset(new uint32_t[space_bytes / sizeof(uint32_t)]);  // uninitialised: touched as used
    space = own.get();
  }
  const std::vector<WindowScan> scans =
      scan_windows(base, selected.xs, selected.keep, n, nthreads, space, space_bytes);
  // One parallel region for all models (waking OpenMP's passive workers costs ~20 us).
  std::vector<char> resolved(A, 0);
#pragma omp parallel for num_threads(std::min(A, std::max(1, threads))) schedule(dynamic, 1)
  for (int a = 0; a < A; ++a) {
    resolved[a] = resolve_window(scans[a], keep[active[a]], num_blocks(n), rules[active[a]]);
  }
  std::vector<int> missed;
  for (int a = 0; a < A; ++a) {
    if (!resolved[a]) missed.push_back(active[a]);
  }
  if (!missed.empty()) select_by_histograms(base, xs, missed, keep, n, rules, threads);
  return rules;
}

}  // namespace mergefast
