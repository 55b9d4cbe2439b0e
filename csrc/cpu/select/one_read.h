// Magnitude-sparsified task arithmetic / TIES in one read of the inputs (one_read.cpp): the
// default CPU path for tensors of at least kOneReadMin elements.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "../common.h"

namespace mergefast {

// Smaller tensors take the two passes: their second read hits the cache (on a 2-vCPU AMD
// EPYC VM, bf16 base + 3 models, one job at a time: 1M elements 1.84 ms in one read, 1.82 ms
// in two; 2.1M 4.4 vs 4.6 ms; 16.8M 34 vs 47 ms). From 2^20: two jobs side by side
// (host/side_by_side.py, as a merge runs TIES) evict each other's inputs between the two
// passes; the 0.3B family's 147 TIES jobs with its 64 attention tensors of 2^20 elements in
// one read (benchmarks/jobs.py, 2-vCPU Intel Xeon VM): side by side 0.92-0.94x the time,
// alone on two threads 0.96-0.99x; breadcrumbs_ties side by side 0.95x. The default of the
// C API's one_read_min.
constexpr int64_t kOneReadMin = 1 << 20;

// Computes the merge into dst and returns true, or returns false when it cannot decide
// every element (a window missed, the records overflowed or would not fit, or no model needs
// a threshold): the caller then runs the two-pass scheme, which rewrites all of dst.
// On true, `finite` says whether every delta x_i - base was finite. The caller decides the
// size from which to try it (kOneReadMin by default).
bool one_read_task_arithmetic(bool consensus, const Src& base, const std::vector<Src>& xs,
                              const std::vector<float>& w, const std::vector<int64_t>& keep,
                              bool normalize, float divisor, float lambda, const Dst& dst,
                              int64_t n, int threads, bool& finite);

// Calls since the library was loaded that the one-read pass finished, and that fell back to
// two passes.
std::pair<int64_t, int64_t> one_read_counts();

}  // namespace mergefast
