// Shared pieces of the CPU merge kernels: dtype staging (bf16/fp16/fp32 -> float32 in a
// small per-thread buffer), rounding float32 -> the output dtype, block iteration.
//
// Every kernel works block by block (kBlock elements): each input block is converted to
// float32 once into an L1/L2-resident buffer, the arithmetic runs as plain float loops over
// that buffer (which the compiler vectorises), and the result is rounded once on store.
// This handles any mix of input dtypes with one conversion loop per dtype instead of one
// template instance per combination.
//
// Numerics: built with -ffp-contract=off so that a*b+c is two roundings, as in the torch
// references (bit-exact results where the order of operations is the same).
//
// Plain C++17 + OpenMP: no torch headers. The entry points (../api.cpp) get raw pointers,
// dtype codes, element counts and the thread count from mergefast/native.py and kernels/cpu.py.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>  // the AVX2 clones (MF_AVX2_CLONES below)
#endif

namespace mergefast {

// An argument the kernels cannot take. Thrown on the calling thread only (never inside an
// OpenMP region); the entry points turn it into MF_ERR_ARGUMENT and its message.
struct ArgumentError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws ArgumentError("<op>: <what>") unless `ok`.
inline void check(bool ok, const char* op, const std::string& what) {
  if (!ok) throw ArgumentError(std::string(op) + ": " + what);
}

// Whether the environment variable `name` is set to something other than "" or "0".
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

// Helpers called from the hot loops are always inlined, so that a caller compiled for
// another instruction set (the AVX2 clones of the TIES kernel) vectorises them with its own.
#if defined(__GNUC__)
#define MF_INLINE inline __attribute__((always_inline))
#else
#define MF_INLINE inline
#endif

// x86-64: hot block functions get an AVX2 clone and an AVX-512 one (below), the widest the CPU
// runs picked at run time (the build itself must run on any x86-64, so no -march flags). Same
// IEEE float32 results (no FMA: the clones do not enable fma, and -ffp-contract=off), wider
// vectors.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MF_AVX2_CLONES 1
#define MF_TARGET_AVX2 __attribute__((target("avx2")))
// MERGEFAST_NO_AVX2=1 in the environment (read once) takes the portable paths on any CPU, as a
// CPU without AVX2 (or a build for another architecture) runs them: tests/test_portable_paths.py
// checks that they give the clones' bits.
inline bool portable_paths_asked() { return env_flag("MERGEFAST_NO_AVX2"); }
inline bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && !portable_paths_asked();
  return yes;
}
// The FMA clones (the Gram pass's products, SCE's variance keys: sce.h sce_divide) need AVX2 and FMA.
#define MF_TARGET_FMA __attribute__((target("avx2,fma")))
inline bool cpu_has_avx2_fma() {
  static const bool yes = cpu_has_avx2() && __builtin_cpu_supports("fma");
  return yes;
}
// The AVX-512 clones (the random methods' 64-bit multiplies, vpmullq: dare.cpp, random.h) need
// AVX-512 F, DQ and VL.
#define MF_TARGET_AVX512 __attribute__((target("avx2,avx512f,avx512dq,avx512vl")))
inline bool cpu_has_avx512dq() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl") && !portable_paths_asked();
  return yes;
}
// The AVX-512 clones of the hot block functions (each beside its AVX2 clone, the same source)
// need AVX-512 F, DQ, VL and BW: the compiler vectorises the same float32 operations with mask
// registers and EVEX compares. All 147 jobs of the 0.3B family, one thread, 2-vCPU Intel Xeon
// VM (benchmarks/jobs.py, builds alternated): TIES 0.87x the AVX2 clones' time,
// task_arithmetic 0.82x, linear 0.90x, nearswap 0.69x, RAM+ 0.79x, breadcrumbs_ties 0.86x,
// DELLA 0.96x. MERGEFAST_NO_AVX512=1 (read once) takes the AVX2 clones on any CPU.
#define MF_TARGET_AVX512BW __attribute__((target("avx2,avx512f,avx512dq,avx512vl,avx512bw")))
inline bool cpu_has_avx512bw() {
  static const bool yes = cpu_has_avx512dq() && __builtin_cpu_supports("avx512bw") && !env_flag("MERGEFAST_NO_AVX512");
  return yes;
}
#else
#define MF_AVX2_CLONES 0
inline bool cpu_has_avx2() { return false; }
inline bool cpu_has_avx2_fma() { return false; }
inline bool cpu_has_avx512dq() { return false; }
inline bool cpu_has_avx512bw() { return false; }
#endif

#if MF_AVX2_CLONES
// Lane indices of the set bits of every 8-bit mask, for a permute that packs the lanes.
struct PackTable {
  alignas(32) uint32_t lanes[256][8];
  constexpr PackTable() : lanes{} {
    for (int mask = 0; mask < 256; ++mask) {
      int n = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if (mask & (1 << lane)) lanes[mask][n++] = static_cast<uint32_t>(lane);
      }
    }
  }
};
inline constexpr PackTable kPack;
#endif

// Elements per block. 2048 floats = 8 KiB per staged input, so base + 3 models + 3 weighted
// deltas stay in L2 (measured on a 2-vCPU AMD EPYC VM: 1024 / 2048 / 4096 / 8192 gave TIES
// 7B-layer times within 5 % of each other; 2048 is the best).
constexpr int64_t kBlock = 2048;

// Blocks per chunk of the dynamic OpenMP schedules of the elementwise and counting passes.
// A static split makes a pass as slow as its most preempted thread, and during a merge the
// pipeline's reader and writer threads share the cores with the kernel's team.
constexpr int64_t kChunkBlocks = 8;

// Element types; the values are the dtype codes of the C API (../mergefast.h, MF_F32...).
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

// The DType of a dtype code; F64 only where `f64_ok` (outputs: float64 inputs take the torch
// reference).
inline DType dtype_of(int32_t code, const char* op, bool f64_ok) {
  check(code >= 0 && code <= 3 && (f64_ok || code != 3), op,
        "unsupported dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

// A contiguous input, read-only.
struct Src {
  const void* ptr;
  DType dt;
};

inline Src make_src(const void* ptr, int32_t dtype, const char* op) {
  return Src{ptr, dtype_of(dtype, op, false)};
}

MF_INLINE float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

MF_INLINE uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

MF_INLINE uint64_t f64_to_bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

MF_INLINE double bits_to_f64(uint64_t u) {
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

// IEEE half -> float, branch free (the classic exponent-rebias trick; exact for every input,
// subnormals included).
MF_INLINE float half_to_f32(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = two_w < (1u << 27) ? f32_to_bits(denormalized) : f32_to_bits(normalized);
  return bits_to_f32(sign | r);
}

// float -> IEEE half, round to nearest even (same result as torch's .to(torch.float16)).
MF_INLINE uint16_t f32_to_half(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_to_f32((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = f32_to_bits(base);
  const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// float -> bfloat16, round to nearest even, NaN -> canonical quiet NaN (as c10::BFloat16).
MF_INLINE uint16_t f32_to_bf16(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
}

// Returns a pointer to n float32 values of `s` starting at element `off`: the input itself
// for float32 inputs, else `buf` after conversion.
MF_INLINE const float* stage(const Src& s, int64_t off, int64_t n, float* buf) {
  switch (s.dt) {
    case DType::F32:
      return static_cast<const float*>(s.ptr) + off;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(s.ptr) + off;
      for (int64_t j = 0; j < n; ++j) buf[j] = bits_to_f32(static_cast<uint32_t>(p[j]) << 16);
      return buf;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(s.ptr) + off;
      for (int64_t j = 0; j < n; ++j) buf[j] = half_to_f32(p[j]);
      return buf;
    }
    default:  // F64: refused by make_src
      throw ArgumentError("stage: unsupported input dtype");
  }
  return buf;
}

// Element i of a source of dtype D as float32, for loops that convert as they compute
// (instead of staging a whole block first). D is a template parameter: pick it once per
// block with visit_dtype().
template <DType D>
MF_INLINE float load_f32(const void* p, int64_t i) {
  if constexpr (D == DType::F32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (D == DType::BF16) {
    return bits_to_f32(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
  } else if constexpr (D == DType::F16) {
    return half_to_f32(static_cast<const uint16_t*>(p)[i]);
  } else {
    return static_cast<float>(static_cast<const double*>(p)[i]);
  }
}

// Element i of a source as float32 (any input dtype; for the few elements read one by one).
MF_INLINE float load_at(const Src& s, int64_t i) {
  switch (s.dt) {
    case DType::BF16: return load_f32<DType::BF16>(s.ptr, i);
    case DType::F16: return load_f32<DType::F16>(s.ptr, i);
    default: return load_f32<DType::F32>(s.ptr, i);
  }
}

// Stores float32 v as element i of an output of dtype D (rounded once, as store()).
template <DType D>
MF_INLINE void store_f32(void* p, int64_t i, float v) {
  if constexpr (D == DType::F32) {
    static_cast<float*>(p)[i] = v;
  } else if constexpr (D == DType::BF16) {
    static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  } else if constexpr (D == DType::F16) {
    static_cast<uint16_t*>(p)[i] = f32_to_half(v);
  } else {
    static_cast<double*>(p)[i] = static_cast<double>(v);
  }
}

template <DType D>
using DTypeTag = std::integral_constant<DType, D>;

// Calls f(DTypeTag<dt>{}) for an input dtype (F32 / F16 / BF16).
template <class F>
inline void visit_input_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(DTypeTag<DType::F32>{}); break;
    case DType::BF16: f(DTypeTag<DType::BF16>{}); break;
    case DType::F16: f(DTypeTag<DType::F16>{}); break;
    default: throw ArgumentError("visit_input_dtype: unsupported input dtype");
  }
}

// out[j] = x[off + j] - b[j] over n elements (float32, the references' subtraction), x converted
// as it is read: no staging pass for x (DELLA's masks pass, one thread, 2048 x 4096 bf16, base
// + 3, 2-vCPU AMD EPYC VM shared: 118-130 ms against 131-142 ms staged). A switch, not
// visit_input_dtype, so that it inlines whole into the AVX2 clones that call it.
template <DType D>
MF_INLINE void stage_deltas_dt(const void* x, const float* b, int64_t off, int64_t n, float* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = load_f32<D>(x, off + j) - b[j];
}

MF_INLINE void stage_deltas(const Src& x, const float* b, int64_t off, int64_t n, float* out) {
  switch (x.dt) {
    case DType::BF16: return stage_deltas_dt<DType::BF16>(x.ptr, b, off, n, out);
    case DType::F16: return stage_deltas_dt<DType::F16>(x.ptr, b, off, n, out);
    default: return stage_deltas_dt<DType::F32>(x.ptr, b, off, n, out);
  }
}

// sums[j % 8] += v[j] in flat order (vectorises): the same partial sums whatever the vector
// width, so sums built from them do not depend on the machine.
MF_INLINE void add_lanes(const float* v, int64_t len, double* sums) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    for (int l = 0; l < 8; ++l) sums[l] += static_cast<double>(v[j + l]);
  }
  for (; j < len; ++j) sums[j % 8] += static_cast<double>(v[j]);
}

// The 8 lanes' total, added in lane order from 0.0.
MF_INLINE double lanes_in_order(const double* lanes) {
  double t = 0.0;
  for (int l = 0; l < 8; ++l) t += lanes[l];
  return t;
}

// sum of v[0..len) in float64: add_lanes from zero, then the lanes in order.
MF_INLINE double lane_sum(const float* v, int64_t len) {
  double lanes[8] = {};
  add_lanes(v, len, lanes);
  return lanes_in_order(lanes);
}

#if MF_AVX2_CLONES
// add_lanes' step for eight float32 values v[j .. j + 8), j % 8 == 0: acc[0] holds lanes 0-3,
// acc[1] lanes 4-7.
MF_TARGET_AVX2 inline void add_lanes_avx2(__m256 v, __m256d* acc) {
  acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// add_lanes_avx2's accumulators as add_lanes' 8 lanes.
MF_TARGET_AVX2 inline void store_lanes_avx2(const __m256d* acc, double* lanes) {
  _mm256_storeu_pd(lanes, acc[0]);
  _mm256_storeu_pd(lanes + 4, acc[1]);
}

// words[0 .. 8) |= bit16's bit where k's lane is all ones (a keep mask): one model's keep bits
// into the 16-bit keep words of DARE's and DELLA's masks passes.
MF_TARGET_AVX2 inline void or_keep_bits_avx2(__m256i k, __m128i bit16, uint16_t* words) {
  const __m128i k16 = _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
  __m128i* w = reinterpret_cast<__m128i*>(words);
  _mm_storeu_si128(w, _mm_or_si128(_mm_loadu_si128(w), _mm_and_si128(k16, bit16)));
}
#endif

// Calls f(DTypeTag<dt>{}) for an output dtype (F32 / F16 / BF16 / F64).
template <class F>
inline void visit_output_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(DTypeTag<DType::F32>{}); break;
    case DType::BF16: f(DTypeTag<DType::BF16>{}); break;
    case DType::F16: f(DTypeTag<DType::F16>{}); break;
    case DType::F64: f(DTypeTag<DType::F64>{}); break;
  }
}

inline size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    default: return 2;
  }
}

// Asks Linux to back the 2 MiB-aligned interior of a large, freshly allocated output with
// transparent huge pages (THP "madvise" mode, the common default). A fresh 90 MB output
// otherwise takes ~22k page faults on first write: measured on a 2-vCPU AMD EPYC VM, filling
// a new 11008x4096 bf16 tensor takes 60 ms of CPU with 4 KiB pages and 10 ms with this hint.
// Values are unaffected; a no-op where THP is off, on pages already present, or elsewhere.
inline void advise_huge_pages(void* ptr, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (nbytes < 4 * kHuge) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(ptr) + nbytes) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
}

// A contiguous output; store() rounds float32 values once to its dtype.
struct Dst {
  void* ptr;
  DType dt;
  // Where store() flags an element it writes that is not finite (watch_output); nullptr: unwatched.
  std::atomic<uint32_t>* nonfinite = nullptr;
};

// The calling thread's watch of its kernel calls' outputs (mf_output_check). The entry points
// watch their outputs: every final value goes through store() (or the one-read fix-up's
// store_f32, select/fix_up.cpp), which tests the bits it wrote (an exponent of all ones, as
// all_finite) while they are in L1, so the caller skips its own pass over the output. Linear
// of the 0.3B family on the torch-free engine, 2-vCPU Intel Xeon VM: that pass (2 MiB parts,
// run by a merge thread) took ~4% of its time.
struct OutputWatch {
  int64_t made = 0, watched = 0;  // outputs made (make_dst) and watched since the last check
  std::atomic<uint32_t> nonfinite{0};
};

inline OutputWatch& output_watch() {
  static thread_local OutputWatch w;
  return w;
}

// `d` (just made), with its non-finite elements flagged in this thread's OutputWatch.
inline Dst watch_output(Dst d) {
  ++output_watch().watched;
  d.nonfinite = &output_watch().nonfinite;
  return d;
}

// `d` (just made), an output its call writes no final value into (keep words or keys in the
// elements' own slots, common.h OutputSlots, for a later call's apply pass): not counted.
inline Dst scratch_output(Dst d) {
  --output_watch().made;
  return d;
}

// mf_output_check: 0 when every output made since the last check was watched and every
// element written finite, 1 when one written was not, -1 when one was not watched or none was
// made; then a clean state.
inline int32_t take_output_check() {
  OutputWatch& w = output_watch();
  const int32_t state = w.made == 0 || w.made != w.watched ? -1 : static_cast<int32_t>(w.nonfinite.load() != 0);
  w.made = w.watched = 0;
  w.nonfinite.store(0);
  return state;
}

// The unsigned word of each dtype and its exponent bits: an element is not finite exactly when
// its exponent bits are all ones.
template <DType D>
struct FiniteBits;
template <>
struct FiniteBits<DType::F32> {
  using Word = uint32_t;
  static constexpr Word kExponent = 0x7f800000u;
};
template <>
struct FiniteBits<DType::F16> {
  using Word = uint16_t;
  static constexpr Word kExponent = 0x7c00u;
};
template <>
struct FiniteBits<DType::BF16> {
  using Word = uint16_t;
  static constexpr Word kExponent = 0x7f80u;
};
template <>
struct FiniteBits<DType::F64> {
  using Word = uint64_t;
  static constexpr Word kExponent = 0x7ff0000000000000ull;
};

// Nonzero when one of the len elements at x + off has all its exponent bits set. The
// accumulator is a word of the element's width (one vector lane per element, no widening).
template <DType D>
MF_INLINE uint32_t block_nonfinite(const void* x, int64_t off, int64_t len) {
  using Word = typename FiniteBits<D>::Word;
  constexpr Word kExp = FiniteBits<D>::kExponent;
  const Word* v = static_cast<const Word*>(x) + off;
  Word any = 0;
  for (int64_t j = 0; j < len; ++j) any |= static_cast<Word>((v[j] & kExp) == kExp);
  return any != 0 ? 1u : 0u;
}

// 16 bits of scratch per element in an output's own storage, where a method keeps what a later
// pass reads before its apply overwrites the element (no n-sized scratch): element j's word is
// p[j * stride], the first 16 bits of its bytes. DELLA's and DARE's keep bits (della.cpp,
// dare.cpp), SCE's variance keys (sce.h) and arcee_fusion's importance keys (arcee_fusion.cpp).
struct OutputSlots {
  uint16_t* p;
  int64_t stride;  // in 16-bit words: the output dtype's size / 2
};

inline OutputSlots output_slots(const Dst& dst) {
  return OutputSlots{static_cast<uint16_t*>(dst.ptr), static_cast<int64_t>(dtype_size(dst.dt) / 2)};
}

// Every kernel's output, usually fresh memory: the huge-page hint before any write (measured
// on a 2-vCPU AMD EPYC VM, 7B layer: linear 48 ms with it, 77 ms without; SLERP 55 vs 82 ms).
// Counted in this thread's OutputWatch: unwatched unless its entry point watches it.
inline Dst make_dst(void* ptr, int32_t dtype, int64_t n, const char* op) {
  const DType dt = dtype_of(dtype, op, true);
  advise_huge_pages(ptr, static_cast<size_t>(n) * dtype_size(dt));
  ++output_watch().made;
  return Dst{ptr, dt};
}

// Elements off .. off + n - 1 of the output from v, rounded once; a watched output
// (watch_output) flags a written element that is not finite.
MF_INLINE void store(const Dst& d, int64_t off, int64_t n, const float* v) {
  uint32_t bad = 0;
  switch (d.dt) {
    case DType::F32:
      std::memcpy(static_cast<float*>(d.ptr) + off, v, n * sizeof(float));
      if (d.nonfinite != nullptr) bad = block_nonfinite<DType::F32>(d.ptr, off, n);
      break;
    case DType::F64: {
      double* p = static_cast<double*>(d.ptr) + off;
      for (int64_t j = 0; j < n; ++j) p[j] = static_cast<double>(v[j]);
      if (d.nonfinite != nullptr) bad = block_nonfinite<DType::F64>(d.ptr, off, n);
      break;
    }
    case DType::BF16: {
      uint16_t* p = static_cast<uint16_t*>(d.ptr) + off;
      for (int64_t j = 0; j < n; ++j) p[j] = f32_to_bf16(v[j]);
      if (d.nonfinite != nullptr) bad = block_nonfinite<DType::BF16>(d.ptr, off, n);
      break;
    }
    case DType::F16: {
      uint16_t* p = static_cast<uint16_t*>(d.ptr) + off;
      for (int64_t j = 0; j < n; ++j) p[j] = f32_to_half(v[j]);
      if (d.nonfinite != nullptr) bad = block_nonfinite<DType::F16>(d.ptr, off, n);
      break;
    }
  }
  if (bad != 0) d.nonfinite->store(1, std::memory_order_relaxed);
}

// Whether the byte ranges [a, a + na) and [b, b + nb) overlap.
inline bool overlaps(const void* a, size_t na, const void* b, size_t nb) {
  const auto* pa = static_cast<const char*>(a);
  const auto* pb = static_cast<const char*>(b);
  return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

// Threads for a pass over n elements: `threads` (the caller's team size, torch's intra-op
// thread count, passed by mergefast/kernels/cpu.py), but one below kParallelMin (an OpenMP
// team and per-thread scratch cost more than the work there).
constexpr int64_t kParallelMin = 1 << 15;
inline int team_size(int64_t n, int threads) {
  return n < kParallelMin ? 1 : std::max(1, threads);
}

inline int64_t num_blocks(int64_t n) {
  return (n + kBlock - 1) / kBlock;
}

// Per-thread scratch of `count` float buffers of kBlock elements, 64-byte aligned.
struct Scratch {
  std::vector<float> data;
  explicit Scratch(int count) : data(static_cast<size_t>(count) * kBlock + 16) {}
  float* buf(int i) {
    auto base = reinterpret_cast<uintptr_t>(data.data());
    float* aligned = reinterpret_cast<float*>((base + 63) & ~uintptr_t(63));
    return aligned + static_cast<int64_t>(i) * kBlock;
  }
};

// Asks for elements [end, end + kBlock) of `s` (fewer at n) into L2: the next block of a first pass
// over a job's inputs whose arithmetic leaves the loads no time to run ahead (the Gram pass, RAM+'s
// counts, TIES' and breadcrumbs' one read, DARE's norms, arcee_fusion's KL rows, SCE's keys). Whole
// tensors are mapped from the page cache in 4 KiB pages (one block of bf16), and the hardware
// prefetcher does not cross a page, so each block would otherwise start on lines still in DRAM. One
// thread, the 0.3B family's 112 attention and MLP tensors (base + 3 bf16), 2-vCPU AMD EPYC VM:
// mapped, caches flushed, the Gram pass 0.82-0.88x the time (two threads 0.88-0.90x), RAM+'s counts
// 0.86x; 48 MLP jobs whole, dare_ties 0.94x, TIES 0.97x, breadcrumbs_ties 0.98x, arcee_fusion
// 0.96x, SCE 0.95x (two threads 0.98x; DELLA's 0.98-1.00x, not kept); read into buffers just before
// (parts of inputs that cannot be mapped), the Gram pass 1.05x. Not in passes that stream faster
// (SLERP's dots over two inputs took 1.5x the time with it) or whose inputs an earlier pass left in
// L3 (Model Stock's apply 1.4x): the burst of 64 prefetches an input holds up the block's loads. A
// merge side by side with another (host/side_by_side.py) finds its inputs out of L3 again in its
// second pass (two jobs' inputs exceed it): there DARE's and DELLA's apply (della.cpp) and SCE's
// take it too (48 MLP jobs on two merge threads of one kernel thread each: dare_ties 0.93-0.98x,
// SCE 0.93-0.95x, DELLA 0.99x; RAM+'s and arcee_fusion's apply 0.97-1.00x, not kept).
MF_INLINE void prefetch_after(const Src& s, int64_t end, int64_t n) {
  if (end >= n) return;
  const size_t size = dtype_size(s.dt);
  const char* p = static_cast<const char*>(s.ptr) + static_cast<size_t>(end) * size;
  const size_t bytes = static_cast<size_t>(std::min(kBlock, n - end)) * size;
  for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
}

// prefetch_after for an optional base and every input.
MF_INLINE void prefetch_after(const Src* base, const std::vector<Src>& xs, int64_t end, int64_t n) {
  if (base != nullptr) prefetch_after(*base, end, n);
  for (const Src& x : xs) prefetch_after(x, end, n);
}

// d[i] = elements [off, off + n) of xs[i] - *base in float32 (of xs[i] itself without a base),
// for every input: staged in s.buf(i), the base in s.buf(xs.size()). The Gram passes' vectors.
MF_INLINE void stage_vectors(const Src* base, const std::vector<Src>& xs, int64_t off, int64_t n, Scratch& s,
                             const float** d) {
  const int K = static_cast<int>(xs.size());
  const float* b = base != nullptr ? stage(*base, off, n, s.buf(K)) : nullptr;
  for (int i = 0; i < K; ++i) {
    if (b == nullptr) {
      d[i] = stage(xs[i], off, n, s.buf(i));
      continue;
    }
    stage_deltas(xs[i], b, off, n, s.buf(i));
    d[i] = s.buf(i);
  }
}

// Calls f(j0, j1, row) for the runs of the block [off, off + len) that lie within one row of
// `cols` elements: per-row scalars stay out of the inner loops.
template <class F>
MF_INLINE void row_runs(int64_t off, int64_t len, int64_t cols, F&& f) {
  for (int64_t j = 0; j < len;) {
    const int64_t row = (off + j) / cols;
    const int64_t end = std::min(len, (row + 1) * cols - off);
    f(j, end, row);
    j = end;
  }
}

// Runs body(tid, blk, off, len, scratch) over the blocks of n elements on nthreads threads
// (dynamic schedule: see kChunkBlocks); scratch holds `buffers` kBlock-float buffers of the
// calling thread. The OpenMP skeleton of every elementwise and counting pass.
template <class Body>
void for_each_block_raw(int64_t n, int nthreads, int buffers, Body&& body) {
  const int64_t nb = num_blocks(n);
#pragma omp parallel num_threads(nthreads)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    Scratch scratch(buffers);
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t off = blk * kBlock;
      body(tid, blk, off, std::min(kBlock, n - off), scratch);
    }
  }
}

}  // namespace mergefast
