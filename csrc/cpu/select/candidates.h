// The threshold of a model from its window scan (candidates.cpp): at the window's hi, at its
// lo, or among its candidates, found by a radix select over the candidate keys alone.
#pragma once

#include "window.h"

namespace mergefast {

// The rule of a model keeping k of nb blocks' keys from its window scan; false when its k-th
// largest key is outside the window or the candidates are incomplete (then the histogram
// passes must decide).
bool resolve_window(const WindowScan& s, int64_t k, int64_t nb, KeepRule& r);

}  // namespace mergefast
