// SCE (mergefast/methods/sce.py) on the CPU, apply side: one read of base + K models and of the
// coarse variance keys that sce_select left in the output's slots (sce.cpp, sce.h), one write
// of the result over them.
//
// The reference's float32 operations in its order: the kept deltas md_i = (x_i - b) * m, their
// sum s = sum_i md_i (elected sign: s >= 0 counts as +), agree_i = sign(md_i) == elected (zeros
// and NaNs never agree), sum_i (md_i * w_i) * agree_i over max(sum_i w_i * agree_i, 1e-6) (NaN
// stays NaN, as torch's clamp), plus base, rounded once. The block function has an AVX2 clone
// (sce.h): the same IEEE float32 results, eight lanes wide.
#include <algorithm>

#include "kernels.h"
#include "sce.h"

namespace mergefast {
namespace {

constexpr float kDivisorMin = 1e-6f;
// Scratch buffers of a block: 0 base, 1 staged x, 2 mask, 3 sum, 4 mixed, 5 divisor, 6 the
// block's keys, kFirstDelta.. the K kept deltas.
constexpr int kFirstDelta = 7;

// sum_i (d_i * w_i) * agree_i into mixed and sum_i w_i * agree_i into div, model i's term
// (first: the first model's terms start the sums).
MF_INLINE void vote(const float* sum, const float* d, float wi, int64_t len, bool first, float* mixed, float* div) {
  for (int64_t j = 0; j < len; ++j) {
    const float elected = sum[j] >= 0.0f ? 1.0f : -1.0f;
    const float agree = elected * d[j] > 0.0f ? 1.0f : 0.0f;  // sign(d) == elected
    const float v = (d[j] * wi) * agree, dw = wi * agree;
    mixed[j] = first ? v : mixed[j] + v;
    div[j] = first ? dw : div[j] + dw;
  }
}

// The result of one block for K models known at compile time, into res: the staged models
// (x[i]) and mask m (Masked) in, then every element's sums, votes and quotient in registers.
// The same operations in the same order as apply_any_k. 2-vCPU Intel Xeon VM, whole sce calls
// on 16384 x 1024 bf16, base + 3, builds alternated: 0.92x the time of apply_any_k's loops.
template <int K, bool Masked>
MF_INLINE void apply_fixed_k(const float* const* x, const float* b, const float* m, const float* w, int64_t len,
                             float* res) {
  for (int64_t j = 0; j < len; ++j) {
    float d[K];
    for (int i = 0; i < K; ++i) d[i] = Masked ? (x[i][j] - b[j]) * m[j] : x[i][j] - b[j];
    float sum = d[0];
    for (int i = 1; i < K; ++i) sum = sum + d[i];
    const float elected = sum >= 0.0f ? 1.0f : -1.0f;
    float mixed = 0.0f, div = 0.0f;
    for (int i = 0; i < K; ++i) {
      const float agree = elected * d[i] > 0.0f ? 1.0f : 0.0f;
      const float v = (d[i] * w[i]) * agree, dw = w[i] * agree;
      mixed = i == 0 ? v : mixed + v;
      div = i == 0 ? dw : div + dw;
    }
    const float dv = div < kDivisorMin ? kDivisorMin : div;  // NaN stays NaN
    res[j] = b[j] + mixed / dv;
  }
}

// The K models of block (off, len) staged into buffers kFirstDelta.., then apply_fixed_k.
template <int K>
MF_INLINE void apply_staged(const SceArgs& a, const float* b, const float* m, const float* w, int64_t off,
                            int64_t len, Scratch& s, float* res) {
  const float* x[K];
  for (int i = 0; i < K; ++i) x[i] = stage((*a.xs)[i], off, len, s.buf(kFirstDelta + i));
  if (m == nullptr) return apply_fixed_k<K, false>(x, b, m, w, len, res);
  apply_fixed_k<K, true>(x, b, m, w, len, res);
}

// The result of one block for any K into res (buffer 3): each model's kept deltas into
// buffers kFirstDelta.., their sum, then the votes model by model.
MF_INLINE float* apply_any_k(const SceArgs& a, const float* b, float* m, const float* w, int64_t off, int64_t len,
                             Scratch& s) {
  float *sum = s.buf(3), *mixed = s.buf(4), *div = s.buf(5);
  for (int i = 0; i < a.K; ++i) {
    float* d = s.buf(kFirstDelta + i);
    sce_kept_deltas((*a.xs)[i], b, m, off, len, s.buf(1), d);
    if (i == 0) {
      std::copy(d, d + len, sum);
    } else {
      for (int64_t j = 0; j < len; ++j) sum[j] = sum[j] + d[j];
    }
  }
  // the branch outside the loops: each loop vectorises without a select on `first`
  vote(sum, s.buf(kFirstDelta), w[0], len, true, mixed, div);
  for (int i = 1; i < a.K; ++i) vote(sum, s.buf(kFirstDelta + i), w[i], len, false, mixed, div);
  float* res = sum;  // the sums are used up
  for (int64_t j = 0; j < len; ++j) {
    const float dv = div[j] < kDivisorMin ? kDivisorMin : div[j];  // NaN stays NaN
    res[j] = b[j] + mixed[j] / dv;
  }
  return res;
}

// Block blk of the result, stored into dst.
MF_INLINE void apply_block_impl(const SceArgs& a, const KeepRule& r, const float* w, const Dst& dst, int64_t blk,
                                int64_t len, Scratch& s) {
  const int64_t off = blk * kBlock;
  float* m = nullptr;
  if (!sce_keeps_all(r)) {  // the keys in the block's output slots: read before the store
    sce_slot_mask(a, r, blk, len, reinterpret_cast<uint32_t*>(s.buf(6)), m = s.buf(2));
  }
  const float* b = stage(*a.base, off, len, s.buf(0));
  float* res = s.buf(3);
  switch (a.K) {
    case 2: apply_staged<2>(a, b, m, w, off, len, s, res); break;
    case 3: apply_staged<3>(a, b, m, w, off, len, s, res); break;
    case 4: apply_staged<4>(a, b, m, w, off, len, s, res); break;
    default: res = apply_any_k(a, b, m, w, off, len, s);
  }
  store(dst, off, len, res);
}

MF_SCE_CLONED(apply_block,
              (const SceArgs& a, const KeepRule& r, const float* w, const Dst& dst, int64_t blk, int64_t len,
               Scratch& s),
              (a, r, w, dst, blk, len, s))

}  // namespace

void sce_apply(const Src& base, const std::vector<Src>& xs, const KeepRule& rule, const std::vector<float>& w,
               const Dst& dst, int64_t n, int threads) {
  // the threshold's bucket: its elements' exact keys are recomputed (sce.h); none when keep-none
  const uint32_t hi = rule.thr == 0xFFFFFFFFu ? kNoBucket : rule.thr >> 16;
  const SceArgs a{&base, &xs, static_cast<int>(xs.size()), n, threads, output_slots(dst), hi};
  const apply_block_fn block = apply_block_pick();
  for_each_block_raw(n, team_size(n, threads), kFirstDelta + a.K, [&](int, int64_t blk, int64_t off, int64_t len, Scratch& s) {
    prefetch_after(&base, xs, off + len, n);  // common.h: side by side, 0.93-0.95x
    block(a, rule, w.data(), dst, blk, len, s);
  });
}

}  // namespace mergefast
