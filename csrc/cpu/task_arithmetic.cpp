// Task arithmetic / TIES on the CPU: the exact magnitude selection (select.cpp) gives each
// model a KeepRule, then one fused apply pass reads base and every model once more and, per
// element, in registers: deltas, keep masks, weighted deltas, the elected sign, the agreeing
// sum and divisor, the result, stored once. Nothing of size n is allocated but the output.
// With magnitude selection, tensors of at least 2^21 elements first try the one-read scheme
// of speculative.cpp (the same results; the two passes here when it cannot finish).
#include <algorithm>

#include "apply.h"
#include "common.h"
#include "kernels.h"
#include "select.h"
#include "speculative.h"

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
#endif

// Returns true when every delta was finite, i.e. base and every model are.
template <Sparsify S, bool Consensus>
bool apply(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
           const std::vector<KeepRule>& rules, bool normalize, float divisor, float lambda,
           const Dst& dst, int64_t n) {
  static_assert(S == Sparsify::None || S == Sparsify::Magnitude,
                "magnitude_outliers and random sparsification are not implemented yet");
  const int K = static_cast<int>(xs.size());
  const int64_t nb = num_blocks(n);
  const ApplyArgs args{&base, &xs, w.data(), rules.empty() ? nullptr : rules.data(),
                       normalize, lambda != 1.0f, divisor, lambda, dst, n, K};
  auto block = &apply_block_default<S, Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &apply_block_avx2<S, Consensus>;
#endif
  uint32_t nonfinite = 0;
#pragma omp parallel num_threads(num_threads(n)) reduction(| : nonfinite)
  {
    // buffers: 0 base, 1 mixed, 2 delta (tie-cut block) / result, 3 acc, 4 dacc,
    // 5.. weighted deltas (consensus)
    Scratch scratch(5 + (Consensus ? K : 0));
    float* bufs[5];
    for (int q = 0; q < 5; ++q) bufs[q] = scratch.buf(q);
    std::vector<float*> wd(K, nullptr);
    if constexpr (Consensus) {
      for (int i = 0; i < K; ++i) wd[i] = scratch.buf(5 + i);
    }
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) nonfinite |= block(args, bufs, wd.data(), blk);
  }
  return nonfinite == 0;
}

}  // namespace

bool task_arithmetic_cpu(const at::Tensor& base, const std::vector<at::Tensor>& xs,
                         const std::vector<double>& weights, const std::vector<int64_t>& keep,
                         int64_t sparsify, bool consensus, bool normalize, double divisor,
                         double lambda, at::Tensor out, bool speculate) {
  const char* op = "task_arithmetic";
  TORCH_CHECK(!xs.empty() && xs.size() == weights.size(), op, ": tensors/weights mismatch");
  const int64_t n = out.numel();
  const Src sb = make_src(base, op);
  TORCH_CHECK(base.numel() == n, op, ": base and output sizes differ");
  std::vector<Src> src;
  std::vector<float> w;
  for (size_t i = 0; i < xs.size(); ++i) {
    TORCH_CHECK(xs[i].numel() == n, op, ": inputs have different sizes");
    src.push_back(make_src(xs[i], op));
    w.push_back(static_cast<float>(weights[i]));
  }
  const Dst dst = make_dst(out, op);
  // The selection uses `out` as scratch, and the apply writes it while it reads the inputs.
  TORCH_CHECK(!overlaps(out, base), op, ": the output overlaps an input");
  for (const at::Tensor& x : xs) TORCH_CHECK(!overlaps(out, x), op, ": the output overlaps an input");
  const float dv = static_cast<float>(divisor), lam = static_cast<float>(lambda);
  if (sparsify == static_cast<int64_t>(Sparsify::None)) {
    std::vector<KeepRule> none;
    if (consensus) return apply<Sparsify::None, true>(sb, src, w, none, normalize, dv, lam, dst, n);
    return apply<Sparsify::None, false>(sb, src, w, none, normalize, dv, lam, dst, n);
  }
  TORCH_CHECK(sparsify == static_cast<int64_t>(Sparsify::Magnitude), op, ": sparsify mode ",
              sparsify, " is not implemented in mergefast._C");
  TORCH_CHECK(keep.size() == xs.size(), op, ": one keep count per model expected");
  bool finite = true;
  if (speculate && speculative_task_arithmetic(consensus, sb, src, w, keep, normalize, dv, lam,
                                               dst, n, finite)) {
    return finite;
  }
  const std::vector<KeepRule> rules =
      select_magnitude(sb, src, keep, n, out.data_ptr(), static_cast<size_t>(out.nbytes()));
  if (consensus) return apply<Sparsify::Magnitude, true>(sb, src, w, rules, normalize, dv, lam, dst, n);
  return apply<Sparsify::Magnitude, false>(sb, src, w, rules, normalize, dv, lam, dst, n);
}

void magnitude_keep_cpu(const at::Tensor& base, const at::Tensor& x, int64_t keep, at::Tensor mask) {
  const char* op = "magnitude_keep";
  TORCH_CHECK(base.numel() == x.numel(), op, ": inputs have different sizes");
  const int64_t n = x.numel();
  const Src sb = make_src(base, op), sx = make_src(x, op);
  TORCH_CHECK(mask.numel() == n && mask.scalar_type() == at::kBool && mask.is_contiguous(), op,
              ": bad mask tensor");
  TORCH_CHECK(!overlaps(mask, base) && !overlaps(mask, x), op, ": the mask overlaps an input");
  const std::vector<KeepRule> rules =
      select_magnitude(sb, {sx}, {keep}, n, mask.data_ptr(), static_cast<size_t>(mask.nbytes()));
  bool* m = mask.data_ptr<bool>();
  const KeepRule& r = rules[0];
  for_each_block_raw(n, num_threads(), 3, [&](int, int64_t blk, int64_t off, int64_t len, Scratch& s) {
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
