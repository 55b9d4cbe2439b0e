// linear: out = sum_i(w_i * x_i) [/ total], float32 arithmetic in the reference's order
// (acc = acc + w_i * x_i, two roundings), one rounding to the output dtype.
// Reads each input once and writes the output once; no temporaries beyond per-thread blocks.
#include "common.h"
#include "kernels.h"

namespace mergefast {

void linear_cpu(const std::vector<at::Tensor>& xs, const std::vector<double>& weights,
                bool divide, double total, at::Tensor out) {
  TORCH_CHECK(!xs.empty() && xs.size() == weights.size(), "linear: tensors/weights mismatch");
  const int64_t n = out.numel();
  std::vector<Src> src;
  std::vector<float> w;
  for (size_t i = 0; i < xs.size(); ++i) {
    TORCH_CHECK(xs[i].numel() == n, "linear: inputs have different sizes");
    src.push_back(make_src(xs[i], "linear"));
    w.push_back(static_cast<float>(weights[i]));
  }
  const Dst dst = make_dst(out, "linear");
  const float tot = static_cast<float>(total);
  const int K = static_cast<int>(src.size());
  for_each_block_raw(n, num_threads(), 2, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    float* acc = s.buf(0);
    float* xbuf = s.buf(1);
    for (int64_t j = 0; j < len; ++j) acc[j] = 0.0f;
    for (int i = 0; i < K; ++i) {
      const float* x = stage(src[i], off, len, xbuf);
      const float wi = w[i];
      for (int64_t j = 0; j < len; ++j) acc[j] = acc[j] + wi * x[j];
    }
    if (divide) {
      for (int64_t j = 0; j < len; ++j) acc[j] = acc[j] / tot;
    }
    store(dst, off, len, acc);
  });
}

}  // namespace mergefast
