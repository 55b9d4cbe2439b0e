// Exact selection by full histogram passes over the keys (histogram.cpp): what decides the
// models whose sampled window missed their threshold or whose candidates overflowed.
#pragma once

#include "window.h"

namespace mergefast {

// The rules of the models `models` (indices into xs) into rules: the bucket (top 15 bits) of
// each one's keep[i]-th largest key from one histogram pass over all its keys, the exact key
// inside it from a second (low 16 bits), then per-block counts of it when its ties are split.
void select_by_histograms(const Src& base, const std::vector<Src>& xs,
                          const std::vector<int>& models, const std::vector<int64_t>& keep,
                          int64_t n, std::vector<KeepRule>& rules, int threads);

}  // namespace mergefast
