// What the one-read passes of task arithmetic / TIES (one_read.cpp) and of breadcrumbs
// (one_read_band.cpp) share: the windows' prediction, the check that the records will fit,
// the thresholds from the records, and the counts of one_read_counts().
#pragma once

#include <cstdint>
#include <vector>

#include "records.h"
#include "window.h"

namespace mergefast {

// A window no key is inside: for selections whose rule is known (keep all or none).
constexpr Window kNoWindow{0x7FFFFFFFu, 0u, 0.0};

// The windows of the selections (kNoWindow for those whose rule is known), the scans of the
// active ones (window set, per-block counts sized) and an upper bound of the share of the
// elements that will be recorded.
struct Prediction {
  std::vector<Window> windows;
  std::vector<WindowScan> scans;     // per active selection
  std::vector<uint32_t*> above;      // per selection: its scan's above_blk, or null
  double share = 0.0;
};

// The prediction for selections xs (one per model, or each model once per cut) keeping
// keep[s] of n, from a sample.
Prediction predict(const Src& base, const std::vector<Src>& xs, const std::vector<int64_t>& keep,
                   const std::vector<int>& active, int64_t n, int threads);

// Bytes of dst's n elements: the records' memory.
int64_t output_bytes(const Dst& dst, int64_t n);

// Whether the records of models xs, as predicted, fit in kRecordFill of `capacity` bytes (more
// would risk an overflow, which costs a third read: the two passes are cheaper).
bool records_fit(const Prediction& p, const Src& base, const std::vector<Src>& xs, int64_t n,
                 int64_t capacity);

// The exact rules of the active selections (of model s / sides, scan_records) from their
// scans and the records; false when a threshold lies outside its window.
bool resolve_all(const Records& rec, const std::vector<int64_t>& keep,
                 const std::vector<int>& active, int sides, int64_t n,
                 std::vector<WindowScan>& scans, std::vector<KeepRule>& rules, int threads);

// The OpenMP loop of a one-read pass over the blocks of n elements of K models on nthreads
// threads: each thread gets buffers 0 base, 1 mixed, 2 uncertain flags, 3 result, 4-5 scratch
// (contiguous: record_block's offsets in 4 may run 8 past it) and K weighted-delta buffers;
// block(bufs, wd, blk) passes block blk and returns nonzero when one of its deltas was not
// finite. Returns nonzero when a delta was not finite.
template <class Block>
uint32_t run_pass_blocks(int64_t n, int K, int nthreads, const Block& block) {
  const int64_t nb = num_blocks(n);
  uint32_t nonfinite = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : nonfinite)
  {
    Scratch scratch(6 + K);
    float* bufs[6];
    for (int q = 0; q < 6; ++q) bufs[q] = scratch.buf(q);
    std::vector<float*> wd(K);
    for (int i = 0; i < K; ++i) wd[i] = scratch.buf(6 + i);
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) nonfinite |= block(bufs, wd.data(), blk);
  }
  return nonfinite;
}

// Counts one call of a one-read pass (one_read_counts) that finished (done) or fell back to
// the two passes; returns done.
bool count_one_read(bool done);

}  // namespace mergefast
