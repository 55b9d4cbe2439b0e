// The sampled window of the selection (window.cpp): a sample of each model's keys predicts an
// interval (lo, hi) around its threshold key T; one pass over base and every model (the window
// scan) then counts the keys above hi and, per block, the keys equal to hi and lo, and keeps
// the keys strictly inside (lo, hi), the candidates, in per-thread lists in flat order.
// candidates.cpp finds T from a scan; the one-read pass (one_read.cpp) computes the same counts
// while it applies, and keeps its candidates in its records instead.
#pragma once

#include <memory>
#include <vector>

#include "rules.h"

namespace mergefast {

// Keys of model x against the float32 base block b (elements off .. off+len of x).
void keys_of_block(const Src& x, int64_t off, const float* b, int64_t len, uint32_t* kb);

// for_each_block_raw with the base block staged: body(tid, blk, off, len, b, spare), b the
// base block in float32, spare a free kBlock-float buffer.
template <class Body>
void for_each_block(const Src& base, int64_t n, int nthreads, Body&& body) {
  for_each_block_raw(n, nthreads, 2, [&](int tid, int64_t blk, int64_t off, int64_t len, Scratch& s) {
    body(tid, blk, off, len, stage(base, off, len, s.buf(0)), s.buf(1));
  });
}

// The models that need a threshold (pointers into xs) and their keep counts: what the window
// takes.
struct ActiveModels {
  std::vector<const Src*> xs;
  std::vector<int64_t> keep;
};
ActiveModels active_models(const std::vector<Src>& xs, const std::vector<int64_t>& keep,
                           const std::vector<int>& active);

// Where one model's k-th largest key is predicted to lie: keys strictly inside (lo, hi)
// are candidates, keys equal to lo or hi and above hi are counted.
struct Window {
  uint32_t lo = 0;
  uint32_t hi = 0x7FFFFFFFu;  // keys never exceed 31 bits: signed compares are exact
  double share = 1.0;         // the fraction of the sample's keys in [lo, hi]
};

// What the window scan learns about one model.
struct WindowScan {
  Window w;
  std::vector<uint32_t> above_blk;      // per block: keys > hi
  std::vector<uint32_t> eq_hi, eq_lo;   // per block: keys == hi; keys == lo (when lo < hi)
  std::vector<int64_t> cand_off;        // per block: its first candidate in its thread's list
  std::vector<uint32_t> cand_cnt;       // per block: its candidates
  std::vector<int> owner;               // per block: the thread whose list holds them
  std::vector<uint32_t*> lists;         // per thread: candidate keys, flat order
  std::vector<int64_t> size;            // per thread
  int64_t capacity = 0;                 // per thread
  bool overflow = false;                // some list ran full: the candidates are incomplete

  int64_t above() const;
  int64_t eq_hi_total() const;
  int64_t eq_lo_total() const;
  int64_t candidates() const;

  // The candidates of block blk, in flat order.
  const uint32_t* block_candidates(int64_t blk) const {
    return lists[owner[blk]] + cand_off[blk];
  }
};

// The key of rank `at` (0: the smallest) of keys, whose order it changes (not its values): the
// sampled ranks of the windows here and of SCE's (../sce_window.cpp).
uint32_t key_of_rank(std::vector<uint32_t>& keys, int64_t at);

// The window of each model of xs (model a keeps its keep[a] largest keys of n), from a
// stratified sample of min(sample_max, n / 16) elements: the sample's keys kWindowSigmas
// standard deviations of rank above and below where the k-th largest is expected; and the
// share of the sample inside each window. The models in parallel on up to `threads` threads.
// Under 16 elements (no sample) every window is the whole key range, share 1: the callers'
// record and candidate checks then take the two passes.
std::vector<Window> predict_windows(const Src& base, const std::vector<const Src*>& xs,
                                    const std::vector<int64_t>& keep, int64_t n,
                                    int64_t sample_max, int threads);

// Appends the keys of kb strictly inside (w.lo, w.hi) to out, in order; returns how many.
// Writes up to 7 keys past the returned count.
int64_t compact_window(const uint32_t* kb, int64_t len, Window w, uint32_t* out);

// Bytes the candidate lists of `models` models of n elements, on nthreads threads, may use
// (at most n / 8 keys per model), and the least they need (n / 16 keys per model: the window
// holds ~3 % of the keys, and a list that runs full only costs the histogram passes).
size_t candidate_bytes(int models, int64_t n, int nthreads);
size_t candidate_bytes_min(int models, int64_t n, int nthreads);

// Predicts a window per model from a sample (n >= 16 * 4096) and runs the window scan over all
// of them on nthreads threads: one read of base and every model. The candidate lists live in
// `space` (at least candidate_bytes_min bytes for the same nthreads, 4-byte aligned), which
// must stay valid while the scans are used.
std::vector<WindowScan> scan_windows(const Src& base, const std::vector<const Src*>& xs,
                                     const std::vector<int64_t>& keep, int64_t n, int nthreads,
                                     void* space, size_t space_bytes);

}  // namespace mergefast
