// Breadcrumbs in one read of the inputs (see one_read_band.h): one_read.cpp's scheme with two
// cuts per model.
//
// A model keeps the deltas at or above its lower cut and not at or above its upper one
// (band.h). Each cut is a top-k threshold T in a sampled window [lo, hi], so before any T is
// known: a key above the lower cut's hi is at or above it, one below its lo is not; a key
// below the upper cut's lo is not at or above that cut, one above its hi is. The pass keeps
// the band "lower hi < key < upper lo" (band.h's weigh_band with those bounds), counts the
// keys above each window's hi and records every element whose key lies in either of its
// model's windows (records.h: the base's and every model's values, once per element). The
// thresholds then come from the counts and the records (resolve_all, two cuts per model),
// and the fix-up recomputes the records with the exact cuts through band.h's own arithmetic:
// every key equal to a threshold is recorded, so ties are ranked in flat order along the
// records, and the output is bit-identical to the two passes' (breadcrumbs.cpp).
#include "one_read_band.h"

#include "fix_up.h"
#include "one_read_parts.h"

namespace mergefast {
namespace {

// The records' memory, in outputs' worth (one_read.cpp's TIES takes one). Two windows per model record about twice as many elements: bf16 fine-tunes (base +
// 3, 2816 x 1024, density 0.5, gamma 0.01) put 18 % of the elements in some window, 1.72
// bytes per element of records against the output's 2, which one output's worth at
// kRecordFill would not take. The memory is touched only as used.
constexpr double kRecordOutputs = 1.5;

// One model's share of a block of the pass: kept where a <= key < c (the band no exact cut
// can change), weighted into wd and summed into mixed as band.h's weigh_band; "key in wlo or
// whi" or-ed into the block's uncertain flags unc; the keys above wlo.hi and whi.hi into
// above[0] and above[1]. Returns nonzero when a delta is NaN or infinite.
template <DType D, bool Consensus, bool First>
MF_INLINE uint32_t band_read_weigh(const void* xp, int64_t off, const float* b, int64_t len,
                                   uint32_t a, uint32_t c, float wi, Window wlo, Window whi,
                                   float* wd, float* mixed, uint32_t* unc, uint32_t* above) {
  // keys are < 2^31: signed compares vectorise
  const int32_t llo = static_cast<int32_t>(wlo.lo), lhi = static_cast<int32_t>(wlo.hi);
  const int32_t hlo = static_cast<int32_t>(whi.lo), hhi = static_cast<int32_t>(whi.hi);
  uint32_t nonfinite = 0, count_lo = 0, count_hi = 0;
  for (int64_t j = 0; j < len; ++j) {
    float d = load_f32<D>(xp, off + j) - b[j];
    const uint32_t key = mag_key(d);
    nonfinite |= key >= kNonFiniteKey;
    const int32_t k = static_cast<int32_t>(key);
    const uint32_t over_lo = k > lhi, over_hi = k > hhi;
    count_lo += over_lo;
    count_hi += over_hi;
    const uint32_t in = (static_cast<uint32_t>(k >= llo) & (over_lo ^ 1u)) |
                        (static_cast<uint32_t>(k >= hlo) & (over_hi ^ 1u));
    unc[j] = First ? in : (unc[j] | in);
    d = key >= a && key < c ? d : 0.0f;
    const float v = d * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
  above[0] = count_lo;
  above[1] = count_hi;
  return nonfinite;
}

template <DType D, bool Consensus>
MF_INLINE uint32_t band_read_weigh_any(bool first, const void* xp, int64_t off, const float* b,
                                       int64_t len, uint32_t a, uint32_t c, float wi, Window wlo,
                                       Window whi, float* wd, float* mixed, uint32_t* unc,
                                       uint32_t* above) {
  if (first) return band_read_weigh<D, Consensus, true>(xp, off, b, len, a, c, wi, wlo, whi, wd, mixed, unc, above);
  return band_read_weigh<D, Consensus, false>(xp, off, b, len, a, c, wi, wlo, whi, wd, mixed, unc, above);
}

// What the pass needs besides the apply's arguments (whose cuts it does not read).
struct BandPass {
  const BandArgs* band;
  const uint32_t* from;         // per model: the pass keeps from <= key < below
  const uint32_t* below;
  const Window* windows;        // per cut (2i lower, 2i + 1 upper; kNoWindow when known)
  uint32_t* const* above;       // per cut: keys above its window's hi per block, or null
  Records* records;
};

// One block of the pass (bufs as run_pass_blocks gives them).
template <bool Consensus>
MF_INLINE uint32_t band_pass_block_impl(const BandPass& p, float* const* bufs, float* const* wd,
                                        int64_t blk) {
  const BandArgs& a = *p.band;
  const int64_t off = blk * kBlock, len = std::min(kBlock, a.n - off);
  prefetch_after(a.base, *a.xs, off + len, a.n);  // common.h: breadcrumbs_ties' MLP jobs 0.98x
  const float* b = stage(*a.base, off, len, bufs[0]);
  uint32_t* unc = reinterpret_cast<uint32_t*>(bufs[2]);
  uint32_t nonfinite = 0;
  for (int i = 0; i < a.K; ++i) {
    const Src& x = (*a.xs)[i];
    const Window wlo = p.windows[2 * i], whi = p.windows[2 * i + 1];
    uint32_t above[2];
    switch (x.dt) {
      case DType::BF16:
        nonfinite |= band_read_weigh_any<DType::BF16, Consensus>(i == 0, x.ptr, off, b, len, p.from[i], p.below[i], a.w[i], wlo, whi, wd[i], bufs[1], unc, above);
        break;
      case DType::F16:
        nonfinite |= band_read_weigh_any<DType::F16, Consensus>(i == 0, x.ptr, off, b, len, p.from[i], p.below[i], a.w[i], wlo, whi, wd[i], bufs[1], unc, above);
        break;
      default:
        nonfinite |= band_read_weigh_any<DType::F32, Consensus>(i == 0, x.ptr, off, b, len, p.from[i], p.below[i], a.w[i], wlo, whi, wd[i], bufs[1], unc, above);
    }
    for (int s = 0; s < 2; ++s) {
      if (p.above[2 * i + s] != nullptr) p.above[2 * i + s][blk] = above[s];
    }
  }
  combine_block<Consensus>(a, wd, b, bufs[1], bufs[3], len, bufs[4], bufs[5]);
  store(a.dst, off, len, bufs[3]);
  record_block(*p.records, blk, off, unc, len, reinterpret_cast<uint32_t*>(bufs[4]));
  return nonfinite;
}

template <bool Consensus>
uint32_t band_pass_block_default(const BandPass& p, float* const* bufs, float* const* wd, int64_t blk) {
  return band_pass_block_impl<Consensus>(p, bufs, wd, blk);
}

#if MF_AVX2_CLONES
template <bool Consensus>
MF_TARGET_AVX2 uint32_t band_pass_block_avx2(const BandPass& p, float* const* bufs, float* const* wd,
                                             int64_t blk) {
  return band_pass_block_impl<Consensus>(p, bufs, wd, blk);
}

template <bool Consensus>
MF_TARGET_AVX512BW uint32_t band_pass_block_avx512(const BandPass& p, float* const* bufs, float* const* wd,
                                                   int64_t blk) {
  return band_pass_block_impl<Consensus>(p, bufs, wd, blk);
}
#endif

// The pass over every block; returns nonzero when a delta was not finite.
template <bool Consensus>
uint32_t run_band_pass(const BandPass& p) {
  auto block = &band_pass_block_default<Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &band_pass_block_avx2<Consensus>;
  if (cpu_has_avx512bw()) block = &band_pass_block_avx512<Consensus>;
#endif
  const BandArgs& a = *p.band;
  return run_pass_blocks(a.n, a.K, team_size(a.n, a.threads), [&](float* const* bufs, float* const* wd, int64_t blk) {
    return block(p, bufs, wd, blk);
  });
}

// Each model's band of the pass, from its cuts' rules (known ones) or windows (the others):
// from: above the lower cut's window; below: under the upper cut's window.
void pass_bands(const Prediction& p, const std::vector<KeepRule>& rules, int K,
                std::vector<uint32_t>& from, std::vector<uint32_t>& below) {
  for (int i = 0; i < K; ++i) {
    const int lo = 2 * i, hi = 2 * i + 1;
    // hi <= 0x7FFFFFFF: no wrap-around
    from[i] = p.above[lo] != nullptr ? p.windows[lo].hi + 1 : rules[lo].thr;
    below[i] = p.above[hi] != nullptr ? p.windows[hi].lo : rules[hi].thr;
  }
}

template <bool Consensus>
bool one_read_band(const BandArgs& a, const std::vector<Src>& sides, const std::vector<int64_t>& keep,
                   const std::vector<int>& active, std::vector<KeepRule>& rules, bool& finite) {
  Prediction p = predict(*a.base, sides, keep, active, a.n, a.threads);
  const auto capacity = static_cast<int64_t>(kRecordOutputs * static_cast<double>(output_bytes(a.dst, a.n)));
  if (!records_fit(p, *a.base, *a.xs, a.n, capacity)) return false;
  Records rec = make_records(*a.base, *a.xs, a.n, capacity);
  std::vector<uint32_t> from(a.K), below(a.K);
  pass_bands(p, rules, a.K, from, below);
  const uint32_t nonfinite = run_band_pass<Consensus>(
      BandPass{&a, from.data(), below.data(), p.windows.data(), p.above.data(), &rec});
  if (rec.overflow || !resolve_all(rec, keep, active, 2, a.n, p.scans, rules, a.threads)) return false;
  const std::vector<Cut> cuts(rules.begin(), rules.end());
  BandArgs exact = a;
  exact.cuts = cuts.data();
  fix_up(exact, rec, Consensus);
  finite = nonfinite == 0;
  return true;
}

}  // namespace

bool one_read_breadcrumbs(const BandArgs& a, bool consensus, const std::vector<Src>& sides,
                          const std::vector<int64_t>& keep, bool& finite) {
  std::vector<KeepRule> rules(sides.size());
  const std::vector<int> active = known_rules(keep, a.n, rules);
  if (active.empty()) return false;
  const bool done = consensus ? one_read_band<true>(a, sides, keep, active, rules, finite)
                              : one_read_band<false>(a, sides, keep, active, rules, finite);
  return count_one_read(done);
}

}  // namespace mergefast
