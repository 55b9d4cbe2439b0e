// The selection pass of the two-pass scheme (two_pass.cpp): one KeepRule per model, which
// the apply pass (../task_arithmetic.cpp) then applies in a second read of the inputs.
#pragma once

#include <vector>

#include "rules.h"

namespace mergefast {

// Tensors of at most this many elements select with one thread and nth_element; larger
// ones with the sampled window (window.h).
constexpr int64_t kSmallSelect = 1 << 16;

// One KeepRule per model of `xs`: model i keeps its keep[i] largest |x_i - base| of n.
// `space` (space_bytes, 4-byte aligned) is memory the selection may use until it returns:
// the output tensor, which only the apply pass after it writes. The candidate lists then
// need no memory of their own (18 MB on a 7B layer otherwise: the output and 20 % more).
std::vector<KeepRule> select_magnitude(const Src& base, const std::vector<Src>& xs,
                                       const std::vector<int64_t>& keep, int64_t n,
                                       void* space, size_t space_bytes, int threads);

}  // namespace mergefast
