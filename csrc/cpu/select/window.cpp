// The sampled window and its scan (see window.h; README.md for the whole scheme): a sample
// of kSampleMax keys per model predicts an interval (lo, hi) holding the k-th largest key;
// one pass over base and every model then counts the keys above hi and, per block, the keys
// equal to hi and lo, and appends the keys strictly inside (lo, hi) to a per-thread candidate
// list in flat order (~3 % of the keys at density 0.5).
#include "window.h"

#include <algorithm>
#include <cmath>

#include "../random.h"

namespace mergefast {
namespace {

constexpr int64_t kSampleMax = 1 << 13;    // sampled keys per model
// Half-width of the window in standard deviations of the sample's rank: 3 (the candidates'
// radix select of a 1M-element, 3-model tensor takes 0.24 ms at 3 and 0.66 ms at 4, on a
// 2-vCPU AMD EPYC VM); a miss (p ~ 0.3 %) costs the histogram passes.
constexpr double kWindowSigmas = 3.0;
constexpr int64_t kCandidateShare = 8;     // a list holds at most n / 8 keys (else overflow)

// Keys of model x against the staged base block b.
template <DType D>
MF_INLINE void block_keys(const void* xp, int64_t off, const float* b, int64_t len, uint32_t* kb) {
  for (int64_t j = 0; j < len; ++j) kb[j] = mag_key(load_f32<D>(xp, off + j) - b[j]);
}

// The samples lie a stratum apart at pseudo-random places, which the hardware prefetcher does
// not follow: each element's line is asked for kGatherAhead samples before it is read.
constexpr size_t kGatherAhead = 32;  // samples, ~5.6 KB of a 2816 x 1024 tensor apart

// The elements of s at positions pos[0, m) as float32.
void gather(const Src& s, const std::vector<int64_t>& pos, float* out) {
  const auto* bytes = static_cast<const char*>(s.ptr);
  const size_t size = dtype_size(s.dt);
  visit_input_dtype(s.dt, [&](auto tag) {
    for (size_t q = 0; q < pos.size(); ++q) {
      if (q + kGatherAhead < pos.size()) __builtin_prefetch(bytes + static_cast<size_t>(pos[q + kGatherAhead]) * size);
      out[q] = load_f32<decltype(tag)::value>(s.ptr, pos[q]);
    }
  });
}

// Sample q: one pseudo-random element (splitmix64 of q) of stratum q of n / m elements. A
// plain stride samples the same few columns of every row when the row length divides it,
// and weight matrices have outlier columns.
int64_t sample_position(int64_t q, int64_t stride) {
  const uint64_t z = mix64(kGolden * static_cast<uint64_t>(q + 1));
  return q * stride + static_cast<int64_t>(z % static_cast<uint64_t>(stride));
}

}  // namespace

// A histogram of the keys' top bits finds its bucket, and std::nth_element runs over that
// bucket's keys alone (a tensor's sample fills a few hundred of the 4096 buckets): breadcrumbs'
// 48 MLP jobs of the 0.3B family spent ~4 % of their time in nth_element over whole samples.
uint32_t key_of_rank(std::vector<uint32_t>& keys, int64_t at) {
  constexpr int kShift = 19;  // 31-bit keys: 4096 buckets
  std::vector<int64_t> count((size_t{1} << (31 - kShift)) + 1, 0);
  for (uint32_t key : keys) count[key >> kShift]++;
  int64_t below = 0;
  uint32_t bucket = 0;
  while (below + count[bucket] <= at) below += count[bucket++];
  auto members = keys.begin();  // the bucket's keys to the front
  for (auto it = keys.begin(); it != keys.end(); ++it) {
    if (*it >> kShift == bucket) std::iter_swap(members++, it);
  }
  std::nth_element(keys.begin(), keys.begin() + (at - below), members);
  return keys[static_cast<size_t>(at - below)];
}

std::vector<Window> predict_windows(const Src& base, const std::vector<const Src*>& xs,
                                    const std::vector<int64_t>& keep, int64_t n,
                                    int64_t sample_max, int threads) {
  const int64_t m = std::min(sample_max, n / 16);
  if (m == 0) return std::vector<Window>(xs.size());
  const int64_t stride = n / m;
  std::vector<int64_t> pos(m);
  for (int64_t q = 0; q < m; ++q) pos[q] = sample_position(q, stride);
  std::vector<float> b(m);
  gather(base, pos, b.data());
  const int A = static_cast<int>(xs.size());
  std::vector<Window> windows(A);
  // The models in parallel: each gathers its sample and selects two of its ranks.
#pragma omp parallel for num_threads(std::min(A, std::max(1, threads))) schedule(dynamic, 1)
  for (int a = 0; a < A; ++a) {
    std::vector<float> x(m);
    std::vector<uint32_t> keys(m);
    gather(*xs[a], pos, x.data());
    for (int64_t q = 0; q < m; ++q) keys[q] = mag_key(x[q] - b[q]);
    const double p = static_cast<double>(keep[a]) / static_cast<double>(n);
    const double margin = kWindowSigmas * std::sqrt(m * p * (1.0 - p)) + 2.0;
    const int64_t top_hi = static_cast<int64_t>(std::floor(p * m - margin));
    const int64_t top_lo = static_cast<int64_t>(std::ceil(p * m + margin));
    if (top_hi >= 0) windows[a].hi = key_of_rank(keys, m - 1 - top_hi);
    if (top_lo < m) windows[a].lo = key_of_rank(keys, m - 1 - top_lo);
    const Window w = windows[a];
    const int64_t inside = std::count_if(keys.begin(), keys.end(), [w](uint32_t key) {
      return key >= w.lo && key <= w.hi;
    });
    windows[a].share = static_cast<double>(inside) / static_cast<double>(m);
  }
  return windows;
}

namespace {

// Appends the keys of kb inside (lo, hi) to out, in order; returns how many. Branch free:
// which keys are inside is random.
MF_INLINE int64_t compact_scalar(const uint32_t* kb, int64_t len, Window w, uint32_t* out) {
  int64_t pos = 0;
  for (int64_t j = 0; j < len; ++j) {
    out[pos] = kb[j];
    pos += (kb[j] > w.lo) & (kb[j] < w.hi);
  }
  return pos;
}

#if MF_AVX2_CLONES
// compact_scalar with AVX2: 8 keys per compare, movemask and permute (the scalar loop takes
// 60 % of the window scan's time). Writes up to 7 keys past the returned count.
MF_TARGET_AVX2 int64_t compact_avx2(const uint32_t* kb, int64_t len, Window w, uint32_t* out) {
  const __m256i lo = _mm256_set1_epi32(static_cast<int32_t>(w.lo));
  const __m256i hi = _mm256_set1_epi32(static_cast<int32_t>(w.hi));
  int64_t pos = 0, j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + j));
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(k, lo), _mm256_cmpgt_epi32(hi, k));
    const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(in));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + pos), _mm256_permutevar8x32_epi32(k, perm));
    pos += __builtin_popcount(static_cast<unsigned>(mask));
  }
  return pos + compact_scalar(kb + j, len - j, w, out + pos);
}
#endif

// Keys of one block of model x (into kb) and how many are above hi, equal to hi and equal
// to lo. One loop that vectorises: keys are < 2^31, so signed compares are exact.
template <DType D>
MF_INLINE void count_keys(const void* xp, int64_t off, const float* b, int64_t len, Window w,
                          uint32_t* kb, uint32_t counts[3]) {
  const int32_t lo = static_cast<int32_t>(w.lo), hi = static_cast<int32_t>(w.hi);
  uint32_t above = 0, eh = 0, el = 0;
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t key = mag_key(load_f32<D>(xp, off + j) - b[j]);
    kb[j] = key;
    const int32_t k = static_cast<int32_t>(key);
    above += k > hi;
    eh += k == hi;
    el += k == lo;
  }
  counts[0] = above;
  counts[1] = eh;
  counts[2] = lo < hi ? el : 0;
}

// The window scan of one block of one model: keys, counts and candidates. (A switch rather than
// visit_input_dtype: a lambda would not be compiled for AVX2 in the AVX2 clone.)
template <bool Avx2>
MF_INLINE void scan_block(const Src& x, WindowScan& s, int tid, int64_t blk, int64_t off,
                          const float* b, int64_t len, uint32_t* kb) {
  uint32_t counts[3];
  switch (x.dt) {
    case DType::BF16: count_keys<DType::BF16>(x.ptr, off, b, len, s.w, kb, counts); break;
    case DType::F16: count_keys<DType::F16>(x.ptr, off, b, len, s.w, kb, counts); break;
    default: count_keys<DType::F32>(x.ptr, off, b, len, s.w, kb, counts);
  }
  s.above_blk[blk] = counts[0];
  s.eq_hi[blk] = counts[1];
  s.eq_lo[blk] = counts[2];
  int64_t& size = s.size[tid];
  if (size > s.capacity) return;  // overflowed: the histogram passes will decide
  uint32_t* out = s.lists[tid] + size;
  int64_t got;
  if constexpr (Avx2) {
#if MF_AVX2_CLONES
    got = compact_avx2(kb, len, s.w, out);
#endif
  } else {
    got = compact_scalar(kb, len, s.w, out);
  }
  s.cand_off[blk] = size;
  s.cand_cnt[blk] = static_cast<uint32_t>(got);
  size += got;
}

using ScanFn = void (*)(const Src&, WindowScan&, int, int64_t, int64_t, const float*, int64_t,
                        uint32_t*);

void scan_block_default(const Src& x, WindowScan& s, int tid, int64_t blk, int64_t off,
                        const float* b, int64_t len, uint32_t* kb) {
  scan_block<false>(x, s, tid, blk, off, b, len, kb);
}

#if MF_AVX2_CLONES
MF_TARGET_AVX2 void scan_block_avx2(const Src& x, WindowScan& s, int tid, int64_t blk,
                                    int64_t off, const float* b, int64_t len, uint32_t* kb) {
  scan_block<true>(x, s, tid, blk, off, b, len, kb);
}

MF_TARGET_AVX512BW void scan_block_avx512(const Src& x, WindowScan& s, int tid, int64_t blk,
                                          int64_t off, const float* b, int64_t len, uint32_t* kb) {
  scan_block<true>(x, s, tid, blk, off, b, len, kb);
}
#endif

}  // namespace

int64_t compact_window(const uint32_t* kb, int64_t len, Window w, uint32_t* out) {
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) return compact_avx2(kb, len, w, out);
#endif
  return compact_scalar(kb, len, w, out);
}

void keys_of_block(const Src& x, int64_t off, const float* b, int64_t len, uint32_t* kb) {
  visit_input_dtype(x.dt, [&](auto tag) {
    block_keys<decltype(tag)::value>(x.ptr, off, b, len, kb);
  });
}

namespace {

int64_t sum(const std::vector<uint32_t>& counts) {
  int64_t total = 0;
  for (uint32_t c : counts) total += c;
  return total;
}

// Keys a list needs beyond its capacity: a block's worth, + 8 for the packed stores.
constexpr int64_t kListSlack = kBlock + 8;

}  // namespace

size_t candidate_bytes(int models, int64_t n, int nthreads) {
  return sizeof(uint32_t) * models * nthreads * (n / kCandidateShare / nthreads + 1 + kListSlack);
}

size_t candidate_bytes_min(int models, int64_t n, int nthreads) {
  return sizeof(uint32_t) * models * nthreads * (n / (2 * kCandidateShare) / nthreads + 1 + kListSlack);
}

ActiveModels active_models(const std::vector<Src>& xs, const std::vector<int64_t>& keep,
                           const std::vector<int>& active) {
  ActiveModels m;
  for (int i : active) {
    m.xs.push_back(&xs[i]);
    m.keep.push_back(keep[i]);
  }
  return m;
}

int64_t WindowScan::above() const { return sum(above_blk); }
int64_t WindowScan::eq_hi_total() const { return sum(eq_hi); }
int64_t WindowScan::eq_lo_total() const { return sum(eq_lo); }

int64_t WindowScan::candidates() const {
  int64_t total = 0;
  for (int64_t s : size) total += s;
  return total;
}

std::vector<WindowScan> scan_windows(const Src& base, const std::vector<const Src*>& xs,
                                     const std::vector<int64_t>& keep, int64_t n, int nthreads,
                                     void* space, size_t space_bytes) {
  const std::vector<Window> windows = predict_windows(base, xs, keep, n, kSampleMax, nthreads);
  const int A = static_cast<int>(xs.size());
  const int64_t nb = num_blocks(n);
  const int64_t room = static_cast<int64_t>(space_bytes / sizeof(uint32_t)) / (A * nthreads);
  const int64_t cap = std::min(n / kCandidateShare / nthreads + 1, room - kListSlack);
  uint32_t* next = static_cast<uint32_t*>(space);
  std::vector<WindowScan> scans(A);
  for (int a = 0; a < A; ++a) {
    WindowScan& s = scans[a];
    s.w = windows[a];
    for (auto* v : {&s.above_blk, &s.eq_hi, &s.eq_lo, &s.cand_cnt}) v->assign(nb, 0);
    s.cand_off.assign(nb, 0);
    s.owner.assign(nb, 0);
    s.size.assign(nthreads, 0);
    s.capacity = cap;
    for (int t = 0; t < nthreads; ++t, next += cap + kListSlack) s.lists.push_back(next);
  }
  ScanFn scan = &scan_block_default;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) scan = &scan_block_avx2;
  if (cpu_has_avx512bw()) scan = &scan_block_avx512;
#endif
  for_each_block(base, n, nthreads, [&](int tid, int64_t blk, int64_t off, int64_t len,
                                        const float* b, float* spare) {
    uint32_t* kb = reinterpret_cast<uint32_t*>(spare);
    for (size_t a = 0; a < xs.size(); ++a) {
      scans[a].owner[blk] = tid;
      scan(*xs[a], scans[a], tid, blk, off, b, len, kb);
    }
  });
  for (WindowScan& s : scans) {
    for (int64_t size : s.size) s.overflow |= size > s.capacity;
  }
  return scans;
}

}  // namespace mergefast
