// Breadcrumbs (breadcrumbs, breadcrumbs_ties) on the CPU: each model keeps the deltas at
// positions [lo, hi) of the reference's ascending stable |delta| order (ties lowest flat index
// first), found by the exact selection of select/ at two cut points; then one fused apply
// pass as task_arithmetic.cpp's (apply.h's arithmetic, the same order as the reference).
//
// Two cuts from the top-k selection. In the ascending stable order the ties of a key rank
// lowest index first, so "at or above position p" is key > T plus the LAST ties of T in flat
// order, where top-k (select_magnitude, k = n - p) keeps the FIRST ones: its rule gives T, its
// quota (how many ties) and, when the ties are split, their per-block counts, from which the
// last ones follow (Cut, band.h). A model keeps at-or-above(lo) and not at-or-above(hi): its two
// rules come from one select_magnitude call over 2K "models" (each input twice), so the
// window scan, the candidates and the histogram fallback are TIES' own. Tensors of at least
// one_read_min elements first try the one read of select/one_read_band.cpp (the same results).
#include <algorithm>

#include "band.h"
#include "common.h"
#include "kernels.h"
#include "select/one_read_band.h"
#include "select/two_pass.h"

namespace mergefast {
namespace {

// One block of the apply pass. Returns nonzero when a delta of the block is NaN or infinite.
template <bool Consensus>
MF_INLINE uint32_t band_block_impl(const BandArgs& a, float* const* bufs, float* const* wd, int64_t blk) {
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  uint32_t nonfinite = 0;
  for (int i = 0; i < a.K; ++i) {
    nonfinite |= weigh_band_model<Consensus>(a, i, (*a.xs)[i], off, blk, b, len, bufs[2], wd[i], mixed);
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

template <bool Consensus>
MF_TARGET_AVX512BW uint32_t band_block_avx512(const BandArgs& a, float* const* bufs, float* const* wd,
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
  if (cpu_has_avx512bw()) block = &band_block_avx512<Consensus>;
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
                 bool normalize, float divisor, float lambda, const Dst& dst, int64_t n,
                 int64_t one_read_min, int threads) {
  std::vector<Src> sides;
  std::vector<int64_t> keep;  // top-k counts: at or above lo (n - lo), at or above hi (n - hi)
  for (size_t i = 0; i < xs.size(); ++i) {
    const bool none = hi[i] <= lo[i];  // an empty band: both cuts select nothing
    sides.insert(sides.end(), {xs[i], xs[i]});
    keep.insert(keep.end(), {none ? 0 : n - lo[i], none ? 0 : n - hi[i]});
  }
  BandArgs a{};
  static_cast<ApplyArgs&>(a) = ApplyArgs{&base, &xs, w.data(), nullptr, normalize, lambda != 1.0f,
                                         divisor, lambda, dst, n, static_cast<int>(xs.size()), threads};
  bool finite = false;
  if (one_read_min > 0 && n >= one_read_min && one_read_breadcrumbs(a, consensus, sides, keep, finite)) {
    return finite;
  }
  // The selection uses the output as scratch: the apply pass rewrites all of it.
  const std::vector<KeepRule> rules =
      select_magnitude(base, sides, keep, n, dst.ptr, static_cast<size_t>(n) * dtype_size(dst.dt), threads);
  std::vector<Cut> cuts(rules.begin(), rules.end());
  a.cuts = cuts.data();
  return consensus ? band_apply<true>(a) : band_apply<false>(a);
}

}  // namespace mergefast
