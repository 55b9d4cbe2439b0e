// RAM and RAM+ (ram, ramplus_tl) on the CPU. Per element, over tau_i = x_i - base (float32):
// active_i = |tau_i| > eps (eps rounded to float32: torch compares a float32 tensor with a
// Python float in float32), count = #active. Elements active in one model get that tau (times
// lambda_i for RAM+), elements active in several the mean of the active taus, the rest keep
// the base: out = (base + unique) + shared, the reference's order (mergefast/methods/ram.py).
//
// Passes over the inputs: ram one (ram_apply); ramplus_tl two, as lambda_i depends on counts
// over the whole tensor: ram_counts (per model, #(active & count > 1) and #(active & count ==
// 1), int64, the same on any thread count, added to the caller's counts: a tensor's parts
// counted one after the other give its counts), lambda_i on the host, then ram_apply.
//
// Numerics: the shared sum adds the active taus in model order from 0.0f (inactive ones add
// +0.0f, exact), then divides by the count as a float: torch's kept.sum(0) for up to 4 models
// (it sums 5 and more in another order, then the mean may differ in the last bit). unique is
// the one active tau (times lambda_i, one rounding); a NaN tau is never active.
#include <algorithm>
#include <atomic>
#include <cmath>

#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

struct RamArgs {
  Src base;
  const std::vector<Src>* xs;
  float eps;
  const float* lambda;  // per model (RAM+); nullptr: ram
};

// buffers: 0 base, 1 model, 2 count, 3 shared sum, 4 boosted unique sum (Plus). Returns
// nonzero when a delta is NaN or infinite (then a model or the base is).
template <bool Plus>
MF_INLINE uint32_t ram_impl(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  const float* b = stage(a.base, off, len, s.buf(0));
  float* cnt = s.buf(2);
  float* sum = s.buf(3);
  float* uni = s.buf(4);
  for (int64_t j = 0; j < len; ++j) cnt[j] = sum[j] = uni[j] = 0.0f;
  const float eps = a.eps;
  uint32_t nonfinite = 0;
  for (size_t i = 0; i < a.xs->size(); ++i) {
    const float* x = stage((*a.xs)[i], off, len, s.buf(1));
    const float lam = Plus ? a.lambda[i] : 1.0f;
    for (int64_t j = 0; j < len; ++j) {
      const float d = x[j] - b[j];
      nonfinite |= mag_key(d) >= kNonFiniteKey;
      const bool act = std::fabs(d) > eps;
      cnt[j] = cnt[j] + (act ? 1.0f : 0.0f);
      sum[j] = sum[j] + (act ? d : 0.0f);
      if constexpr (Plus) uni[j] = uni[j] + (act ? d * lam : 0.0f);
    }
  }
  for (int64_t j = 0; j < len; ++j) {
    const float c = cnt[j];
    const float u = c == 1.0f ? (Plus ? uni[j] : sum[j]) : 0.0f;
    const float m = c > 1.0f ? sum[j] / c : 0.0f;
    r[j] = (b[j] + u) + m;
  }
  return nonfinite;
}

// ram_impl for K models known at compile time: the K staged blocks (buffers 1..K) first, then
// each element's count and sums in registers, in model order (the same bits), instead of a
// pass per model over the count and sum buffers. ab_libs, one thread, base + 3 bf16 (2-vCPU
// AMD EPYC VM): RAM 0.73-0.74x the time, RAM+ 0.77-0.85x. The counting pass done the same way
// took 1.15x the time: it stays model by model.
template <int K, bool Plus>
MF_INLINE uint32_t ram_fixed_k(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  const float* b = stage(a.base, off, len, s.buf(0));
  const float* x[K];
  float lam[K];
  for (int i = 0; i < K; ++i) {
    x[i] = stage((*a.xs)[i], off, len, s.buf(1 + i));
    lam[i] = Plus ? a.lambda[i] : 1.0f;
  }
  const float eps = a.eps;
  uint32_t nonfinite = 0;
  for (int64_t j = 0; j < len; ++j) {
    float cnt = 0.0f, sum = 0.0f, uni = 0.0f;
    for (int i = 0; i < K; ++i) {
      const float d = x[i][j] - b[j];
      nonfinite |= mag_key(d) >= kNonFiniteKey;
      const bool act = std::fabs(d) > eps;
      cnt = cnt + (act ? 1.0f : 0.0f);
      sum = sum + (act ? d : 0.0f);
      if constexpr (Plus) uni = uni + (act ? d * lam[i] : 0.0f);
    }
    const float u = cnt == 1.0f ? (Plus ? uni : sum) : 0.0f;
    const float m = cnt > 1.0f ? sum / cnt : 0.0f;
    r[j] = (b[j] + u) + m;
  }
  return nonfinite;
}

// One block of RAM (RAM+ with Plus) into r: 2-4 models unrolled, any other count model by model.
template <bool Plus>
MF_INLINE uint32_t ram_block(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  switch (a.xs->size()) {
    case 2: return ram_fixed_k<2, Plus>(a, off, len, s, r);
    case 3: return ram_fixed_k<3, Plus>(a, off, len, s, r);
    case 4: return ram_fixed_k<4, Plus>(a, off, len, s, r);
    default: return ram_impl<Plus>(a, off, len, s, r);
  }
}

uint32_t ram_default(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  return ram_block<false>(a, off, len, s, r);
}
uint32_t plus_default(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  return ram_block<true>(a, off, len, s, r);
}
#if MF_AVX2_CLONES
MF_TARGET_AVX2 uint32_t ram_avx2(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  return ram_block<false>(a, off, len, s, r);
}
MF_TARGET_AVX512BW uint32_t ram_avx512(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  return ram_block<false>(a, off, len, s, r);
}
MF_TARGET_AVX2 uint32_t plus_avx2(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  return ram_block<true>(a, off, len, s, r);
}
MF_TARGET_AVX512BW uint32_t plus_avx512(const RamArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  return ram_block<true>(a, off, len, s, r);
}
#endif

using BlockFn = uint32_t (*)(const RamArgs&, int64_t, int64_t, Scratch&, float*);

BlockFn pick(bool plus) {
#if MF_AVX2_CLONES
  if (cpu_has_avx512bw()) return plus ? &plus_avx512 : &ram_avx512;
  if (cpu_has_avx2()) return plus ? &plus_avx2 : &ram_avx2;
#endif
  return plus ? &plus_default : &ram_default;
}

// The counting pass's per-thread state: staged base and model, each model's active flags and
// the per-element count of one block, and the thread's running counts (2 per model).
struct CountState {
  std::vector<float> b, x;
  std::vector<uint8_t> act, cnt;
  std::vector<int64_t> totals;
  explicit CountState(int K)
      : b(kBlock), x(kBlock), act(static_cast<size_t>(K) * kBlock), cnt(kBlock), totals(2 * K, 0) {}
};

// One block's counts; counts per element fit a byte (at most kRamMaxInputs models).
MF_INLINE void count_impl(const Src& base, const std::vector<Src>& xs, float eps, int64_t off,
                          int64_t len, CountState& st) {
  const int K = static_cast<int>(xs.size());
  const float* b = stage(base, off, len, st.b.data());
  uint8_t* cnt = st.cnt.data();
  for (int64_t j = 0; j < len; ++j) cnt[j] = 0;
  for (int i = 0; i < K; ++i) {
    const float* x = stage(xs[i], off, len, st.x.data());
    uint8_t* act = st.act.data() + static_cast<size_t>(i) * kBlock;
    for (int64_t j = 0; j < len; ++j) {
      act[j] = std::fabs(x[j] - b[j]) > eps ? 1 : 0;
      cnt[j] = static_cast<uint8_t>(cnt[j] + act[j]);
    }
  }
  for (int i = 0; i < K; ++i) {
    const uint8_t* act = st.act.data() + static_cast<size_t>(i) * kBlock;
    int32_t shared = 0, unique = 0;
    for (int64_t j = 0; j < len; ++j) {
      shared += act[j] & (cnt[j] > 1 ? 1 : 0);
      unique += act[j] & (cnt[j] == 1 ? 1 : 0);
    }
    st.totals[2 * i] += shared;
    st.totals[2 * i + 1] += unique;
  }
}

void count_default(const Src& base, const std::vector<Src>& xs, float eps, int64_t off, int64_t len,
                   CountState& st) {
  count_impl(base, xs, eps, off, len, st);
}
#if MF_AVX2_CLONES
MF_TARGET_AVX2 void count_avx2(const Src& base, const std::vector<Src>& xs, float eps, int64_t off,
                               int64_t len, CountState& st) {
  count_impl(base, xs, eps, off, len, st);
}

MF_TARGET_AVX512BW void count_avx512(const Src& base, const std::vector<Src>& xs, float eps, int64_t off,
                                     int64_t len, CountState& st) {
  count_impl(base, xs, eps, off, len, st);
}
#endif

}  // namespace

void ram_counts(const Src& base, const std::vector<Src>& xs, float eps, int64_t n, int threads,
                int64_t* counts) {
  const int K = static_cast<int>(xs.size());
  check(K >= 1 && K <= kRamMaxInputs, "ram_counts", "between 1 and 255 models expected");
  auto block = &count_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &count_avx2;
  if (cpu_has_avx512bw()) block = &count_avx512;
#endif
  const int64_t nb = num_blocks(n);
#pragma omp parallel num_threads(team_size(n, threads))
  {
    CountState st(K);
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t off = blk * kBlock;
      prefetch_after(&base, xs, off + kBlock, n);  // common.h: 0.86x the time
      block(base, xs, eps, off, std::min(kBlock, n - off), st);
    }
#pragma omp critical(mergefast_ram_counts)
    for (int q = 0; q < 2 * K; ++q) counts[q] += st.totals[q];  // integers: any order
  }
}

bool ram_apply(const Src& base, const std::vector<Src>& xs, float eps, const float* lambda,
               const Dst& dst, int64_t n, int threads) {
  const RamArgs a{base, &xs, eps, lambda};
  const BlockFn block = pick(lambda != nullptr);
  std::atomic<uint32_t> nonfinite{0};
  for_each_block_raw(n, team_size(n, threads), 6, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    float* r = s.buf(5);
    if (block(a, off, len, s, r)) nonfinite.store(1, std::memory_order_relaxed);
    store(dst, off, len, r);
  });
  return nonfinite.load() == 0;
}

}  // namespace mergefast
