// The records of the one-read pass (one_read.cpp): the elements whose keep decision waits for
// the exact thresholds, with the inputs they need, and the scan that finds the thresholds
// from them (the fix-up, fix_up.h, recomputes them).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "../common.h"
#include "window.h"

namespace mergefast {

// One memory region for all blocks' records, each block's records a contiguous segment (in
// whatever order the threads finish their blocks). A block's records are stored as columns
// (struct of arrays, so that the fix-up runs vectorised loops over them): the offsets in the
// block (uint16), then the base's and each model's values at those offsets, copied in their
// own dtype (10 bytes per record for base + 3 bf16 models; float32 deltas would take twice that).
// Each column starts 8-byte aligned.
struct Records {
  std::vector<Src> sources;          // column c >= 1: 1 the base, 2 + i model i
  char* memory = nullptr;
  int64_t capacity = 0;              // bytes
  int64_t used = 0;                  // bytes (updated atomically)
  char overflow = 0;                 // a block did not fit
  std::vector<int64_t> first;        // per block: its byte offset in memory
  std::vector<uint32_t> count;       // per block: its records

  // Bytes of a block's records when it has cnt of them.
  int64_t segment_bytes(int64_t cnt) const;
  // Column c of block blk's records.
  const void* column(int64_t blk, int c) const;
  // Column c >= 1 of block blk as float32: the column itself, or buf after conversion.
  const float* column_f32(int64_t blk, int c, float* buf) const {
    return stage(Src{column(blk, c), sources[c].dt}, 0, count[blk], buf);
  }
  // The offsets in the block (column 0).
  const uint16_t* offsets(int64_t blk) const {
    return static_cast<const uint16_t*>(column(blk, 0));
  }
};

// Bytes of one record of base and models xs (without the padding).
int64_t record_bytes(const Src& base, const std::vector<Src>& xs);

// Records of at most `bytes` for the blocks of n elements of base and models xs. The memory
// belongs to the calling thread and is kept between calls.
Records make_records(const Src& base, const std::vector<Src>& xs, int64_t n, int64_t bytes);

// Stores the records of block blk (elements off .. off + len): the elements whose flag
// unc[j] (0 or 1) is set. idx: kBlock + 8 uint32 of scratch. Thread-safe across blocks.
void record_block(Records& r, int64_t blk, int64_t off, const uint32_t* unc, int64_t len,
                  uint32_t* idx);

// One parallel pass over the records: for each selection active[q], its keys equal to hi and
// lo per block and its candidates (keys strictly inside its window) into scans[q] (its window
// already set), in per-thread lists like the window scan's (window.h), so that
// resolve_window (candidates.h) can take it from there. Selection s is of model s / sides
// (sides: 1 for TIES, one selection per model; 2 for breadcrumbs, two cuts per model).
// memory: the lists' memory, to keep while the scans are used.
void scan_records(const Records& rec, const std::vector<int>& active, int sides, int64_t n,
                  std::vector<WindowScan>& scans, std::unique_ptr<uint32_t[]>& memory,
                  int threads);

}  // namespace mergefast
