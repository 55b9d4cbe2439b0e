// The fix-up of the one-read pass (fix_up.cpp).
#pragma once

#include "../apply.h"
#include "../band.h"
#include "records.h"

namespace mergefast {

// Recomputes every recorded element with the exact rules in `a` (the apply's own weigh_model
// and combine_block, so the result is bit-identical to the two-pass scheme's) and stores it
// to a.dst.
void fix_up(const ApplyArgs& a, const Records& rec, bool consensus);

// The same for breadcrumbs' bands (band.h's weigh_band_model with the exact cuts in `a`).
void fix_up(const BandArgs& a, const Records& rec, bool consensus);

}  // namespace mergefast
