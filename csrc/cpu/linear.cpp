// linear: out = sum_i(w_i * x_i) [/ total], float32 arithmetic in the reference's order
// (acc = acc + w_i * x_i, two roundings), one rounding to the output dtype.
// Reads each input once and writes the output once; no temporaries beyond per-thread blocks.
#include "common.h"
#include "kernels.h"

namespace mergefast {

void linear(const std::vector<Src>& xs, const std::vector<float>& w, bool divide, float total,
            const Dst& dst, int64_t n, int threads) {
  const int K = static_cast<int>(xs.size());
  for_each_block_raw(n, std::max(1, threads), 2, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    float* acc = s.buf(0);
    float* xbuf = s.buf(1);
    for (int64_t j = 0; j < len; ++j) acc[j] = 0.0f;
    for (int i = 0; i < K; ++i) {
      const float* x = stage(xs[i], off, len, xbuf);
      const float wi = w[i];
      for (int64_t j = 0; j < len; ++j) acc[j] = acc[j] + wi * x[j];
    }
    if (divide) {
      for (int64_t j = 0; j < len; ++j) acc[j] = acc[j] / total;
    }
    store(dst, off, len, acc);
  });
}

}  // namespace mergefast
