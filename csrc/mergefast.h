/* The C ABI of the mergefast CPU kernels (libmergefast_cpu), loaded with ctypes by
 * mergefast/native.py and bound to torch tensors by mergefast/kernels/cpu.py. Plain C types
 * only: raw data pointers, dtype codes, element counts and the thread count, so the library
 * depends on no Python or torch ABI and keeps working across torch upgrades.
 *
 * Every kernel entry point returns MF_OK, or an error status with this thread's
 * mf_last_error() saying why. Inputs are contiguous arrays of n elements of their dtype
 * code; outputs are contiguous and must not overlap an input. `threads` is the OpenMP team
 * size (mergefast passes torch.get_num_threads(), or without torch OMP_NUM_THREADS or the
 * CPUs it may run on). Bump MF_ABI_VERSION on any change below: the binding refuses a
 * library of another version.
 */
#ifndef MERGEFAST_H_
#define MERGEFAST_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MF_ABI_VERSION 15

/* status codes */
#define MF_OK 0
#define MF_ERR_ARGUMENT 1  /* an argument the kernels cannot take (Python: RuntimeError) */
#define MF_ERR_MEMORY 2    /* an allocation failed (Python: MemoryError) */
#define MF_ERR_INTERNAL 3  /* anything else (Python: RuntimeError) */

/* dtype codes */
#define MF_F32 0
#define MF_F16 1
#define MF_BF16 2
#define MF_F64 3 /* outputs only */

/* sparsification modes of mf_task_arithmetic */
#define MF_SPARSIFY_NONE 0
#define MF_SPARSIFY_MAGNITUDE 1

#if defined(_WIN32)
#define MF_API __declspec(dllexport)
#else
#define MF_API __attribute__((visibility("default")))
#endif

MF_API int32_t mf_abi_version(void);

/* The clones of the hot loops this process runs: 0 the portable loops, 1 AVX2, 2 AVX-512
 * (F, DQ, VL, BW). The widest the CPU has, narrowed by MERGEFAST_NO_AVX512=1 or
 * MERGEFAST_NO_AVX2=1 in the environment; every level gives the same bits. */
MF_API int32_t mf_simd_level(void);

/* Elements per block of every kernel (the tests size tensors from it). */
MF_API int64_t mf_block(void);

/* Why this thread's last call failed ("" when none did). */
MF_API const char* mf_last_error(void);

/* The output check of this thread's calls since the last mf_output_check. Every entry point
 * with an output writes its final values through stores that test the bits they write; the
 * first passes of two-call methods (mf_dare_norms, mf_della_masks, mf_sce_select,
 * mf_arcee_select) write none and do not count. 0: some call wrote an output and every element
 * written was finite; 1: an element written was NaN or +-inf (it may have been written over
 * since: a one-read pass that fell back to two passes; scan the output with mf_all_finite to
 * know); -1: no call wrote an output, or one wrote an output it does not watch. Resets the
 * state. */
MF_API int32_t mf_output_check(void);

/* *finite = 1 when none of the n elements of x (dtype code MF_F32, MF_F16, MF_BF16 or MF_F64)
 * is NaN or +-inf, else 0. Exact (a test of the bits: exponent bits all ones), the same on any
 * thread count; reads all n elements (no early exit). n = 0: 1. */
MF_API int32_t mf_all_finite(const void* x, int32_t dtype, int64_t n, int32_t threads,
                             int32_t* finite);

/* out = sum_i(weights[i] * xs[i]) [/ total when divide], k >= 1 inputs. */
MF_API int32_t mf_linear(const void* const* xs, const int32_t* x_dtypes, int32_t k, int64_t n,
                         const double* weights, int32_t divide, double total, void* out,
                         int32_t out_dtype, int32_t threads);

/* Task arithmetic / TIES over the task vectors xs[i] - base (k >= 1 models). keep: one count
 * per model with MF_SPARSIFY_MAGNITUDE (ignored, may be NULL, with MF_SPARSIFY_NONE).
 * one_read_min: tensors of at least this many elements try the one-read scheme first; 0:
 * never, -1: the library's default (2^20). *finite = 1 when every delta was finite (so base
 * and every model are), else 0. */
MF_API int32_t mf_task_arithmetic(const void* base, int32_t base_dtype, const void* const* xs,
                                  const int32_t* x_dtypes, int32_t k, int64_t n,
                                  const double* weights, const int64_t* keep, int32_t sparsify,
                                  int32_t consensus, int32_t normalize, double divisor,
                                  double lambda, void* out, int32_t out_dtype,
                                  int64_t one_read_min, int32_t threads, int32_t* finite);

/* mask[j] = 1 when element j of x - base is among its keep largest magnitudes (ties lowest
 * index first), else 0: the selection the kernels apply. */
MF_API int32_t mf_magnitude_keep(const void* base, int32_t base_dtype, const void* x,
                                 int32_t x_dtype, int64_t n, int64_t keep, uint8_t* mask,
                                 int32_t threads);

/* DARE's L1 norms: sums[2i] = sum |xs[i] - base|, sums[2i + 1] = the same over the elements
 * model i keeps (u < (float)densities[i], u of the counter-based stream keys[i]: see
 * mergefast/methods/random.py). Float64, the same on any thread count. Where out is not null
 * (at most 16 models), each element's keep bits (bit i: model i keeps it) are left in a
 * 16-bit word inside its slot of out, as mf_della_masks leaves them, for mf_della_apply. */
MF_API int32_t mf_dare_norms(const void* base, int32_t base_dtype, const void* const* xs,
                             const int32_t* x_dtypes, int32_t k, int64_t n, const uint64_t* keys,
                             const double* densities, void* out, int32_t out_dtype, int32_t threads,
                             double* sums);

/* DARE (dare_linear, dare_ties): each delta xs[i] - base kept where u < (float)densities[i],
 * times (float)scales[i] (the L1 rescale, 1: none), times weights[i]; then the TIES sign
 * election and disjoint mean (consensus) or the plain sum, as mf_task_arithmetic. *finite as
 * there. */
MF_API int32_t mf_dare(const void* base, int32_t base_dtype, const void* const* xs,
                       const int32_t* x_dtypes, int32_t k, int64_t n, const double* weights,
                       const uint64_t* keys, const double* densities, const double* scales,
                       int32_t consensus, int32_t normalize, double divisor, double lambda,
                       void* out, int32_t out_dtype, int32_t threads, int32_t* finite);

/* dots[0..2] += <a,a>, <b,b>, <a,b> (float32 per block, float64 across blocks, added in block
 * order to what dots holds: zero it first; the parts of a tensor cut at multiples of the block
 * size, added part after part, give the whole tensor's sums). */
MF_API int32_t mf_slerp_dots(const void* a, int32_t a_dtype, const void* b, int32_t b_dtype,
                             int64_t n, int32_t threads, double* dots);

/* out = c0 * a + c1 * b. */
MF_API int32_t mf_slerp_apply(const void* a, int32_t a_dtype, const void* b, int32_t b_dtype,
                              int64_t n, double c0, double c1, void* out, int32_t out_dtype,
                              int32_t threads);

/* Calls since the library was loaded that the one-read scheme finished, and that fell back
 * to the two passes. */
MF_API void mf_one_read_counts(int64_t* finished, int64_t* fell_back);

/* SCE selections since the library was loaded whose energies came from the keys pass's window
 * (taken), and that had a window but took the energies' own pass (fell_back: the threshold's
 * bucket lay outside it, or its records overflowed). */
MF_API void mf_sce_window_counts(int64_t* taken, int64_t* fell_back);

/* The SLERP family's reduction: per row of cols elements (rows * cols in all), gram[row * P +
 * q] += <d_i, d_j> for the pairs i <= j in order (0,0), (0,1) .. (0,k-1), (1,1) .., P = k (k +
 * 1) / 2, d_i = xs[i] - base (xs[i] when base is NULL); 1 <= k <= 64. Float64 (exact
 * products, fixed order: the same on any thread count), added block by block to what gram
 * holds: zero it first (one row cut into parts of whole blocks gives the row's sums). */
MF_API int32_t mf_slerpfam_gram(const void* base, int32_t base_dtype, const void* const* xs,
                                const int32_t* x_dtypes, int32_t k, int64_t rows, int64_t cols,
                                int32_t threads, double* gram);

/* mf_slerpfam_gram per column of the rows x cols view (nuslerp's row_wise): gram[col * P + q]
 * += <d_i, d_j> down the column, float64 sums of exact products over the rows in order, added
 * to what gram holds (zero it first). */
MF_API int32_t mf_slerpfam_gram_columns(const void* base, int32_t base_dtype, const void* const* xs,
                                        const int32_t* x_dtypes, int32_t k, int64_t rows,
                                        int64_t cols, int32_t threads, double* gram);

/* nuslerp's elementwise pass: per row, factors[3 row .. 3 row + 2] = (c0, c1, dv) and out = base
 * + (c0 (x0 - base) + c1 (x1 - base)) / dv in float32 (without base: of x0, x1). */
MF_API int32_t mf_nuslerp_apply(const void* base, int32_t base_dtype, const void* x0,
                                int32_t x0_dtype, const void* x1, int32_t x1_dtype, int64_t rows,
                                int64_t cols, const float* factors, void* out, int32_t out_dtype,
                                int32_t threads);

/* mf_nuslerp_apply with the factors per column: factors[3 col .. 3 col + 2]. */
MF_API int32_t mf_nuslerp_apply_columns(const void* base, int32_t base_dtype, const void* x0,
                                        int32_t x0_dtype, const void* x1, int32_t x1_dtype,
                                        int64_t rows, int64_t cols, const float* factors, void* out,
                                        int32_t out_dtype, int32_t threads);

/* model_stock's elementwise pass: out = t[row] m + (1 - t[row]) base, m = (sum of xs) / k. */
MF_API int32_t mf_model_stock_apply(const void* base, int32_t base_dtype, const void* const* xs,
                                    const int32_t* x_dtypes, int32_t k, int64_t rows,
                                    int64_t cols, const float* t, void* out, int32_t out_dtype,
                                    int32_t threads);

/* nearswap: w = clamp((1 / max(|base - x|, 1e-6)) (float)t, 0, 1); out = w x + (1 - w) base. */
MF_API int32_t mf_nearswap(const void* base, int32_t base_dtype, const void* x, int32_t x_dtype,
                           int64_t n, double t, void* out, int32_t out_dtype, int32_t threads);

/* SCE's selection and energies: the positions of the k = int(count_nonzero(var) *
 * select_topk) largest population variances across the task vectors xs[i] - base (all at
 * select_topk >= 1; ties lowest flat index first) as a rule: keys (float32 variance bits)
 * above *thr kept, and the first *quota equal to it; when *cut, eq_prefix (nb + 1 entries,
 * nb = ceil(n / mf_block())) gets the running count of keys equal to *thr before each block.
 * energies[i] = sum of the squared kept deltas of model i (float64, the same on any thread
 * count). out (n elements of out_dtype, not overlapping the inputs) is the output that
 * mf_sce_apply will write: unless select_topk >= 1, each element's slot holds the top bits of
 * its variance key until then (no other n-sized memory). */
MF_API int32_t mf_sce_select(const void* base, int32_t base_dtype, const void* const* xs,
                             const int32_t* x_dtypes, int32_t k, int64_t n, double select_topk,
                             int32_t threads, uint32_t* thr, int64_t* quota, int32_t* cut,
                             int64_t* eq_prefix, double* energies, void* out, int32_t out_dtype);

/* SCE's apply with mf_sce_select's rule, into the same out (and out_dtype) that call filled,
 * and the weights omega (rounded to float32): the TIES "sum" election on the kept deltas,
 * base + sum(d * omega * agree) / max(sum(omega * agree), 1e-6), rounded once to out_dtype. */
MF_API int32_t mf_sce_apply(const void* base, int32_t base_dtype, const void* const* xs,
                            const int32_t* x_dtypes, int32_t k, int64_t n, uint32_t thr,
                            int64_t quota, int32_t cut, const int64_t* eq_prefix,
                            const double* omega, void* out, int32_t out_dtype, int32_t threads);

/* Breadcrumbs (breadcrumbs, breadcrumbs_ties): model i keeps its deltas xs[i] - base at
 * positions lo[i] .. hi[i] - 1 of their ascending magnitude order (ties lowest flat index
 * first: the reference's stable sort), times weights[i]; then the TIES sign election and
 * disjoint mean (consensus) or the plain sum, as mf_task_arithmetic. 0 <= lo[i], hi[i] <= n.
 * one_read_min and *finite as there. */
MF_API int32_t mf_breadcrumbs(const void* base, int32_t base_dtype, const void* const* xs,
                              const int32_t* x_dtypes, int32_t k, int64_t n, const double* weights,
                              const int64_t* lo, const int64_t* hi, int32_t consensus,
                              int32_t normalize, double divisor, double lambda, void* out,
                              int32_t out_dtype, int64_t one_read_min, int32_t threads,
                              int32_t* finite);

/* DELLA, first pass: per row of `cols` elements (the last axis; n % cols == 0), model i keeps
 * element j where u < p, p = (float)pmin[i] + (rank / (cols - 1)) * (float)span[i] in float32
 * (rank: the position of |xs[i] - base| in its row's ascending order, ties lowest index first,
 * NaN above inf; span 0: p = pmin[i]), u of the counter-based stream keys[i]. At most 16
 * models: their keep bits are left in a 16-bit word inside each element's slot of out, for
 * mf_della_apply. sums as mf_dare_norms (over the kept elements of this rule). */
MF_API int32_t mf_della_masks(const void* base, int32_t base_dtype, const void* const* xs,
                              const int32_t* x_dtypes, int32_t k, int64_t n, int64_t cols,
                              const uint64_t* keys, const double* pmin, const double* span,
                              void* out, int32_t out_dtype, int32_t threads, double* sums);

/* DELLA, second pass: the keep bits mf_della_masks (or mf_dare_norms) left in out, then as mf_dare (kept deltas
 * times scales[i] times weights[i], consensus or the plain sum) into out. *finite as there. */
MF_API int32_t mf_della_apply(const void* base, int32_t base_dtype, const void* const* xs,
                              const int32_t* x_dtypes, int32_t k, int64_t n,
                              const double* weights, const double* scales, int32_t consensus,
                              int32_t normalize, double divisor, double lambda, void* out,
                              int32_t out_dtype, int32_t threads, int32_t* finite);

/* arcee_fusion, selection: per row of `cols` elements (rows * cols in all; a 1-D tensor is one
 * row) kl[row] = KL(softmax(other) + 1e-8 || softmax(base) + 1e-8), computed in float64 and
 * rounded to float32; values[r] = the ranks[r]-th smallest (0-based, r < 3) of every
 * importance |other - base| * kl[row] (float32), ordered as torch.kthvalue (every NaN above
 * +inf; the value of -0 and +0 is +0). `out` (rows * cols elements of out_dtype, the output
 * mf_arcee_apply then writes, not an input's memory) is overwritten with scratch. */
MF_API int32_t mf_arcee_select(const void* base, int32_t base_dtype, const void* other,
                               int32_t other_dtype, int64_t rows, int64_t cols,
                               const int64_t* ranks, int32_t threads, float* kl, float* values,
                               void* out, int32_t out_dtype);

/* arcee_fusion, apply: out = base + (|other - base| * kl[row] >= (float)threshold ? other -
 * base : 0) in float32, rounded once to out_dtype. *finite = 1 when every delta other - base
 * was finite, else 0. */
MF_API int32_t mf_arcee_apply(const void* base, int32_t base_dtype, const void* other,
                              int32_t other_dtype, int64_t rows, int64_t cols, const float* kl,
                              double threshold, void* out, int32_t out_dtype, int32_t threads,
                              int32_t* finite);
/* RAM's counting pass (ramplus_tl): per model i, counts[2i] += #(active_i and count > 1) and
 * counts[2i + 1] += #(active_i and count == 1), active_i = |xs[i] - base| > (float)epsilon,
 * count = #active per element (zero counts first). 1 <= k <= 255. */
MF_API int32_t mf_ram_counts(const void* base, int32_t base_dtype, const void* const* xs,
                             const int32_t* x_dtypes, int32_t k, int64_t n, double epsilon,
                             int32_t threads, int64_t* counts);

/* RAM (ram, ramplus_tl) in one elementwise pass: out = (base + unique) + shared, unique the
 * one active delta where count == 1 (times (float)lambdas[i] of its model when lambdas is not
 * NULL: RAM+), shared the mean of the active deltas where count > 1; float32 arithmetic,
 * rounded once to out_dtype. out must not overlap an input. *finite = 1 when every delta
 * xs[i] - base was finite, else 0. */
MF_API int32_t mf_ram_apply(const void* base, int32_t base_dtype, const void* const* xs,
                            const int32_t* x_dtypes, int32_t k, int64_t n, double epsilon,
                            const double* lambdas, void* out, int32_t out_dtype, int32_t threads,
                            int32_t* finite);

#ifdef __cplusplus
}
#endif

#endif /* MERGEFAST_H_ */
