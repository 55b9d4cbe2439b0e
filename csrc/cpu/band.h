// The band arithmetic of breadcrumbs (breadcrumbs.cpp): each model keeps the deltas between two
// cuts of its ascending stable |delta| order, weighted and summed as the TIES apply does
// (apply.h). Shared by the two-pass apply (breadcrumbs.cpp) and the one-read pass with its
// fix-up (select/one_read_band.cpp, select/fix_up.cpp): the same float32 operations in the
// same order wherever an element is computed.
#pragma once

#include "apply.h"

namespace mergefast {

// The elements at or above one cut of the ascending stable order: key > thr, plus the ties of
// thr but the first `skip` of them in flat order (of a top-k KeepRule, which keeps the first
// `quota`: skip = ties - quota).
struct Cut {
  const KeepRule* rule;
  int64_t skip = 0;

  explicit Cut(const KeepRule& r) : rule(&r) {
    if (r.cut) skip = r.eq_before.back() + r.eq_in.back() - r.quota;
  }

  // For block `blk`: true and `teff` when the block's side is "key >= teff"; false and `rem`
  // (its first ties still to skip) when the block straddles the cut.
  bool block_rule(int64_t blk, uint32_t& teff, int64_t& rem) const {
    teff = rule->thr;
    if (!rule->cut) return true;
    const int64_t eb = rule->eq_before[blk];
    if (eb >= skip) return true;
    if (eb + rule->eq_in[blk] <= skip) {
      teff = rule->thr + 1;
      return true;
    }
    rem = skip - eb;
    return false;
  }
};

// Whether `key` is at or above a cut, for a block with the cut's block_rule (whole, teff,
// rem); rem counts down the ties skipped so far (flat order).
MF_INLINE bool above(uint32_t key, bool whole, uint32_t teff, uint32_t thr, int64_t& rem) {
  if (whole) return key >= teff;
  if (key != thr) return key > thr;
  return rem-- <= 0;
}

// The apply's arguments plus each model's two cuts (lo: keep at or above, hi: drop at or
// above).
struct BandArgs : ApplyArgs {
  const Cut* cuts;  // 2i: lo, 2i + 1: hi
};

// Model i's weighted kept deltas for a block whose cuts are whole: kept where a <= key < c
// (x converted as it is read), stored to `wd` when the consensus needs them and added to the
// running sum `mixed` (from 0.0f for model 0, as the reference's sum() does). Returns nonzero
// when a delta is NaN or infinite.
template <DType D, bool Consensus, bool First>
MF_INLINE uint32_t weigh_band(const void* xp, int64_t off, const float* b, int64_t len, uint32_t a,
                              uint32_t c, float wi, float* wd, float* mixed) {
  uint32_t nonfinite = 0;
  for (int64_t j = 0; j < len; ++j) {
    float d = load_f32<D>(xp, off + j) - b[j];
    const uint32_t key = mag_key(d);
    nonfinite |= key >= kNonFiniteKey;
    d = key >= a && key < c ? d : 0.0f;
    const float v = d * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
  return nonfinite;
}

template <DType D, bool Consensus>
MF_INLINE uint32_t weigh_band_dt(bool first, const void* xp, int64_t off, const float* b, int64_t len,
                                 uint32_t lo, uint32_t hi, float wi, float* wd, float* mixed) {
  if (first) return weigh_band<D, Consensus, true>(xp, off, b, len, lo, hi, wi, wd, mixed);
  return weigh_band<D, Consensus, false>(xp, off, b, len, lo, hi, wi, wd, mixed);
}

// Model i's share of block blk, from x's elements off .. off + len (the block itself, or the
// block's records in the fix-up) and the staged base b: whole blocks by weigh_band, a block
// where a cut splits its ties walked in flat order in `d` (kBlock floats of scratch; the
// records hold every key equal to a cut's threshold, in flat order).
template <bool Consensus>
MF_INLINE uint32_t weigh_band_model(const BandArgs& a, int i, const Src& x, int64_t off, int64_t blk,
                                    const float* b, int64_t len, float* d, float* wd, float* mixed) {
  const Cut &lo = a.cuts[2 * i], &hi = a.cuts[2 * i + 1];
  uint32_t tlo = 0, thi = 0;
  int64_t rlo = 0, rhi = 0;
  const bool wlo = lo.block_rule(blk, tlo, rlo), whi = hi.block_rule(blk, thi, rhi);
  if (wlo && whi) {
    const float wi = a.w[i];
    switch (x.dt) {
      case DType::BF16: return weigh_band_dt<DType::BF16, Consensus>(i == 0, x.ptr, off, b, len, tlo, thi, wi, wd, mixed);
      case DType::F16: return weigh_band_dt<DType::F16, Consensus>(i == 0, x.ptr, off, b, len, tlo, thi, wi, wd, mixed);
      default: return weigh_band_dt<DType::F32, Consensus>(i == 0, x.ptr, off, b, len, tlo, thi, wi, wd, mixed);
    }
  }
  const uint32_t nonfinite = deltas(stage(x, off, len, d), b, len, d);
  const float wi = a.w[i];
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t key = mag_key(d[j]);
    const bool in_lo = above(key, wlo, tlo, lo.rule->thr, rlo);  // both count their ties
    const bool in_hi = above(key, whi, thi, hi.rule->thr, rhi);
    const float v = (in_lo && !in_hi ? d[j] : 0.0f) * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (i == 0 ? 0.0f : mixed[j]) + v;
  }
  return nonfinite;
}

}  // namespace mergefast
