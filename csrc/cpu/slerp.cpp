// slerp: one fused reduction pass (<a,a>, <b,b>, <a,b>: float32 per block, float64 across
// blocks, in block order) and one elementwise pass out = c0 * a + c1 * b. The coefficients
// are computed in Python from the reductions with the reference's own `slerp_coefficients`.
#include <vector>

#include "common.h"
#include "kernels.h"

namespace mergefast {

void slerp_dots(const Src& sa, const Src& sb, int64_t n, int threads, double dots[3]) {
  // Each block's three sums in its own slot, then the blocks added in order: the same float64
  // totals on any thread count (an OpenMP reduction adds the threads' partials in an order of
  // its own, and blocks whose magnitudes differ by 2^30 or more then round differently).
  std::vector<double> part(static_cast<size_t>(num_blocks(n)) * 3);
  for_each_block_raw(n, team_size(n, threads), 2, [&](int, int64_t blk, int64_t off, int64_t len, Scratch& s) {
    const float* x = stage(sa, off, len, s.buf(0));
    const float* y = stage(sb, off, len, s.buf(1));
    // 16 float32 lanes per block (vectorised, and more accurate than one running sum).
    constexpr int L = 16;
    float p_aa[L] = {0}, p_bb[L] = {0}, p_ab[L] = {0};
    int64_t j = 0;
    for (; j + L <= len; j += L) {
      for (int l = 0; l < L; ++l) {
        p_aa[l] += x[j + l] * x[j + l];
        p_bb[l] += y[j + l] * y[j + l];
        p_ab[l] += x[j + l] * y[j + l];
      }
    }
    for (; j < len; ++j) {
      p_aa[0] += x[j] * x[j];
      p_bb[0] += y[j] * y[j];
      p_ab[0] += x[j] * y[j];
    }
    double* sums = part.data() + blk * 3;
    sums[0] = sums[1] = sums[2] = 0.0;
    for (int l = 0; l < L; ++l) {
      sums[0] += p_aa[l];
      sums[1] += p_bb[l];
      sums[2] += p_ab[l];
    }
  });
  dots[0] = dots[1] = dots[2] = 0.0;
  for (size_t q = 0; q < part.size(); ++q) dots[q % 3] += part[q];
}

void slerp_apply(const Src& sa, const Src& sb, float f0, float f1, const Dst& dst, int64_t n,
                 int threads) {
  for_each_block_raw(n, std::max(1, threads), 3, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    const float* x = stage(sa, off, len, s.buf(0));
    const float* y = stage(sb, off, len, s.buf(1));
    float* r = s.buf(2);
    for (int64_t j = 0; j < len; ++j) r[j] = f0 * x[j] + f1 * y[j];
    store(dst, off, len, r);
  });
}

}  // namespace mergefast
