// The C entry points of libmergefast_cpu (declared in mergefast.h): argument checks on what
// a C caller can get wrong (counts, dtype codes, modes, overlaps), the conversion of the
// scalars to float32 (as the torch references round them), and the translation of C++
// exceptions into status codes and mf_last_error().
#include "mergefast.h"

#include <algorithm>
#include <new>
#include <string>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"
#include "cpu/select/one_read.h"

namespace mergefast {

// all_finite (cpu/finite.cpp): true when none of the n elements of x is NaN or +-inf (any
// dtype, F64 included), tested on the bits; the same on any thread count.
bool all_finite(const Src& x, int64_t n, int threads);

namespace {

thread_local std::string g_error;

// Runs f(), returning MF_OK, or the status of the exception it threw (its message kept for
// mf_last_error). Exceptions come only from the calling thread: nothing throws inside an
// OpenMP region.
template <class F>
int32_t guarded(F&& f) {
  try {
    f();
    g_error.clear();
    return MF_OK;
  } catch (const ArgumentError& e) {
    g_error = e.what();
    return MF_ERR_ARGUMENT;
  } catch (const std::bad_alloc&) {
    g_error = "out of memory";
    return MF_ERR_MEMORY;
  } catch (const std::exception& e) {
    g_error = e.what();
    return MF_ERR_INTERNAL;
  } catch (...) {
    g_error = "unknown C++ exception";
    return MF_ERR_INTERNAL;
  }
}

size_t bytes(const Src& s, int64_t n) { return static_cast<size_t>(n) * dtype_size(s.dt); }

// The k inputs of an op as Srcs, after checking their count.
std::vector<Src> inputs(const void* const* xs, const int32_t* dtypes, int32_t k, const char* op) {
  check(k >= 1 && xs != nullptr && dtypes != nullptr, op, "expected at least one input");
  std::vector<Src> src;
  for (int32_t i = 0; i < k; ++i) src.push_back(make_src(xs[i], dtypes[i], op));
  return src;
}

std::vector<float> as_f32(const double* values, int32_t k) {
  std::vector<float> w;
  for (int32_t i = 0; i < k; ++i) w.push_back(static_cast<float>(values[i]));
  return w;
}

// An output that overlaps neither base nor a model: the kernels write it while they still read
// the inputs (the selections use it as scratch; DELLA's keep words, SCE's keys live in it).
Dst separate_dst(void* out, int32_t out_dtype, int64_t n, const Src& sb, const std::vector<Src>& src,
                 const char* op) {
  const Dst dst = make_dst(out, out_dtype, n, op);
  const size_t out_bytes = static_cast<size_t>(n) * dtype_size(dst.dt);
  check(!overlaps(out, out_bytes, sb.ptr, bytes(sb, n)), op, "the output overlaps an input");
  for (const Src& x : src) {
    check(!overlaps(out, out_bytes, x.ptr, bytes(x, n)), op, "the output overlaps an input");
  }
  return dst;
}

// The output checks of the passes that leave keep words in dst for della_apply (DELLA's masks,
// DARE's norms) and of della_apply.
Dst keep_words_dst(void* out, int32_t out_dtype, int64_t n, const Src& sb, const std::vector<Src>& src,
                   const char* op) {
  check(src.size() <= 16, op, "at most 16 models (one keep bit each in a 16-bit word per element)");
  return separate_dst(out, out_dtype, n, sb, src, op);
}

}  // namespace
}  // namespace mergefast

using namespace mergefast;

extern "C" {

int32_t mf_abi_version(void) { return MF_ABI_VERSION; }

int32_t mf_simd_level(void) { return cpu_has_avx512bw() ? 2 : cpu_has_avx2() ? 1 : 0; }

int64_t mf_block(void) { return kBlock; }

const char* mf_last_error(void) { return g_error.c_str(); }

int32_t mf_output_check(void) { return take_output_check(); }

int32_t mf_all_finite(const void* x, int32_t dtype, int64_t n, int32_t threads, int32_t* finite) {
  return guarded([&] {
    const char* op = "all_finite";
    // float64 is an input here (make_src refuses it: the merge kernels take it as an output only).
    const Src sx{x, dtype_of(dtype, op, true)};
    check(n >= 0 && finite != nullptr && (x != nullptr || n == 0), op, "bad sizes or outputs");
    *finite = all_finite(sx, n, threads) ? 1 : 0;
  });
}

int32_t mf_linear(const void* const* xs, const int32_t* x_dtypes, int32_t k, int64_t n,
                  const double* weights, int32_t divide, double total, void* out,
                  int32_t out_dtype, int32_t threads) {
  return guarded([&] {
    const char* op = "linear";
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && weights != nullptr, op, "bad sizes or weights");
    const Dst dst = watch_output(make_dst(out, out_dtype, n, op));
    linear(src, as_f32(weights, k), divide != 0, static_cast<float>(total), dst, n, threads);
  });
}

int32_t mf_task_arithmetic(const void* base, int32_t base_dtype, const void* const* xs,
                           const int32_t* x_dtypes, int32_t k, int64_t n, const double* weights,
                           const int64_t* keep, int32_t sparsify, int32_t consensus,
                           int32_t normalize, double divisor, double lambda, void* out,
                           int32_t out_dtype, int64_t one_read_min, int32_t threads,
                           int32_t* finite) {
  return guarded([&] {
    const char* op = "task_arithmetic";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && weights != nullptr && finite != nullptr, op, "bad sizes or weights");
    check(sparsify == MF_SPARSIFY_NONE || sparsify == MF_SPARSIFY_MAGNITUDE, op,
          "sparsify mode " + std::to_string(sparsify) + " is not implemented in the CPU kernels");
    check(sparsify == MF_SPARSIFY_NONE || keep != nullptr, op, "one keep count per model expected");
    // The selection uses the output as scratch, and the apply writes it while it reads the
    // inputs.
    const Dst dst = watch_output(separate_dst(out, out_dtype, n, sb, src, op));
    std::vector<int64_t> counts;
    if (sparsify == MF_SPARSIFY_MAGNITUDE) counts.assign(keep, keep + k);
    const int64_t min_n = one_read_min < 0 ? kOneReadMin : one_read_min;
    *finite = task_arithmetic(sb, src, as_f32(weights, k), counts, consensus != 0, normalize != 0,
                              static_cast<float>(divisor), static_cast<float>(lambda), dst, n,
                              min_n, threads)
                  ? 1
                  : 0;
  });
}

int32_t mf_dare_norms(const void* base, int32_t base_dtype, const void* const* xs,
                      const int32_t* x_dtypes, int32_t k, int64_t n, const uint64_t* keys,
                      const double* densities, void* out, int32_t out_dtype, int32_t threads, double* sums) {
  return guarded([&] {
    const char* op = "dare_norms";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && keys != nullptr && densities != nullptr && sums != nullptr, op,
          "bad sizes, keys, densities or sums");
    const Dst words =
        out == nullptr ? Dst{nullptr, DType::F32} : scratch_output(keep_words_dst(out, out_dtype, n, sb, src, op));
    dare_norms(sb, src, std::vector<uint64_t>(keys, keys + k), as_f32(densities, k), words, n, threads, sums);
  });
}

int32_t mf_dare(const void* base, int32_t base_dtype, const void* const* xs,
                const int32_t* x_dtypes, int32_t k, int64_t n, const double* weights,
                const uint64_t* keys, const double* densities, const double* scales,
                int32_t consensus, int32_t normalize, double divisor, double lambda, void* out,
                int32_t out_dtype, int32_t threads, int32_t* finite) {
  return guarded([&] {
    const char* op = "dare";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && weights != nullptr && keys != nullptr && densities != nullptr &&
              scales != nullptr && finite != nullptr,
          op, "bad sizes, weights, keys, densities or scales");
    const Dst dst = watch_output(separate_dst(out, out_dtype, n, sb, src, op));
    *finite = dare(sb, src, as_f32(weights, k), std::vector<uint64_t>(keys, keys + k),
                   as_f32(densities, k), as_f32(scales, k), consensus != 0, normalize != 0,
                   static_cast<float>(divisor), static_cast<float>(lambda), dst, n, threads)
                  ? 1
                  : 0;
  });
}

int32_t mf_magnitude_keep(const void* base, int32_t base_dtype, const void* x, int32_t x_dtype,
                          int64_t n, int64_t keep, uint8_t* mask, int32_t threads) {
  return guarded([&] {
    const char* op = "magnitude_keep";
    const Src sb = make_src(base, base_dtype, op), sx = make_src(x, x_dtype, op);
    check(n >= 0 && mask != nullptr, op, "bad mask");
    check(!overlaps(mask, static_cast<size_t>(n), base, bytes(sb, n)) &&
              !overlaps(mask, static_cast<size_t>(n), x, bytes(sx, n)),
          op, "the mask overlaps an input");
    magnitude_keep(sb, sx, n, keep, reinterpret_cast<bool*>(mask), threads);
  });
}

int32_t mf_slerp_dots(const void* a, int32_t a_dtype, const void* b, int32_t b_dtype, int64_t n,
                      int32_t threads, double* dots) {
  return guarded([&] {
    const char* op = "slerp";
    const Src sa = make_src(a, a_dtype, op), sb = make_src(b, b_dtype, op);
    check(n >= 0 && dots != nullptr, op, "bad sizes");
    slerp_dots(sa, sb, n, threads, dots);
  });
}

int32_t mf_slerp_apply(const void* a, int32_t a_dtype, const void* b, int32_t b_dtype, int64_t n,
                       double c0, double c1, void* out, int32_t out_dtype, int32_t threads) {
  return guarded([&] {
    const char* op = "slerp";
    const Src sa = make_src(a, a_dtype, op), sb = make_src(b, b_dtype, op);
    check(n >= 0, op, "bad sizes");
    const Dst dst = watch_output(make_dst(out, out_dtype, n, op));
    slerp_apply(sa, sb, static_cast<float>(c0), static_cast<float>(c1), dst, n, threads);
  });
}

void mf_one_read_counts(int64_t* finished, int64_t* fell_back) {
  const auto counts = one_read_counts();
  *finished = counts.first;
  *fell_back = counts.second;
}

void mf_sce_window_counts(int64_t* taken, int64_t* fell_back) {
  const auto counts = sce_window_counts();
  *taken = counts.first;
  *fell_back = counts.second;
}

namespace {

int32_t slerpfam_gram(const void* base, int32_t base_dtype, const void* const* xs, const int32_t* x_dtypes,
                      int32_t k, int64_t rows, int64_t cols, int32_t threads, double* gram_out, bool columns) {
  return guarded([&] {
    const char* op = "gram";
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(rows >= 0 && cols >= 0 && gram_out != nullptr, op, "bad sizes");
    Src sb{};
    if (base != nullptr) sb = make_src(base, base_dtype, op);
    const Src* b = base != nullptr ? &sb : nullptr;
    if (columns) {
      gram_columns(b, src, rows, cols, threads, gram_out);
    } else {
      gram(b, src, rows, cols, threads, gram_out);
    }
  });
}

int32_t nuslerp(const void* base, int32_t base_dtype, const void* x0, int32_t x0_dtype, const void* x1,
                int32_t x1_dtype, int64_t rows, int64_t cols, const float* factors, void* out, int32_t out_dtype,
                int32_t threads, bool columns) {
  return guarded([&] {
    const char* op = "nuslerp";
    const Src s0 = make_src(x0, x0_dtype, op), s1 = make_src(x1, x1_dtype, op);
    check(rows >= 0 && cols >= 0 && factors != nullptr, op, "bad sizes or factors");
    Src sb{};
    if (base != nullptr) sb = make_src(base, base_dtype, op);
    const Dst dst = watch_output(make_dst(out, out_dtype, rows * cols, op));
    nuslerp_apply(base != nullptr ? &sb : nullptr, s0, s1, cols, factors, dst, rows * cols, threads, columns);
  });
}

}  // namespace

int32_t mf_slerpfam_gram(const void* base, int32_t base_dtype, const void* const* xs,
                         const int32_t* x_dtypes, int32_t k, int64_t rows, int64_t cols,
                         int32_t threads, double* gram_out) {
  return slerpfam_gram(base, base_dtype, xs, x_dtypes, k, rows, cols, threads, gram_out, false);
}

int32_t mf_slerpfam_gram_columns(const void* base, int32_t base_dtype, const void* const* xs,
                                 const int32_t* x_dtypes, int32_t k, int64_t rows, int64_t cols,
                                 int32_t threads, double* gram_out) {
  return slerpfam_gram(base, base_dtype, xs, x_dtypes, k, rows, cols, threads, gram_out, true);
}

int32_t mf_nuslerp_apply(const void* base, int32_t base_dtype, const void* x0, int32_t x0_dtype,
                         const void* x1, int32_t x1_dtype, int64_t rows, int64_t cols,
                         const float* factors, void* out, int32_t out_dtype, int32_t threads) {
  return nuslerp(base, base_dtype, x0, x0_dtype, x1, x1_dtype, rows, cols, factors, out, out_dtype, threads, false);
}

int32_t mf_nuslerp_apply_columns(const void* base, int32_t base_dtype, const void* x0, int32_t x0_dtype,
                                 const void* x1, int32_t x1_dtype, int64_t rows, int64_t cols,
                                 const float* factors, void* out, int32_t out_dtype, int32_t threads) {
  return nuslerp(base, base_dtype, x0, x0_dtype, x1, x1_dtype, rows, cols, factors, out, out_dtype, threads, true);
}

int32_t mf_model_stock_apply(const void* base, int32_t base_dtype, const void* const* xs,
                             const int32_t* x_dtypes, int32_t k, int64_t rows, int64_t cols,
                             const float* t, void* out, int32_t out_dtype, int32_t threads) {
  return guarded([&] {
    const char* op = "model_stock";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(rows >= 0 && cols >= 0 && t != nullptr, op, "bad sizes or ratios");
    const Dst dst = watch_output(make_dst(out, out_dtype, rows * cols, op));
    model_stock_apply(sb, src, cols, t, dst, rows * cols, threads);
  });
}

int32_t mf_nearswap(const void* base, int32_t base_dtype, const void* x, int32_t x_dtype,
                    int64_t n, double t, void* out, int32_t out_dtype, int32_t threads) {
  return guarded([&] {
    const char* op = "nearswap";
    const Src sb = make_src(base, base_dtype, op), sx = make_src(x, x_dtype, op);
    check(n >= 0, op, "bad sizes");
    const Dst dst = watch_output(make_dst(out, out_dtype, n, op));
    nearswap(sb, sx, static_cast<float>(t), dst, n, threads);
  });
}

int32_t mf_sce_select(const void* base, int32_t base_dtype, const void* const* xs,
                      const int32_t* x_dtypes, int32_t k, int64_t n, double select_topk,
                      int32_t threads, uint32_t* thr, int64_t* quota, int32_t* cut,
                      int64_t* eq_prefix, double* energies, void* out, int32_t out_dtype) {
  return guarded([&] {
    const char* op = "sce_select";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && thr != nullptr && quota != nullptr && cut != nullptr &&
              eq_prefix != nullptr && energies != nullptr && (out != nullptr || n == 0),
          op, "bad sizes or outputs");
    const Dst dst = scratch_output(separate_dst(out, out_dtype, n, sb, src, op));
    const KeepRule r = sce_select(sb, src, select_topk, n, threads, energies, dst);
    *thr = r.thr;
    *quota = r.quota;
    *cut = r.cut ? 1 : 0;
    if (r.cut) {
      std::copy(r.eq_before.begin(), r.eq_before.end(), eq_prefix);
      eq_prefix[r.eq_before.size()] = r.eq_before.back() + r.eq_in.back();
    }
  });
}

int32_t mf_sce_apply(const void* base, int32_t base_dtype, const void* const* xs,
                     const int32_t* x_dtypes, int32_t k, int64_t n, uint32_t thr, int64_t quota,
                     int32_t cut, const int64_t* eq_prefix, const double* omega, void* out,
                     int32_t out_dtype, int32_t threads) {
  return guarded([&] {
    const char* op = "sce_apply";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && omega != nullptr && (cut == 0 || eq_prefix != nullptr), op,
          "bad sizes, weights or tie counts");
    const Dst dst = watch_output(separate_dst(out, out_dtype, n, sb, src, op));
    KeepRule r;
    r.thr = thr;
    r.quota = quota;
    r.cut = cut != 0;
    if (r.cut) {
      const int64_t nb = num_blocks(n);
      r.eq_before.assign(eq_prefix, eq_prefix + nb);
      for (int64_t blk = 0; blk < nb; ++blk) r.eq_in.push_back(eq_prefix[blk + 1] - eq_prefix[blk]);
    }
    sce_apply(sb, src, r, as_f32(omega, k), dst, n, threads);
  });
}

int32_t mf_breadcrumbs(const void* base, int32_t base_dtype, const void* const* xs,
                       const int32_t* x_dtypes, int32_t k, int64_t n, const double* weights,
                       const int64_t* lo, const int64_t* hi, int32_t consensus, int32_t normalize,
                       double divisor, double lambda, void* out, int32_t out_dtype,
                       int64_t one_read_min, int32_t threads, int32_t* finite) {
  return guarded([&] {
    const char* op = "breadcrumbs";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && weights != nullptr && lo != nullptr && hi != nullptr && finite != nullptr, op,
          "bad sizes, weights or bounds");
    for (int32_t i = 0; i < k; ++i) {
      check(lo[i] >= 0 && hi[i] >= 0 && lo[i] <= n && hi[i] <= n, op, "bounds outside [0, n]");
    }
    // The selection uses the output as scratch, and the apply writes it while it reads the
    // inputs.
    const Dst dst = watch_output(separate_dst(out, out_dtype, n, sb, src, op));
    const int64_t min_n = one_read_min < 0 ? kOneReadMin : one_read_min;
    *finite = breadcrumbs(sb, src, as_f32(weights, k), std::vector<int64_t>(lo, lo + k),
                          std::vector<int64_t>(hi, hi + k), consensus != 0, normalize != 0,
                          static_cast<float>(divisor), static_cast<float>(lambda), dst, n, min_n,
                          threads)
                  ? 1
                  : 0;
  });
}

// setuptools builds this library as an extension module (its Extension needs no torch and no
// CMake), and on Windows exports PyInit_<name>. It is loaded with ctypes, never imported:
// importing it fails.
MF_API void* PyInit_libmergefast_cpu(void) { return nullptr; }

int32_t mf_della_masks(const void* base, int32_t base_dtype, const void* const* xs,
                       const int32_t* x_dtypes, int32_t k, int64_t n, int64_t cols,
                       const uint64_t* keys, const double* pmin, const double* span, void* out,
                       int32_t out_dtype, int32_t threads, double* sums) {
  return guarded([&] {
    const char* op = "della_masks";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && keys != nullptr && pmin != nullptr && span != nullptr && sums != nullptr, op,
          "bad sizes, keys, probabilities or sums");
    check(cols >= 1 && n % cols == 0 && cols <= INT32_MAX, op, "bad row length");
    const Dst dst = scratch_output(keep_words_dst(out, out_dtype, n, sb, src, op));
    della_masks(sb, src, std::vector<uint64_t>(keys, keys + k), as_f32(pmin, k), as_f32(span, k), cols, dst, n,
                threads, sums);
  });
}

int32_t mf_della_apply(const void* base, int32_t base_dtype, const void* const* xs,
                       const int32_t* x_dtypes, int32_t k, int64_t n, const double* weights,
                       const double* scales, int32_t consensus, int32_t normalize, double divisor,
                       double lambda, void* out, int32_t out_dtype, int32_t threads, int32_t* finite) {
  return guarded([&] {
    const char* op = "della_apply";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && weights != nullptr && scales != nullptr && finite != nullptr, op,
          "bad sizes, weights or scales");
    const Dst dst = watch_output(keep_words_dst(out, out_dtype, n, sb, src, op));
    *finite = della_apply(sb, src, as_f32(weights, k), as_f32(scales, k), consensus != 0, normalize != 0,
                          static_cast<float>(divisor), static_cast<float>(lambda), dst, n, threads)
                  ? 1
                  : 0;
  });
}

int32_t mf_arcee_select(const void* base, int32_t base_dtype, const void* other, int32_t other_dtype,
                        int64_t rows, int64_t cols, const int64_t* ranks, int32_t threads, float* kl,
                        float* values, void* out, int32_t out_dtype) {
  return guarded([&] {
    const char* op = "arcee_select";
    const Src sb = make_src(base, base_dtype, op), sx = make_src(other, other_dtype, op);
    check(rows >= 1 && cols >= 1 && ranks != nullptr && kl != nullptr && values != nullptr, op,
          "bad sizes or outputs");
    for (int r = 0; r < 3; ++r) check(ranks[r] >= 0 && ranks[r] < rows * cols, op, "rank outside [0, n)");
    const Dst slots = scratch_output(separate_dst(out, out_dtype, rows * cols, sb, {sx}, op));
    arcee_select(sb, sx, rows, cols, ranks, threads, kl, values, slots);
  });
}

int32_t mf_arcee_apply(const void* base, int32_t base_dtype, const void* other, int32_t other_dtype,
                       int64_t rows, int64_t cols, const float* kl, double threshold, void* out,
                       int32_t out_dtype, int32_t threads, int32_t* finite) {
  return guarded([&] {
    const char* op = "arcee_apply";
    const Src sb = make_src(base, base_dtype, op), sx = make_src(other, other_dtype, op);
    check(rows >= 0 && cols >= 1 && kl != nullptr && finite != nullptr, op, "bad sizes, KL or outputs");
    const int64_t n = rows * cols;
    const Dst dst = watch_output(separate_dst(out, out_dtype, n, sb, {sx}, op));
    *finite = arcee_apply(sb, sx, cols, kl, static_cast<float>(threshold), dst, n, threads) ? 1 : 0;
  });
}

int32_t mf_ram_counts(const void* base, int32_t base_dtype, const void* const* xs,
                      const int32_t* x_dtypes, int32_t k, int64_t n, double epsilon, int32_t threads,
                      int64_t* counts) {
  return guarded([&] {
    const char* op = "ram_counts";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && counts != nullptr, op, "bad sizes or counts");
    ram_counts(sb, src, static_cast<float>(epsilon), n, threads, counts);
  });
}

int32_t mf_ram_apply(const void* base, int32_t base_dtype, const void* const* xs,
                     const int32_t* x_dtypes, int32_t k, int64_t n, double epsilon,
                     const double* lambdas, void* out, int32_t out_dtype, int32_t threads, int32_t* finite) {
  return guarded([&] {
    const char* op = "ram_apply";
    const Src sb = make_src(base, base_dtype, op);
    const std::vector<Src> src = inputs(xs, x_dtypes, k, op);
    check(n >= 0 && finite != nullptr, op, "bad sizes or outputs");
    const Dst dst = watch_output(separate_dst(out, out_dtype, n, sb, src, op));
    const std::vector<float> lam = lambdas != nullptr ? as_f32(lambdas, k) : std::vector<float>();
    const float* per_model = lambdas != nullptr ? lam.data() : nullptr;
    *finite = ram_apply(sb, src, static_cast<float>(epsilon), per_model, dst, n, threads) ? 1 : 0;
  });
}

}  // extern "C"
