// Breadcrumbs (breadcrumbs, breadcrumbs_ties) on the CPU: each model keeps the deltas at
// positions [lo, hi) of the reference's ascending stable |delta| order (ties lowest flat index
// first), found by the exact selection of select/ at two cut points; then one fused apply
// pass as task_arithmetic.cpp's (apply.h's arithmetic, the same order as the reference).
//
// Two cuts from the top-k selection. In the ascending stable order the ties of a key rank
// lowest index first, so "at or above position p" is key > T plus the LAST ties of T in flat
// order, where top-k (select_magnitude, k = n - p) keeps the FIRST ones: its rule gives T, its
// quota (how many ties) and, when the ties are split, their per-block counts, from which the
// last ones follow (Cut below). A model keeps at-or-above(lo) and not at-or-above(hi): its two
// rules come from one select_magnitude call over 2K "models" (each input twice), so the
// window scan, the candidates and the histogram fallback are TIES' own.
#include <algorithm>

#include "apply.h"
#include "common.h"
#include "kernels.h"
#include "select/two_pass.h"

namespace mergefast {
namespace {

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
MF_INLINE uint32_t weigh_band_dt(const BandArgs& a, int i, int64_t off, const float* b, int64_t len,
                                 uint32_t lo, uint32_t hi, float* wd, float* mixed) {
  const void* xp = (*a.xs)[i].ptr;
  if (i == 0) return weigh_band<D, Consensus, true>(xp, off, b, len, lo, hi, a.w[i], wd, mixed);
  return weigh_band<D, Consensus, false>(xp, off, b, len, lo, hi, a.w[i], wd, mixed);
}

// Model i's share of block blk: whole blocks by weigh_band, a block where a cut splits its
// ties walked in flat order in `d` (kBlock floats of scratch).
template <bool Consensus>
MF_INLINE uint32_t weigh_band_model(const BandArgs& a, int i, int64_t off, int64_t blk,
                                    const float* b, int64_t len, float* d, float* wd, float* mixed) {
  const Cut &lo = a.cuts[2 * i], &hi = a.cuts[2 * i + 1];
  uint32_t tlo = 0, thi = 0;
  int64_t rlo = 0, rhi = 0;
  const bool wlo = lo.block_rule(blk, tlo, rlo), whi = hi.block_rule(blk, thi, rhi);
  if (wlo && whi) {
    switch ((*a.xs)[i].dt) {
      case DType::BF16: return weigh_band_dt<DType::BF16, Consensus>(a, i, off, b, len, tlo, thi, wd, mixed);
      case DType::F16: return weigh_band_dt<DType::F16, Consensus>(a, i, off, b, len, tlo, thi, wd, mixed);
      default: return weigh_band_dt<DType::F32, Consensus>(a, i, off, b, len, tlo, thi, wd, mixed);
    }
  }
  const uint32_t nonfinite = deltas(stage((*a.xs)[i], off, len, d), b, len, d);
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

// One block of the apply pass. Returns nonzero when a delta of the block is NaN or infinite.
template <bool Consensus>
MF_INLINE uint32_t band_block_impl(const BandArgs& a, float* const* bufs, float* const* wd, int64_t blk) {
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  uint32_t nonfinite = 0;
  for (int i = 0; i < a.K; ++i) {
    nonfinite |= weigh_band_model<Consensus>(a, i, off, blk, b, len, bufs[2], wd[i], mixed);
  }
  combine_block<Consensus>(a, wd, b, mixed, bufs[2], len, bufs[3], bufs[4]);
  store(a.dst, off, len, bufs[2]);
  return nonfinite;
}

template <bool Consensus>
uint32_t band_block_default(const BandArgs& a, float* const* bufs, float* const* wd, int64_t blk) {
  return band_block_impl<Consensus>(a, bufs, wd, blk);
}

#if MF_AVX2_CLONES
template <bool Consensus>
MF_TARGET_AVX2 uint32_t band_block_avx2(const BandArgs& a, float* const* bufs, float* const* wd,
                                        int64_t blk) {
  return band_block_impl<Consensus>(a, bufs, wd, blk);
}
#endif

// Returns true when every delta was finite, i.e. base and every model are.
template <bool Consensus>
bool band_apply(const BandArgs& a) {
  auto block = &band_block_default<Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &band_block_avx2<Consensus>;
#endif
  const int K = a.K;
  const auto merge = [&](float* const* bufs, float* const* wd, int64_t blk) {
    return block(a, bufs, wd, blk);
  };
  return apply_blocks<Consensus>(a.n, K, a.threads, merge);
}

}  // namespace

bool breadcrumbs(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
                 const std::vector<int64_t>& lo, const std::vector<int64_t>& hi, bool consensus,
                 bool normalize, float divisor, float lambda, const Dst& dst, int64_t n, int threads) {
  std::vector<Src> sides;
  std::vector<int64_t> keep;  // top-k counts: at or above lo (n - lo), at or above hi (n - hi)
  for (size_t i = 0; i < xs.size(); ++i) {
    const bool none = hi[i] <= lo[i];  // an empty band: both cuts select nothing
    sides.insert(sides.end(), {xs[i], xs[i]});
    keep.insert(keep.end(), {none ? 0 : n - lo[i], none ? 0 : n - hi[i]});
  }
  // The selection uses the output as scratch: the apply pass rewrites all of it.
  const std::vector<KeepRule> rules =
      select_magnitude(base, sides, keep, n, dst.ptr, static_cast<size_t>(n) * dtype_size(dst.dt), threads);
  std::vector<Cut> cuts(rules.begin(), rules.end());
  BandArgs a{};
  static_cast<ApplyArgs&>(a) = ApplyArgs{&base, &xs, w.data(), nullptr, normalize, lambda != 1.0f,
                                         divisor, lambda, dst, n, static_cast<int>(xs.size()), threads};
  a.cuts = cuts.data();
  return consensus ? band_apply<true>(a) : band_apply<false>(a);
}

}  // namespace mergefast
