// Magnitude-sparsified task arithmetic / TIES in one read of the inputs (speculative.cpp):
// the default CPU path for tensors above kSmallSelect elements.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common.h"

namespace mergefast {

// Computes the merge into dst and returns true, or returns false when it cannot decide
// every element (a window missed, the records overflowed or would not fit, the tensor is
// small or no model needs a threshold): the caller then runs the two-pass scheme, which
// rewrites all of dst.
// On true, `finite` says whether every delta x_i - base was finite.
bool speculative_task_arithmetic(bool consensus, const Src& base, const std::vector<Src>& xs,
                                 const std::vector<float>& w, const std::vector<int64_t>& keep,
                                 bool normalize, float divisor, float lambda, const Dst& dst,
                                 int64_t n, bool& finite);

// Calls since import that the speculative pass finished, and that fell back to two passes.
std::pair<int64_t, int64_t> speculation_counts();

}  // namespace mergefast
