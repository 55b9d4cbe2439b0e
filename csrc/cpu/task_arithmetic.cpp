// Task arithmetic / TIES on the CPU: the exact magnitude selection (select/two_pass.cpp)
// gives each model a KeepRule, then one fused apply pass reads base and every model once more
// and, per element, in registers: deltas, keep masks, weighted deltas, the elected sign, the
// agreeing sum and divisor, the result, stored once. Nothing of size n is allocated but the
// output. With magnitude selection, tensors of at least one_read_min elements (2^20 by
// default) first try the one-read scheme of select/one_read.cpp (the same results; the two
// passes here when it cannot finish).
#include <algorithm>

#include "apply.h"
#include "common.h"
#include "kernels.h"
#include "select/one_read.h"
#include "select/two_pass.h"

namespace mergefast {
namespace {

// Returns nonzero when a delta of the block is NaN or infinite.
template <Sparsify S, bool Consensus>
MF_INLINE uint32_t apply_block_impl(const ApplyArgs& a, float* const* bufs, float* const* wd,
                                    int64_t blk) {
  constexpr bool Mag = S == Sparsify::Magnitude;
  const int K = a.K;
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  uint32_t nonfinite = 0;
  for (int i = 0; i < K; ++i) {
    nonfinite |= weigh_model<Mag, Consensus>(a, i, (*a.xs)[i], off, blk, b, len, bufs[2], wd[i], mixed);
  }
  float* res = bufs[2];
  combine_block<Consensus>(a, wd, b, mixed, res, len, bufs[3], bufs[4]);
  store(a.dst, off, len, res);
  return nonfinite;
}

template <Sparsify S, bool Consensus>
uint32_t apply_block_default(const ApplyArgs& a, float* const* bufs, float* const* wd,
                             int64_t blk) {
  return apply_block_impl<S, Consensus>(a, bufs, wd, blk);
}

#if MF_AVX2_CLONES
template <Sparsify S, bool Consensus>
MF_TARGET_AVX2 uint32_t apply_block_avx2(const ApplyArgs& a, float* const* bufs,
                                         float* const* wd, int64_t blk) {
  return apply_block_impl<S, Consensus>(a, bufs, wd, blk);
}

template <Sparsify S, bool Consensus>
MF_TARGET_AVX512BW uint32_t apply_block_avx512(const ApplyArgs& a, float* const* bufs,
                                               float* const* wd, int64_t blk) {
  return apply_block_impl<S, Consensus>(a, bufs, wd, blk);
}
#endif

// Returns true when every delta was finite, i.e. base and every model are.
template <Sparsify S, bool Consensus>
bool apply(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
           const std::vector<KeepRule>& rules, bool normalize, float divisor, float lambda,
           const Dst& dst, int64_t n, int threads) {
  static_assert(S == Sparsify::None || S == Sparsify::Magnitude,
                "magnitude_outliers is breadcrumbs.cpp, random (DARE) dare.cpp");
  const int K = static_cast<int>(xs.size());
  const ApplyArgs args{&base, &xs, w.data(), rules.empty() ? nullptr : rules.data(),
                       normalize, lambda != 1.0f, divisor, lambda, dst, n, K, threads};
  auto block = &apply_block_default<S, Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &apply_block_avx2<S, Consensus>;
  if (cpu_has_avx512bw()) block = &apply_block_avx512<S, Consensus>;
#endif
  const auto merge = [&](float* const* bufs, float* const* wd, int64_t blk) {
    return block(args, bufs, wd, blk);
  };
  return apply_blocks<Consensus>(n, K, threads, merge);
}

}  // namespace

bool task_arithmetic(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
                     const std::vector<int64_t>& keep, bool consensus, bool normalize,
                     float divisor, float lambda, const Dst& dst, int64_t n,
                     int64_t one_read_min, int threads) {
  if (keep.empty()) {
    std::vector<KeepRule> none;
    if (consensus) return apply<Sparsify::None, true>(base, xs, w, none, normalize, divisor, lambda, dst, n, threads);
    return apply<Sparsify::None, false>(base, xs, w, none, normalize, divisor, lambda, dst, n, threads);
  }
  bool finite = true;
  if (one_read_min > 0 && n >= one_read_min &&
      one_read_task_arithmetic(consensus, base, xs, w, keep, normalize, divisor, lambda, dst, n,
                               threads, finite)) {
    return finite;
  }
  // The selection uses the output as scratch: the apply pass rewrites all of it.
  const std::vector<KeepRule> rules = select_magnitude(
      base, xs, keep, n, dst.ptr, static_cast<size_t>(n) * dtype_size(dst.dt), threads);
  if (consensus) return apply<Sparsify::Magnitude, true>(base, xs, w, rules, normalize, divisor, lambda, dst, n, threads);
  return apply<Sparsify::Magnitude, false>(base, xs, w, rules, normalize, divisor, lambda, dst, n, threads);
}

void magnitude_keep(const Src& sb, const Src& sx, int64_t n, int64_t keep, bool* m,
                    int threads) {
  const std::vector<KeepRule> rules = select_magnitude(sb, {sx}, {keep}, n, m, static_cast<size_t>(n), threads);
  const KeepRule& r = rules[0];
  for_each_block_raw(n, std::max(1, threads), 3, [&](int, int64_t blk, int64_t off, int64_t len, Scratch& s) {
    const float* b = stage(sb, off, len, s.buf(0));
    const float* xx = stage(sx, off, len, s.buf(1));
    float* d = s.buf(2);
    for (int64_t j = 0; j < len; ++j) d[j] = xx[j] - b[j];
    uint32_t teff;
    int64_t rem = 0;
    if (r.block_rule(blk, teff, rem)) {
      for (int64_t j = 0; j < len; ++j) m[off + j] = mag_key(d[j]) >= teff;
    } else {
      walk_tie_block(r, rem, len, d, [m, off](int64_t j, bool kept) { m[off + j] = kept; });
    }
  });
}

}  // namespace mergefast
