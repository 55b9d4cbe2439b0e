// slerp: one fused reduction pass (<a,a>, <b,b>, <a,b>: float32 per block, float64 across
// blocks, in block order) and one elementwise pass out = c0 * a + c1 * b. The coefficients
// are computed in Python from the reductions with the reference's own `slerp_coefficients`.
// Both block loops have an AVX2 clone (the same float32 operations per lane, wider vectors).
// 5632 x 2048 bf16, 2 threads of a 2-vCPU Intel Xeon VM: the dots 1.6 ms and the apply 2.3 ms,
// against 4.9 and 3.1 ms with SSE2 alone and the three products in one loop; one 7B layer
// (11008 x 4096) 20.8 against 38.0 ms (benchmarks/ab_libs.py, medians of 10).
#include <vector>

#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

constexpr int kLanes = 16;

// p[l] += x[j] * y[j] for j = l mod 16 in index order (the tail into lane 0): one product
// per loop, which vectorises into whole-register lanes (three products in one loop had the
// compiler interleave them with shuffles, ~2 cycles an element).
MF_INLINE void dot_lanes(const float* x, const float* y, int64_t len, float* p) {
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) p[l] += x[j + l] * y[j + l];
  }
  for (; j < len; ++j) p[0] += x[j] * y[j];
}

// <a,a>, <b,b>, <a,b> of block (off, len) into sums[0..3): 16 float32 lanes (vectorised, and
// more accurate than one running sum), then the lanes in order in float64.
MF_INLINE void dots_block_impl(const Src& sa, const Src& sb, int64_t off, int64_t len, Scratch& s, double* sums) {
  const float* x = stage(sa, off, len, s.buf(0));
  const float* y = stage(sb, off, len, s.buf(1));
  float p[3][kLanes] = {};
  dot_lanes(x, x, len, p[0]);
  dot_lanes(y, y, len, p[1]);
  dot_lanes(x, y, len, p[2]);
  for (int q = 0; q < 3; ++q) {
    sums[q] = 0.0;
    for (int l = 0; l < kLanes; ++l) sums[q] += p[q][l];
  }
}

void dots_block_default(const Src& sa, const Src& sb, int64_t off, int64_t len, Scratch& s, double* sums) {
  dots_block_impl(sa, sb, off, len, s, sums);
}

MF_INLINE void apply_block_impl(const Src& sa, const Src& sb, float f0, float f1, const Dst& dst, int64_t off,
                                int64_t len, Scratch& s) {
  const float* x = stage(sa, off, len, s.buf(0));
  const float* y = stage(sb, off, len, s.buf(1));
  float* r = s.buf(2);
  for (int64_t j = 0; j < len; ++j) r[j] = f0 * x[j] + f1 * y[j];
  store(dst, off, len, r);
}

void apply_block_default(const Src& sa, const Src& sb, float f0, float f1, const Dst& dst, int64_t off, int64_t len,
                         Scratch& s) {
  apply_block_impl(sa, sb, f0, f1, dst, off, len, s);
}

#if MF_AVX2_CLONES
MF_TARGET_AVX2 void dots_block_avx2(const Src& sa, const Src& sb, int64_t off, int64_t len, Scratch& s,
                                    double* sums) {
  dots_block_impl(sa, sb, off, len, s, sums);
}

MF_TARGET_AVX512BW void dots_block_avx512(const Src& sa, const Src& sb, int64_t off, int64_t len, Scratch& s,
                                          double* sums) {
  dots_block_impl(sa, sb, off, len, s, sums);
}

MF_TARGET_AVX2 void apply_block_avx2(const Src& sa, const Src& sb, float f0, float f1, const Dst& dst, int64_t off,
                                     int64_t len, Scratch& s) {
  apply_block_impl(sa, sb, f0, f1, dst, off, len, s);
}

MF_TARGET_AVX512BW void apply_block_avx512(const Src& sa, const Src& sb, float f0, float f1, const Dst& dst,
                                           int64_t off, int64_t len, Scratch& s) {
  apply_block_impl(sa, sb, f0, f1, dst, off, len, s);
}
#endif

}  // namespace

void slerp_dots(const Src& sa, const Src& sb, int64_t n, int threads, double dots[3]) {
  auto block = &dots_block_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &dots_block_avx2;
  if (cpu_has_avx512bw()) block = &dots_block_avx512;
#endif
  // Each block's three sums in its own slot, then the blocks added in order: the same float64
  // totals on any thread count (an OpenMP reduction adds the threads' partials in an order of
  // its own, and blocks whose magnitudes differ by 2^30 or more then round differently). They
  // are added to the caller's `dots`: a tensor cut into parts of whole blocks, its parts' dots
  // added in order, gets the sums of the whole tensor bit for bit.
  std::vector<double> part(static_cast<size_t>(num_blocks(n)) * 3);
  for_each_block_raw(n, team_size(n, threads), 2, [&](int, int64_t blk, int64_t off, int64_t len, Scratch& s) {
    block(sa, sb, off, len, s, part.data() + blk * 3);
  });
  for (size_t q = 0; q < part.size(); ++q) dots[q % 3] += part[q];
}

void slerp_apply(const Src& sa, const Src& sb, float f0, float f1, const Dst& dst, int64_t n,
                 int threads) {
  auto block = &apply_block_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &apply_block_avx2;
  if (cpu_has_avx512bw()) block = &apply_block_avx512;
#endif
  for_each_block_raw(n, std::max(1, threads), 3, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    block(sa, sb, f0, f1, dst, off, len, s);
  });
}

}  // namespace mergefast
