// The elementwise passes of the SLERP family, after the reduction pass (gram.cpp) and the
// per-row scalars the caller derives from it with the reference's own float32 formulas
// (mergefast/kernels/slerp_family.py). Each reads its inputs once and writes the output once,
// in the reference's order of float32 operations, so they are bit-exact given its scalars:
//   nuslerp      v_i = x_i - b (x_i without base); r = (c0 v0 + c1 v1) / dv; out = b + r
//                (collinear rows: c0 = 1 - t, c1 = t, dv = 1, and x / 1 is exact); the
//                factors per row, or per column (row_wise: gram_columns.cpp)
//   model_stock  m = ((0 + x_0) + x_1 ...) / K (python's sum); out = t m + (1 - t) b
//   nearswap     w = clamp((1 / max(|b - x|, 1e-6)) t, 0, 1) (torch's t / tensor is a
//                reciprocal times t); out = w x + (1 - w) b
#include <algorithm>
#include <cmath>

#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

struct NuslerpArgs {
  const Src* base;  // nullptr: slerp of the inputs themselves
  Src x0, x1;
  int64_t cols;
  const float* factors;  // c0, c1, dv per row (per column: nuslerp_columns)
};

// Elements j0 .. j1 - 1 of a row; f: the factors of the row, or (Columns) of element j0's
// column, the next column's three floats on.
template <bool Base, bool Columns>
MF_INLINE void nuslerp_run(const float* x, const float* y, const float* b, float* r, int64_t j0,
                           int64_t j1, const float* f) {
  for (int64_t j = j0; j < j1; ++j) {
    const float* fj = Columns ? f + 3 * (j - j0) : f;
    const float c0 = fj[0], c1 = fj[1], dv = fj[2];
    const float v0 = Base ? x[j] - b[j] : x[j];
    const float v1 = Base ? y[j] - b[j] : y[j];
    const float m = (c0 * v0 + c1 * v1) / dv;
    r[j] = Base ? b[j] + m : m;
  }
}

template <bool Columns>
MF_INLINE void nuslerp_rows_impl(const NuslerpArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  const float* x = stage(a.x0, off, len, s.buf(0));
  const float* y = stage(a.x1, off, len, s.buf(1));
  const float* b = a.base != nullptr ? stage(*a.base, off, len, s.buf(2)) : nullptr;
  row_runs(off, len, a.cols, [&](int64_t j0, int64_t j1, int64_t row) {
    const float* f = a.factors + 3 * (Columns ? off + j0 - row * a.cols : row);
    if (b != nullptr) {
      nuslerp_run<true, Columns>(x, y, b, r, j0, j1, f);
    } else {
      nuslerp_run<false, Columns>(x, y, b, r, j0, j1, f);
    }
  });
}

MF_INLINE void nuslerp_impl(const NuslerpArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  nuslerp_rows_impl<false>(a, off, len, s, r);
}

MF_INLINE void nuslerp_columns_impl(const NuslerpArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  nuslerp_rows_impl<true>(a, off, len, s, r);
}

struct StockArgs {
  Src base;
  const std::vector<Src>* xs;
  int64_t cols;
  const float* t;  // per row
};

// r = (0 or r) + x over the block, x converted as it is read (no staging buffer).
template <DType D, bool First>
MF_INLINE void stock_add(const void* xp, int64_t off, int64_t len, float* r) {
  for (int64_t j = 0; j < len; ++j) r[j] = (First ? 0.0f : r[j]) + load_f32<D>(xp, off + j);
}

// r = t (r / k) + (1 - t) b per row run, b converted as it is read.
template <DType D>
MF_INLINE void stock_mix(const StockArgs& a, int64_t off, int64_t len, float k, float* r) {
  row_runs(off, len, a.cols, [&](int64_t j0, int64_t j1, int64_t row) {
    const float t = a.t[row], u = 1.0f - t;
    for (int64_t j = j0; j < j1; ++j) r[j] = t * (r[j] / k) + u * load_f32<D>(a.base.ptr, off + j);
  });
}

MF_INLINE void stock_impl(const StockArgs& a, int64_t off, int64_t len, Scratch&, float* r) {
  const int K = static_cast<int>(a.xs->size());
  for (int i = 0; i < K; ++i) {
    const Src& x = (*a.xs)[i];
    visit_input_dtype(x.dt, [&](auto tag) {
      constexpr DType D = decltype(tag)::value;
      if (i == 0) {
        stock_add<D, true>(x.ptr, off, len, r);
      } else {
        stock_add<D, false>(x.ptr, off, len, r);
      }
    });
  }
  const float k = static_cast<float>(K);
  visit_input_dtype(a.base.dt, [&](auto tag) { stock_mix<decltype(tag)::value>(a, off, len, k, r); });
}

struct NearswapArgs {
  Src base, x;
  float t;
};

MF_INLINE void nearswap_impl(const NearswapArgs& a, int64_t off, int64_t len, Scratch& s, float* r) {
  const float* b = stage(a.base, off, len, s.buf(0));
  const float* x = stage(a.x, off, len, s.buf(1));
  const float t = a.t;
  for (int64_t j = 0; j < len; ++j) {
    const float dist = std::fabs(b[j] - x[j]);
    const float c = dist < 1e-6f ? 1e-6f : dist;  // NaN stays NaN, as torch's clamp
    float w = (1.0f / c) * t;
    w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
    r[j] = w * x[j] + (1.0f - w) * b[j];
  }
}

// Each pass as a default build and AVX2 and AVX-512 clones, the widest the CPU runs picked at
// run time (common.h); each also rounds and stores the block (the output dtype's conversion,
// vectorised with the clone's instructions).
#define MF_CLONED(NAME, ARGS)                                                                   \
  void NAME##_default(const ARGS& a, const Dst& d, int64_t off, int64_t len, Scratch& s,        \
                      float* r) {                                                               \
    NAME##_impl(a, off, len, s, r);                                                             \
    store(d, off, len, r);                                                                      \
  }                                                                                             \
  MF_SIMD_VARIANTS(NAME, ARGS)                                                                  \
  using NAME##_fn = void (*)(const ARGS&, const Dst&, int64_t, int64_t, Scratch&, float*);      \
  NAME##_fn NAME##_pick() { return MF_SIMD_PICK(NAME); }

#if MF_AVX2_CLONES
#define MF_SIMD_VARIANTS(NAME, ARGS)                                                            \
  MF_TARGET_AVX2 void NAME##_avx2(const ARGS& a, const Dst& d, int64_t off, int64_t len,       \
                                  Scratch& s, float* r) {                                      \
    NAME##_impl(a, off, len, s, r);                                                            \
    store(d, off, len, r);                                                                     \
  }                                                                                            \
  MF_TARGET_AVX512BW void NAME##_avx512(const ARGS& a, const Dst& d, int64_t off, int64_t len, \
                                        Scratch& s, float* r) {                                \
    NAME##_impl(a, off, len, s, r);                                                            \
    store(d, off, len, r);                                                                     \
  }
#define MF_SIMD_PICK(NAME) \
  cpu_has_avx512bw() ? &NAME##_avx512 : cpu_has_avx2() ? &NAME##_avx2 : &NAME##_default
#else
#define MF_SIMD_VARIANTS(NAME, ARGS)
#define MF_SIMD_PICK(NAME) &NAME##_default
#endif

MF_CLONED(nuslerp, NuslerpArgs)
MF_CLONED(nuslerp_columns, NuslerpArgs)
MF_CLONED(stock, StockArgs)
MF_CLONED(nearswap, NearswapArgs)

// Runs `block` over the n elements (buffers 0..buffers-1 for staging, one more for the
// result), which stores each block once.
template <class Args, class Fn>
void elementwise(const Args& a, Fn block, int buffers, const Dst& dst, int64_t n, int threads) {
  for_each_block_raw(n, team_size(n, threads), buffers + 1,
                     [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
                       block(a, dst, off, len, s, s.buf(buffers));
                     });
}

}  // namespace

void nuslerp_apply(const Src* base, const Src& x0, const Src& x1, int64_t cols,
                   const float* factors, const Dst& dst, int64_t n, int threads, bool columns) {
  const NuslerpArgs a{base, x0, x1, std::max<int64_t>(1, cols), factors};
  elementwise(a, columns ? nuslerp_columns_pick() : nuslerp_pick(), 3, dst, n, threads);
}

void model_stock_apply(const Src& base, const std::vector<Src>& xs, int64_t cols, const float* t,
                       const Dst& dst, int64_t n, int threads) {
  const StockArgs a{base, &xs, std::max<int64_t>(1, cols), t};
  elementwise(a, stock_pick(), 0, dst, n, threads);
}

void nearswap(const Src& base, const Src& x, float t, const Dst& dst, int64_t n, int threads) {
  const NearswapArgs a{base, x, t};
  elementwise(a, nearswap_pick(), 2, dst, n, threads);
}

}  // namespace mergefast
