// arcee_fusion (mergefast/methods/arcee_fusion.py) on the CPU: three reads of base + other,
// nothing of the tensor's size allocated but the output.
//
//   1 (rows)  per row of `cols` elements, in the row's own cache-resident sweeps
//             (arcee_rows.h): KL(softmax(x) + 1e-8 || softmax(b) + 1e-8) as sum q f(p / q),
//             float32 terms summed in float64, rounded once to float32 (arcee_math.h: ~1e-7
//             relative, where torch's float32 KL is off by 1e-4 to 1e+1 relative on fine-tune
//             deltas); then the top 16 bits of every importance's order key (importance =
//             |x - b| * KL, float32, as the reference) into the element's slot of the output
//             (the first 16 bits of its bytes: DELLA's keep words and SCE's keys do the same),
//             and their histogram.
//   2 (slots) a histogram of the low 16 bits of the keys in the buckets of the three ranks:
//             the slots compared 16 at a time, and only the keys found in those buckets
//             (~1-3% of a fine-tune's) recomputed from the inputs, as pass 1 computed them.
//             The three order statistics (torch.kthvalue's: every NaN above +inf) are exact.
//   3 (flat)  out = b + (importance >= threshold ? x - b : 0), rounded once (arcee_apply), over
//             the slots.
//
// The caller turns the three values into the threshold with the reference's float32 formula.
// One 7B layer (11008 x 4096 bf16, deltas N(0, 1e-3)), a shared 2-vCPU AMD EPYC VM, medians:
// the whole kernel 0.35 s against 0.67 s with the KL in float64 (4 lanes, 13-term exp and a
// 23rd-degree log series) and 4.1 s for the torch reference.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "arcee_math.h"
#include "arcee_rows.h"
#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

using namespace arcee;

constexpr int kBins = 1 << 16;

// Pass 1 for rows [r0, r1): their KL into kl, their keys' top 16 bits into the slots and
// their histogram into h.
#define MF_ARCEE_ROWS(NAME, TARGET)                                                                   \
  TARGET void NAME(const ArceeArgs& a, const OutputSlots& slots, int64_t r0, int64_t r1, Scratch& s,   \
                   float* cache, float* kl, uint32_t* h) {                                            \
    uint32_t* keys = reinterpret_cast<uint32_t*>(s.buf(2));                                          \
    for (int64_t r = r0; r < r1; ++r) {                                                               \
      prefetch_after(a.base, (r + 1) * a.cols, a.rows * a.cols); /* common.h */                     \
      prefetch_after(a.other, (r + 1) * a.cols, a.rows * a.cols);                                     \
      RowSource row{a, r * a.cols, s, cache};                                                         \
      const float k = static_cast<float>(kl_row(row));                                                \
      kl[r] = k;                                                                                      \
      row.blocks(false, [&](int64_t j0, const float* b, const float* x, int64_t len) MF_LAMBDA_INLINE { \
        importance_keys(b, x, k, len, keys);                                                          \
        uint16_t* slot = slots.p + (r * a.cols + j0) * slots.stride;                              \
        for (int64_t j = 0; j < len; ++j) {                                                           \
          slot[j * slots.stride] = static_cast<uint16_t>(keys[j] >> 16);                              \
          h[keys[j] >> 16]++;                                                                         \
        }                                                                                             \
      });                                                                                             \
    }                                                                                                 \
  }
MF_ARCEE_ROWS(kl_and_top_rows, )
#if MF_AVX2_CLONES
MF_ARCEE_ROWS(kl_and_top_rows_avx2, MF_TARGET_AVX2)
MF_ARCEE_ROWS(kl_and_top_rows_avx512, MF_TARGET_AVX512BW)
#endif

// Sums per-thread histograms (nthreads x bins) into int64 counts.
std::vector<int64_t> merged(const std::vector<uint32_t>& part, int nthreads, size_t bins) {
  std::vector<int64_t> hist(bins, 0);
  for (int t = 0; t < nthreads; ++t) {
    for (size_t i = 0; i < bins; ++i) hist[i] += part[t * bins + i];
  }
  return hist;
}

// The bin holding the rank-k (0-based, ascending) value of a histogram, and k's rank within it.
std::pair<uint32_t, int64_t> bin_of_rank(const std::vector<int64_t>& h, size_t lo, size_t bins, int64_t k) {
  for (size_t i = 0; i < bins; ++i) {
    if (k < h[lo + i]) return {static_cast<uint32_t>(i), k};
    k -= h[lo + i];
  }
  return {static_cast<uint32_t>(bins - 1), 0};  // unreachable for k < n
}

// Pass 1: every row's KL, every key's top 16 bits in its slot, and their histogram.
std::vector<int64_t> pass_rows(const ArceeArgs& a, const OutputSlots& slots, int threads, float* kl) {
  const int nthreads = team_size(a.rows * a.cols, threads);
  std::vector<uint32_t> part(static_cast<size_t>(nthreads) * kBins, 0);
  auto body = &kl_and_top_rows;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) body = &kl_and_top_rows_avx2;
  if (cpu_has_avx512bw()) body = &kl_and_top_rows_avx512;
#endif
  const int64_t chunk = std::max<int64_t>(1, kBlock / std::max<int64_t>(a.cols, 1));
#pragma omp parallel num_threads(nthreads)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    Scratch scratch(6);
    std::vector<float> cache(a.cols <= kCacheCols ? 4 * a.cols : 0);
    float* c = cache.empty() ? nullptr : cache.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < a.rows; r0 += chunk) {
      body(a, slots, r0, std::min(a.rows, r0 + chunk), scratch, c, kl, part.data() + tid * kBins);
    }
  }
  return merged(part, nthreads, kBins);
}

// The key of element i (pass 1's operations): order_key(|x - b| * kl[row]) in float32.
MF_INLINE uint32_t key_at(const ArceeArgs& a, const float* kl, int64_t i) {
  const float b = load_at(a.base, i), x = load_at(a.other, i);
  return order_key(std::fabs(x - b) * kl[i / a.cols]);
}

// Adds to h (B x kBins) the low 16 bits of the keys of elements [off, off + len) whose slot
// holds one of the buckets top[0..3) (B distinct; unused entries repeat top[0], so an element
// counts in the first of its bucket's), element by element.
MF_INLINE void low_scalar(const ArceeArgs& a, const OutputSlots& slots, const float* kl, const uint32_t* top,
                          int64_t off, int64_t len, uint32_t* h) {
  const uint16_t* slot = slots.p + off * slots.stride;
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t hi = slot[j * slots.stride];
    if (hi != top[0] && hi != top[1] && hi != top[2]) continue;  // the buckets hold a few % of the keys
    const uint32_t q = hi == top[0] ? 0 : hi == top[1] ? 1 : 2;
    h[q * kBins + (key_at(a, kl, off + j) & 0xFFFFu)]++;
  }
}

#if MF_AVX2_CLONES
// low_scalar for 16-bit slots (bfloat16 and float16 outputs), 16 slots per compare.
MF_TARGET_AVX2 void low_avx2(const ArceeArgs& a, const OutputSlots& slots, const float* kl, const uint32_t* top,
                             int64_t off, int64_t len, uint32_t* h) {
  const uint16_t* slot = slots.p + off;
  __m256i want[3];
  for (int q = 0; q < 3; ++q) want[q] = _mm256_set1_epi16(static_cast<int16_t>(top[q] & 0xFFFFu));
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(slot + j));
    const __m256i hit = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi16(v, want[0]), _mm256_cmpeq_epi16(v, want[1])),
                                        _mm256_cmpeq_epi16(v, want[2]));
    uint32_t bits = static_cast<uint32_t>(_mm256_movemask_epi8(hit));  // two bits per slot
    while (bits != 0) {
      const int64_t t = j + (__builtin_ctz(bits) >> 1);
      bits &= bits - 1;
      bits &= bits - 1;
      const uint32_t hi = slot[t], q = hi == top[0] ? 0 : hi == top[1] ? 1 : 2;
      h[q * kBins + (key_at(a, kl, off + t) & 0xFFFFu)]++;
    }
  }
  low_scalar(a, slots, kl, top, off + j, len - j, h);
}

#endif

// Pass 2: the low-16-bit histograms of the keys in each of the buckets `top` (distinct).
std::vector<int64_t> pass_low(const ArceeArgs& a, const OutputSlots& slots, const float* kl,
                              const std::vector<uint32_t>& top, int threads) {
  const int64_t n = a.rows * a.cols;
  const int nthreads = team_size(n, threads), B = static_cast<int>(top.size());
  const size_t bins = static_cast<size_t>(B) * kBins;
  std::vector<uint32_t> part(nthreads * bins, 0);
  // Unused entries repeat the first bucket: every 16-bit value is some key's top bits (a NaN's
  // 0xFFFF: a sentinel there sent a NaN's slot to a histogram past B, out of bounds)
  uint32_t top3[3] = {top[0], top[0], top[0]};
  std::copy(top.begin(), top.end(), top3);
  auto low = &low_scalar;
#if MF_AVX2_CLONES
  if (cpu_has_avx2() && slots.stride == 1) low = &low_avx2;
#endif
  for_each_block_raw(n, nthreads, 0, [&](int tid, int64_t, int64_t off, int64_t len, Scratch&) {
    low(a, slots, kl, top3, off, len, part.data() + tid * bins);
  });
  return merged(part, nthreads, bins);
}

// out = b + (|x - b| * kl[row] >= threshold ? x - b : 0) for the block [off, off + len); nonzero
// when a delta x - b is NaN or infinite (then x or b is).
#define MF_ARCEE_APPLY(NAME, TARGET)                                                                      \
  TARGET uint32_t NAME(const Src& base, const Src& other, int64_t cols, const float* kl, float threshold, \
                       const Dst& dst, int64_t off, int64_t len, Scratch& s) {                            \
    const float* b = stage(base, off, len, s.buf(0));                                                    \
    const float* x = stage(other, off, len, s.buf(1));                                                   \
    float* r = s.buf(2);                                                                                  \
    uint32_t nonfinite = 0;                                                                               \
    row_runs(off, len, cols, [&](int64_t j0, int64_t j1, int64_t row) MF_LAMBDA_INLINE {                  \
      const float k = kl[row];                                                                            \
      for (int64_t j = j0; j < j1; ++j) {                                                                 \
        const float d = x[j] - b[j];                                                                      \
        nonfinite |= mag_key(d) >= kNonFiniteKey;                                                         \
        r[j] = b[j] + (std::fabs(d) * k >= threshold ? d : 0.0f);                                         \
      }                                                                                                   \
    });                                                                                                   \
    store(dst, off, len, r);                                                                              \
    return nonfinite;                                                                                     \
  }
MF_ARCEE_APPLY(apply_block, )
#if MF_AVX2_CLONES
MF_ARCEE_APPLY(apply_block_avx2, MF_TARGET_AVX2)
MF_ARCEE_APPLY(apply_block_avx512, MF_TARGET_AVX512BW)
#endif

}  // namespace

void arcee_select(const Src& base, const Src& other, int64_t rows, int64_t cols, const int64_t* ranks,
                  int threads, float* kl, float* values, const Dst& slots_of) {
  const ArceeArgs a{base, other, rows, cols};
  const OutputSlots slots = output_slots(slots_of);
  const std::vector<int64_t> top = pass_rows(a, slots, threads, kl);
  std::vector<uint32_t> buckets, bucket_of(3);
  std::vector<int64_t> within(3);
  for (int r = 0; r < 3; ++r) {
    const auto [bucket, k] = bin_of_rank(top, 0, kBins, ranks[r]);
    auto at = std::find(buckets.begin(), buckets.end(), bucket);
    bucket_of[r] = static_cast<uint32_t>(at - buckets.begin());
    if (at == buckets.end()) buckets.push_back(bucket);
    within[r] = k;
  }
  const std::vector<int64_t> low = pass_low(a, slots, kl, buckets, threads);
  for (int r = 0; r < 3; ++r) {
    const uint32_t q = bucket_of[r];
    const uint32_t lo = bin_of_rank(low, static_cast<size_t>(q) * kBins, kBins, within[r]).first;
    values[r] = key_value((buckets[q] << 16) | lo);
  }
}

bool arcee_apply(const Src& base, const Src& other, int64_t cols, const float* kl, float threshold,
                 const Dst& dst, int64_t n, int threads) {
  auto body = &apply_block;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) body = &apply_block_avx2;
  if (cpu_has_avx512bw()) body = &apply_block_avx512;
#endif
  std::atomic<uint32_t> nonfinite{0};
  for_each_block_raw(n, team_size(n, threads), 3, [&](int, int64_t, int64_t off, int64_t len, Scratch& s) {
    if (body(base, other, cols, kl, threshold, dst, off, len, s)) nonfinite.store(1, std::memory_order_relaxed);
  });
  return nonfinite.load() == 0;
}

}  // namespace mergefast
