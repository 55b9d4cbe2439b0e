// The CPU merge kernels behind the C entry points of ../api.cpp (declared in ../mergefast.h).
// The entry points check the arguments they can see (dtype codes, counts, overlaps) and
// build the Src / Dst views; mergefast/kernels/cpu.py checks what only the tensors know
// (device, layout) and computes the scalar constants the way the torch references do.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "select/rules.h"

namespace mergefast {

// Sparsification of each task vector (the dtype-code-like values of the C API's
// MF_SPARSIFY_*). Only None and Magnitude are implemented here; Random (DARE) has its own
// passes (dare.cpp), MagnitudeOutliers is reserved for breadcrumbs.
enum class Sparsify : int { None = 0, Magnitude = 1, MagnitudeOutliers = 2, Random = 3 };

// out = sum_i(w_i * x_i) [/ total] over n elements.
void linear(const std::vector<Src>& xs, const std::vector<float>& w, bool divide, float total,
            const Dst& dst, int64_t n, int threads);

// Task arithmetic / TIES into dst (n elements). keep: one count per model with magnitude
// sparsification, empty without. one_read_min: tensors of at least this many elements try the
// one-read scheme first (select/one_read.h); 0: never. Returns true when every delta
// x_i - base was finite (so base and every x_i are). dst must not overlap an input (the
// selection uses it as scratch).
bool task_arithmetic(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
                     const std::vector<int64_t>& keep, bool consensus, bool normalize,
                     float divisor, float lambda, const Dst& dst, int64_t n,
                     int64_t one_read_min, int threads);

// mask[j] = whether element j of x - base is among the keep largest |x - base| (ties lowest
// index first), as the kernels select it. mask must not overlap an input.
void magnitude_keep(const Src& base, const Src& x, int64_t n, int64_t keep, bool* mask,
                    int threads);

// DARE's L1 norms (dare.cpp): sums[2i] = sum |x_i - base|, sums[2i + 1] = the same over the
// elements model i keeps (u < dens[i], u from the stream keys[i], random.h); float64, the
// same on any thread count. Where words.ptr is not null (at most 16 models), each element's
// keep bits into its slot of words (common.h's OutputSlots), for della_apply.
void dare_norms(const Src& base, const std::vector<Src>& xs, const std::vector<uint64_t>& keys,
                const std::vector<float>& dens, const Dst& words, int64_t n, int threads, double* sums);

// DARE into dst: each delta kept where u < dens[i], times scales[i] (the L1 rescale, 1: none),
// times w[i]; then as task_arithmetic (TIES consensus or the plain sum). Returns true when
// every delta was finite. dst must not overlap an input.
bool dare(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
          const std::vector<uint64_t>& keys, const std::vector<float>& dens,
          const std::vector<float>& scales, bool consensus, bool normalize, float divisor,
          float lambda, const Dst& dst, int64_t n, int threads);

// <a,a>, <b,b>, <a,b> into dots[0..2].
void slerp_dots(const Src& a, const Src& b, int64_t n, int threads, double dots[3]);

// out = c0 * a + c1 * b.
void slerp_apply(const Src& a, const Src& b, float c0, float c1, const Dst& dst, int64_t n,
                 int threads);

// The SLERP family's reduction (gram.cpp): per row of `cols` elements (rows * cols in all),
// out[row * P + q] = <d_i, d_j> for the pairs i <= j in order (0,0), (0,1) .. (0,K-1), (1,1)
// .., P = K (K + 1) / 2, with d_i = x_i - *base (x_i when base is nullptr). Float64, the
// same on any thread count. At most kGramMaxInputs inputs.
constexpr int kGramMaxInputs = 64;
void gram(const Src* base, const std::vector<Src>& xs, int64_t rows, int64_t cols, int threads,
          double* out);

// The same sums per column of a rows x cols view (gram_columns.cpp): out[col * P + q] +=
// <d_i, d_j> down the column, the rows in order.
void gram_columns(const Src* base, const std::vector<Src>& xs, int64_t rows, int64_t cols, int threads,
                  double* out);

// nuslerp's elementwise pass (slerp_family.cpp): per row of `cols` elements, with factors
// (c0, c1, dv) of the row (`columns`: of the element's column), out = b + (c0 (x0 - b) + c1
// (x1 - b)) / dv (no b: of x0, x1).
void nuslerp_apply(const Src* base, const Src& x0, const Src& x1, int64_t cols,
                   const float* factors, const Dst& dst, int64_t n, int threads, bool columns);

// model_stock's elementwise pass: out = t m + (1 - t) base, m the mean of the xs, t per row.
void model_stock_apply(const Src& base, const std::vector<Src>& xs, int64_t cols, const float* t,
                       const Dst& dst, int64_t n, int threads);

// nearswap: w = clamp(t / max(|base - x|, 1e-6), 0, 1); out = w x + (1 - w) base.
void nearswap(const Src& base, const Src& x, float t, const Dst& dst, int64_t n, int threads);

// SCE's selection and energies (sce.cpp): the rule keeping the k = int(count_nonzero(var) *
// topk) positions of largest variance across the models (topk >= 1: all), and each model's
// sum of squared kept deltas (float64) into energies[0..K). dst: the output sce_apply will
// write; unless topk >= 1, each element's slot holds the top bits of its variance key until then.
KeepRule sce_select(const Src& base, const std::vector<Src>& xs, double topk, int64_t n,
                    int threads, double* energies, const Dst& dst);

// Calls of sce_select whose energies came from its window, and that had one but fell back
// (sce_window.h).
std::pair<int64_t, int64_t> sce_window_counts();

// SCE's apply (sce_apply.cpp): the deltas kept by rule over the keys sce_select left in dst
// (not read when the rule keeps all), TIES sign election, weights w, divisor clamped to 1e-6,
// base + result rounded once into dst.
void sce_apply(const Src& base, const std::vector<Src>& xs, const KeepRule& rule, const std::vector<float>& w,
               const Dst& dst, int64_t n, int threads);

// Breadcrumbs into dst (breadcrumbs.cpp): model i keeps its deltas at positions lo[i] ..
// hi[i] - 1 of the ascending |x_i - base| order (ties lowest flat index first), times w[i];
// then as task_arithmetic (TIES consensus or the plain sum). one_read_min: tensors of at least
// this many elements try the one-read scheme first (select/one_read_band.h); 0: never.
// Returns true when every delta was finite. dst must not overlap an input (the selection uses
// it as scratch).
bool breadcrumbs(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
                 const std::vector<int64_t>& lo, const std::vector<int64_t>& hi, bool consensus,
                 bool normalize, float divisor, float lambda, const Dst& dst, int64_t n,
                 int64_t one_read_min, int threads);

// DELLA's first pass (della.cpp): per row of `cols` elements (the last axis), model i keeps
// element j where u < p, p = pmin[i] + (rank / (cols - 1)) * span[i] (rank: |d|'s position in
// its row, ties lowest index first; span 0: p = pmin[i]), u from the stream keys[i]. The keep
// bits (bit i: model i, at most 16 models) go to a 16-bit word in each element's own slot of
// dst; sums[2i] = sum |d_i|, sums[2i + 1] = sum |kept d_i| (float64, any thread count).
void della_masks(const Src& base, const std::vector<Src>& xs, const std::vector<uint64_t>& keys,
                 const std::vector<float>& pmin, const std::vector<float>& span, int64_t cols,
                 const Dst& dst, int64_t n, int threads, double* sums);

// DELLA's second pass: the keep words della_masks (or dare_norms) left in dst, then as dare()
// (kept deltas times scales[i] times w[i], consensus or the plain sum) into dst. Returns true
// when every delta was finite.
bool della_apply(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
                 const std::vector<float>& scales, bool consensus, bool normalize, float divisor,
                 float lambda, const Dst& dst, int64_t n, int threads);

// arcee_fusion's selection (arcee_fusion.cpp): per row of `cols` elements the float32 KL of
// the two rows' softmaxes (+ 1e-8) into kl[0..rows), computed in float64; the values of the
// 0-based ascending ranks[0..3) of every importance |other - base| * kl[row] into values[0..3).
// The output `slots` (rows * cols elements, the apply's) holds the keys' top bits meanwhile.
void arcee_select(const Src& base, const Src& other, int64_t rows, int64_t cols, const int64_t* ranks,
                  int threads, float* kl, float* values, const Dst& slots);

// arcee_fusion's apply: out = base + (|other - base| * kl[row] >= threshold ? other - base : 0).
// True when every delta other - base was finite.
bool arcee_apply(const Src& base, const Src& other, int64_t cols, const float* kl, float threshold,
                 const Dst& dst, int64_t n, int threads);
// RAM's counting pass (ram.cpp): per model i, counts[2i] = #(active_i and count > 1),
// counts[2i + 1] = #(active_i and count == 1), active_i = |x_i - base| > eps, count = #active
// per element. The same on any thread count. At most kRamMaxInputs models.
constexpr int kRamMaxInputs = 255;
void ram_counts(const Src& base, const std::vector<Src>& xs, float eps, int64_t n, int threads,
                int64_t* counts);

// RAM's elementwise pass: out = (base + unique) + shared, unique the one active delta (times
// lambda[i], RAM+; lambda nullptr: ram) where count == 1, shared the mean of the active deltas
// where count > 1. True when every delta x_i - base was finite.
bool ram_apply(const Src& base, const std::vector<Src>& xs, float eps, const float* lambda,
               const Dst& dst, int64_t n, int threads);

}  // namespace mergefast
