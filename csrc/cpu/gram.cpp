// The reduction pass of the SLERP family (nuslerp, model_stock, multislerp, karcher): one read
// of the optional base and the K inputs gives, per row, every dot product <d_i, d_j> (i <= j)
// of the vectors d_i = x_i - base (x_i without a base). Everything those methods need before
// their elementwise pass (norms, cosines, the Karcher iteration's Gram matrix) comes from it.
//
// Numerics: d_i is the reference's float32 subtraction; each product is exact in float64 (24
// by 24 significant bits), summed in float64 over 8 fixed lanes per block (element j in lane
// j % 8, in index order), lanes pairwise, then the blocks of a row in order: the same sums on
// any thread count and in every build (tests/test_gram_cpu.py models this order). torch's
// float32 sums take another order (and round every partial sum to float32), so the callers'
// scalars differ from the reference's in their last bits: the tests apply DESIGN's tolerance
// rule.
//
// Speed: the x86-64 path (gram_lanes.h) converts each staged d_i to float64 once per 4
// elements and updates all pairs from registers with fused multiply-adds (exact products,
// so a*b+c rounds once either way: the same sums). On a 2-vCPU AMD EPYC (Zen 4) VM, one 7B
// layer (11008 x 4096 bf16), base + 3: ~60 ms with one dot product per pair, ~30 ms this way.
#include <algorithm>

#include "common.h"
#include "gram_lanes.h"
#include "kernels.h"

namespace mergefast {
namespace {

struct GramArgs {
  const Src* base;  // nullptr: the inputs themselves
  const std::vector<Src>* xs;
  int64_t rows, cols;
  int64_t per_row;  // blocks per row
  int K, P;         // inputs, pairs (K (K + 1) / 2)
};

// The staged d_i of one block of one row (segment `seg`) into d[0..K); returns the block length.
MF_INLINE int64_t stage_segment(const GramArgs& a, int64_t seg, Scratch& s, const float** d) {
  const int64_t row = seg / a.per_row, blk = seg % a.per_row;
  const int64_t off = row * a.cols + blk * kBlock;
  const int64_t len = std::min(kBlock, a.cols - blk * kBlock);
  prefetch_after(a.base, *a.xs, off + len, a.rows * a.cols);  // the next segment's elements
  stage_vectors(a.base, *a.xs, off, len, s, d);
  return len;
}

// sum_j x[j] * y[j] in float64: 8 lanes, then the lanes pairwise.
MF_INLINE double dot_f64(const float* x, const float* y, int64_t len) {
  constexpr int L = 8;
  double acc[L] = {};
  int64_t j = 0;
  for (; j + L <= len; j += L) {
    for (int l = 0; l < L; ++l) {
      acc[l] += static_cast<double>(x[j + l]) * static_cast<double>(y[j + l]);
    }
  }
  for (int l = 0; j < len; ++j, ++l) acc[l] += static_cast<double>(x[j]) * static_cast<double>(y[j]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The P dot products of one segment into part[0..P), one pair at a time (any build).
MF_INLINE void segment_impl(const GramArgs& a, int64_t seg, Scratch& s, double*, double* part) {
  const float* d[kGramMaxInputs];
  const int64_t len = stage_segment(a, seg, s, d);
  int q = 0;
  for (int i = 0; i < a.K; ++i) {
    for (int j = i; j < a.K; ++j) part[q++] = dot_f64(d[i], d[j], len);
  }
}

void segment_default(const GramArgs& a, int64_t seg, Scratch& s, double* lanes, double* part) {
  segment_impl(a, seg, s, lanes, part);
}

#if MF_AVX2_CLONES
MF_TARGET_AVX2 void segment_avx2(const GramArgs& a, int64_t seg, Scratch& s, double* lanes, double* part) {
  segment_impl(a, seg, s, lanes, part);
}

// The staged d_i of segment `seg` and its lanes zeroed (P x 8); the block length.
MF_INLINE int64_t zeroed_segment(const GramArgs& a, int64_t seg, Scratch& s, const float** d, double* lanes) {
  std::fill(lanes, lanes + a.P * 8, 0.0);
  return stage_segment(a, seg, s, d);
}

// Each pair's sum of its 8 lanes into part[0..P).
MF_INLINE void combine_pairs(const GramArgs& a, const double* lanes, double* part) {
  for (int p = 0; p < a.P; ++p) part[p] = combine_lanes(lanes + 8 * p);
}

// The same sums with every pair's 8 lanes updated from registers (gram_lanes.h).
MF_TARGET_FMA void segment_fma(const GramArgs& a, int64_t seg, Scratch& s, double* lanes, double* part) {
  const float* d[kGramMaxInputs];
  const int64_t len = zeroed_segment(a, seg, s, d, lanes);
  pair_lanes_fma(d, a.K, len, lanes);
  combine_pairs(a, lanes, part);
}

// The same sums, every pair's 8 lanes in one AVX-512 register (gram_lanes.h).
MF_TARGET_AVX512BW void segment_avx512(const GramArgs& a, int64_t seg, Scratch& s, double* lanes, double* part) {
  const float* d[kGramMaxInputs];
  const int64_t len = zeroed_segment(a, seg, s, d, lanes);
  pair_lanes_512(d, a.K, len, lanes);
  combine_pairs(a, lanes, part);
}
#endif

using SegmentFn = void (*)(const GramArgs&, int64_t, Scratch&, double*, double*);

SegmentFn pick_segment() {
#if MF_AVX2_CLONES
  if (cpu_has_avx512bw()) return &segment_avx512;
  if (cpu_has_avx2_fma()) return &segment_fma;
  if (cpu_has_avx2()) return &segment_avx2;
#endif
  return &segment_default;
}

}  // namespace

void gram(const Src* base, const std::vector<Src>& xs, int64_t rows, int64_t cols, int threads,
          double* out) {
  const int K = static_cast<int>(xs.size());
  check(K >= 1 && K <= kGramMaxInputs, "gram", "between 1 and 64 inputs expected");
  GramArgs a{base, &xs, rows, cols, std::max<int64_t>(1, num_blocks(cols)), K, K * (K + 1) / 2};
  if (rows == 0 || cols == 0) return;
  const SegmentFn segment = pick_segment();
  const int64_t segs = rows * a.per_row;
  // Partial sums per block, added in block order below to the caller's `out` (zeroed by it:
  // one row cut into parts of whole blocks, its parts' calls in order, gives the row's sums).
  std::vector<double> part(static_cast<size_t>(segs) * a.P);
  double* dest = part.data();
#pragma omp parallel num_threads(team_size(rows * cols, threads))
  {
    Scratch scratch(K + 1);
    std::vector<double> lanes(static_cast<size_t>(a.P) * 8);
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t seg = 0; seg < segs; ++seg) segment(a, seg, scratch, lanes.data(), dest + seg * a.P);
  }
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t blk = 0; blk < a.per_row; ++blk) {
      const double* p = dest + (row * a.per_row + blk) * a.P;
      for (int q = 0; q < a.P; ++q) out[row * a.P + q] += p[q];
    }
  }
}

}  // namespace mergefast
