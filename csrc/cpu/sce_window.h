// SCE's energies in its keys pass (sce.cpp), instead of a third read of the inputs.
//
// The energy of model i is sum_j (d_ij * m_j)^2 over every element (m_j = 1.0f kept, 0.0f
// dropped), and which elements are kept is known only once every variance key is. A sample of
// the keys (sce_sample_window) bounds the threshold's coarse bucket (key >> 16) to a window
// before the keys pass. That pass then adds, per block and model, the squares of the elements
// above the window (kept whatever the threshold in it: 16 float64 lanes in flat order, then the
// lanes in order), and records the elements inside it (~1.5 %: exact key, place, the K deltas).
// Once the rule is set, each block's records add (d * m)^2 in flat order (a NaN or infinite
// delta of a dropped element gives NaN, as the reference's multiply) and the blocks are summed
// in order: the same sums on any thread count. Elements below the window are dropped and add
// +0 (their keys are finite: a non-finite delta's variance is NaN, the top key). The records
// also give the low histogram of the threshold's bucket and its tie counts, which otherwise
// take a walk over the slots recomputing that bucket's keys from the inputs.
// Where the threshold's bucket falls outside the window, or a thread's records overflow, the
// selection and energies take their own passes, as without a window.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "sce.h"

namespace mergefast {

// The most models a window takes (its records hold each one's delta).
constexpr int kWindowMaxModels = 4;

// Coarse keys [lo, hi] (key >> 16) that hold the threshold's bucket; lo > hi: no window.
struct SceWindow {
  uint32_t lo = 1;
  uint32_t hi = 0;
  double share = 0.0;  // of the sampled keys inside
  bool on() const { return lo <= hi; }
  bool holds(uint32_t coarse) const { return coarse - lo <= hi - lo; }  // unsigned: lo <= c <= hi
  uint32_t above_key() const { return (hi + 1) << 16; }                  // keys from here lie above
};

// The window from the exact keys of a sample of the elements (groups of 8 at pseudo-random
// places of every block), wide enough that the threshold's bucket misses it about once in
// 10^3 tensors; none for fewer than 2 or more than 4 models, fewer than 2^20 elements, few kept,
// more than 8 % of the sample inside (heavy ties), or MERGEFAST_SCE_NO_WINDOW=1.
SceWindow sce_sample_window(const SceArgs& a, double topk);

// One element of the window: its exact key, its place in its block and its K deltas x_i - b.
struct WindowRecord {
  uint32_t key;
  uint32_t j;
  float d[kWindowMaxModels];
};

// A thread's records, kept from call to call (the pages stay mapped: no faults after the first
// tensor), grown as needed.
struct RecordArena {
  std::unique_ptr<WindowRecord[]> p;
  int64_t capacity = 0;
  int64_t size = 0;
  // capacity >= size + more; false where the memory is not there (no exception: it runs inside
  // the keys pass's OpenMP region).
  bool ensure(int64_t more);
};

// A window and what the keys pass gathers over it: per block and model the squares above it,
// per block its records (on which thread's arena, where, how many).
struct WindowSums {
  struct Span {
    int32_t tid;
    int32_t count;
    int64_t start;
  };
  SceWindow w;
  int K = 0;
  int64_t cap = 0;  // records per thread at most
  std::vector<double> above;
  std::vector<Span> spans;
  std::vector<RecordArena*> arenas;  // per thread
  std::atomic<bool> full{false};

  bool on() const { return w.on(); }
  // Records of block blk.
  const WindowRecord* records(int64_t blk) const {
    return spans[blk].count == 0 ? nullptr : arenas[spans[blk].tid]->p.get() + spans[blk].start;
  }
};

// Counts a selection with a window (sce_window_counts, kernels.h): its energies taken from it or not.
void count_window(const WindowSums& ws, bool taken);

// Sets up ws for a keys pass (sce_sample_window; the arenas of nthreads threads, emptied).
void window_start(const SceArgs& a, double topk, int nthreads, WindowSums& ws);

// Block (off, len)'s share (keys kb, staged base and models: staged[0], staged[1..K]) on thread tid.
using window_block_fn = void (*)(WindowSums& ws, int tid, int64_t off, int64_t len, const uint32_t* kb,
                                 const float* const* staged);
window_block_fn window_block_pick();

// After the keys pass, with the threshold's bucket hi inside the window and no overflow: low
// (65536 zeroed bins) += the low 16 bits of the recorded keys of bucket hi.
void window_low_histogram(const WindowSums& ws, uint32_t hi, std::vector<int64_t>& low);

// eq_in[block] = the recorded keys equal to thr in that block.
void window_count_equal(const WindowSums& ws, uint32_t thr, std::vector<int64_t>& eq_in);

// energies[i] for rule r (see the file comment).
void window_energies(const WindowSums& ws, const KeepRule& r, double* energies);

}  // namespace mergefast
