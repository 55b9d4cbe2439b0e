// slerp: one fused reduction pass (<a,a>, <b,b>, <a,b>: float32 per block, float64 across
// blocks) and one elementwise pass out = c0 * a + c1 * b. The coefficients are computed in
// Python from the reductions with the reference's own `slerp_coefficients`.
#include "common.h"
#include "kernels.h"

namespace mergefast {

void slerp_dots(const Src& sa, const Src& sb, int64_t n, int threads, double dots[3]) {
  const int64_t nb = num_blocks(n);
  double aa = 0.0, bb = 0.0, ab = 0.0;
#pragma omp parallel num_threads(std::max(1, threads)) reduction(+ : aa, bb, ab)
  {
    Scratch scratch(2);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t off = blk * kBlock;
      const int64_t len = std::min(kBlock, n - off);
      const float* x = stage(sa, off, len, scratch.buf(0));
      const float* y = stage(sb, off, len, scratch.buf(1));
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
      double s_aa = 0.0, s_bb = 0.0, s_ab = 0.0;
      for (int l = 0; l < L; ++l) {
        s_aa += p_aa[l];
        s_bb += p_bb[l];
        s_ab += p_ab[l];
      }
      aa += s_aa;
      bb += s_bb;
      ab += s_ab;
    }
  }
  dots[0] = aa;
  dots[1] = bb;
  dots[2] = ab;
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
