// The SLERP family's reduction over columns: nuslerp's `row_wise` (mergekit's slices along
// axis 0: a tensor viewed as rows x cols, one vector per column, cols = the product of every
// axis but the first). Per column, every dot product <d_i, d_j> (i <= j) of d_i = x_i - base
// (x_i without a base) down the rows, in one read of the inputs, no transposed copy.
//
// Numerics: d_i is the reference's float32 subtraction; each product is exact in float64. A
// column's sum adds its rows chunk by chunk (kColumnRows rows, in row order from 0.0 within a
// chunk), then the chunks' sums in chunk order to the caller's `out`: the same sums on any
// thread count and in every build. torch's float32 sums of the transposed tensor take another
// order, so the caller's scalars differ in their last bits (DESIGN's tolerance rule), as with
// the row Gram (gram.cpp).
//
// Work: one tile per chunk of kColumnRows rows and run of kColumnRun columns, on any thread,
// every pair's sums for the tile in float64 vectors (P x kColumnRun doubles), kept per chunk
// and added up in chunk order at the end (the chunks' sums: 0.09 bytes per element). Tiles give
// every thread work whatever the shape: runs of columns alone, each down every row, gave a
// tensor cols / run of them (2 for the 0.3B family's 1024 columns, whatever the cores), and
// took 22% of a 0.3B row_wise merge's samples against the tiles' 18.6% (perf, 2-vCPU AMD EPYC
// VM; the merge's wall time within the noise: 0.93 against 0.94 s, 6 alternated runs).
#include <algorithm>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

constexpr int64_t kColumnRun = 1024;
constexpr int64_t kColumnRows = 256;
static_assert(kColumnRun <= kBlock, "a run is staged in one scratch buffer");

struct ColumnArgs {
  const Src* base;  // nullptr: the inputs themselves
  const std::vector<Src>* xs;
  int64_t rows, cols;
  int K, P;
};

// acc[q * w + c] += d_i[c] * d_j[c] for the pairs q = (i, j), i <= j, of one row's run. Two
// vectors (nuslerp's) in one loop, each d converted once: 16384 x 2048 bf16 with a base, the
// whole call 32 ms against 42 ms pair by pair (2-vCPU AMD EPYC VM; the row Gram: 18 ms).
MF_INLINE void add_products(const float* const* d, int K, int64_t w, double* acc) {
  if (K == 2) {
    double *s00 = acc, *s01 = acc + w, *s11 = acc + 2 * w;
    for (int64_t c = 0; c < w; ++c) {
      const double x = d[0][c], y = d[1][c];
      s00[c] += x * x;
      s01[c] += x * y;
      s11[c] += y * y;
    }
    return;
  }
  int q = 0;
  for (int i = 0; i < K; ++i) {
    for (int j = i; j < K; ++j, ++q) {
      const float* a = d[i];
      const float* b = d[j];
      double* s = acc + q * w;
      for (int64_t c = 0; c < w; ++c) s[c] += static_cast<double>(a[c]) * static_cast<double>(b[c]);
    }
  }
}

// The sums of columns [c0, c0 + w) over rows [r0, r1), into part[c * P + q] (c from c0).
MF_INLINE void column_tile_impl(const ColumnArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t w, Scratch& s,
                                double* acc, double* part) {
  std::fill(acc, acc + a.P * w, 0.0);
  const float* d[kGramMaxInputs];
  for (int64_t r = r0; r < r1; ++r) {
    stage_vectors(a.base, *a.xs, r * a.cols + c0, w, s, d);
    add_products(d, a.K, w, acc);
  }
  for (int64_t c = 0; c < w; ++c) {
    for (int q = 0; q < a.P; ++q) part[(c0 + c) * a.P + q] = acc[q * w + c];
  }
}

void column_tile_default(const ColumnArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t w, Scratch& s,
                         double* acc, double* part) {
  column_tile_impl(a, r0, r1, c0, w, s, acc, part);
}

#if MF_AVX2_CLONES
MF_TARGET_AVX2 void column_tile_avx2(const ColumnArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t w,
                                     Scratch& s, double* acc, double* part) {
  column_tile_impl(a, r0, r1, c0, w, s, acc, part);
}

MF_TARGET_AVX512BW void column_tile_avx512(const ColumnArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t w,
                                           Scratch& s, double* acc, double* part) {
  column_tile_impl(a, r0, r1, c0, w, s, acc, part);
}
#endif

}  // namespace

void gram_columns(const Src* base, const std::vector<Src>& xs, int64_t rows, int64_t cols, int threads,
                  double* out) {
  const int K = static_cast<int>(xs.size());
  check(K >= 1 && K <= kGramMaxInputs, "gram", "between 1 and 64 inputs expected");
  const ColumnArgs a{base, &xs, rows, cols, K, K * (K + 1) / 2};
  if (rows == 0 || cols == 0) return;
  auto tile = &column_tile_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) tile = &column_tile_avx2;
  if (cpu_has_avx512bw()) tile = &column_tile_avx512;
#endif
  const int64_t runs = (cols + kColumnRun - 1) / kColumnRun;
  const int64_t chunks = (rows + kColumnRows - 1) / kColumnRows;
  // chunk k's sums of every column: part[k][c * P + q]
  std::vector<double> part(static_cast<size_t>(chunks) * cols * a.P);
#pragma omp parallel num_threads(team_size(rows * cols, threads))
  {
    Scratch scratch(K + 1);  // kBlock floats each: a run of kColumnRun elements fits
    std::vector<double> acc(static_cast<size_t>(a.P) * kColumnRun);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < chunks * runs; ++t) {
      const int64_t k = t / runs, c0 = (t % runs) * kColumnRun;
      const int64_t r0 = k * kColumnRows, r1 = std::min(rows, r0 + kColumnRows);
      tile(a, r0, r1, c0, std::min(kColumnRun, cols - c0), scratch, acc.data(), part.data() + k * cols * a.P);
    }
  }
  for (int64_t k = 0; k < chunks; ++k) {
    const double* p = part.data() + k * cols * a.P;
    for (int64_t q = 0; q < cols * a.P; ++q) out[q] += p[q];
  }
}

}  // namespace mergefast
