// Breadcrumbs in one read of the inputs (one_read_band.cpp): the default CPU path of
// breadcrumbs.cpp for tensors of at least one_read_min elements (kOneReadMin by default).
#pragma once

#include <cstdint>
#include <vector>

#include "../band.h"

namespace mergefast {

// Computes the band merge of `a` (its cuts are not read) into a.dst and returns true, or
// returns false when it cannot decide every element (a window missed, the records overflowed
// or would not fit, or no cut needs a threshold): the caller then runs the two passes, which
// rewrite all of a.dst. sides: each model twice (for its lower cut, then its upper one);
// keep: each cut's top-k count (the elements at or above it). On true, `finite` says whether
// every delta x_i - base was finite.
bool one_read_breadcrumbs(const BandArgs& a, bool consensus, const std::vector<Src>& sides,
                          const std::vector<int64_t>& keep, bool& finite);

}  // namespace mergefast
