// SCE's window of the threshold's bucket, its sums and its records (sce_window.h).
#include "sce_window.h"

#include "random.h"
#include "select/window.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

namespace mergefast {
namespace {

// Below this many elements the keys pass is short and the energies keep their own pass.
constexpr int64_t kWindowMin = int64_t{1} << 20;
// Sampled elements: groups of kGroup neighbours (one cache line of each input), at least
// kSampleGroups groups (one or more a block), the lines asked for kAhead groups ahead.
constexpr int64_t kGroup = 8;
constexpr int64_t kSampleGroups = 2048;
constexpr int64_t kAhead = 8;
// The window spans kSigmas binomial standard deviations of the sampled keep count on either
// side, plus kSlack keys: ~2 % of a 0.3B MLP tensor (2816 x 1024) at select_topk 0.1, where the
// threshold's bucket lay within 2 buckets of the sample's estimate in each of the 48.
constexpr double kSigmas = 3.0;
constexpr double kSlack = 16.0;
// Too few sampled keys above the threshold to place it.
constexpr double kMinSampleKeep = 64.0;
// Past this share of the sampled keys inside, the keys are heavily tied (few distinct variances)
// and the records would cost more than the energies' own pass.
constexpr double kMaxShare = 0.08;

// MERGEFAST_SCE_NO_WINDOW=1 in the environment (read at each call): the energies take their own
// pass (tests compare the two).
bool window_disabled() { return env_flag("MERGEFAST_SCE_NO_WINDOW"); }

// The first elements of the sampled groups.
std::vector<int64_t> group_starts(int64_t n) {
  const int64_t nb = num_blocks(n);
  const int64_t per_block = std::max<int64_t>(1, (kSampleGroups + nb - 1) / nb);
  std::vector<int64_t> starts;
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t off = blk * kBlock, len = std::min(kBlock, n - off);
    if (len < kGroup) continue;
    for (int64_t g = 0; g < per_block; ++g) {
      // the group's place in its block: splitmix64's finaliser of its index (random.h)
      const uint64_t place = mix64(static_cast<uint64_t>(blk * per_block + g)) % static_cast<uint64_t>(len - kGroup + 1);
      starts.push_back(off + static_cast<int64_t>(place));
    }
  }
  return starts;
}

// The exact keys of the sampled elements; each group's lines are asked for kAhead groups before
// (the inputs are cold: one miss per input and group otherwise).
std::vector<uint32_t> sample_keys(const SceArgs& a) {
  const std::vector<int64_t> starts = group_starts(a.n);
  std::vector<uint32_t> keys;
  keys.reserve(starts.size() * kGroup);
  for (size_t g = 0; g < starts.size(); ++g) {
    if (g + kAhead < starts.size()) {
      const int64_t at = starts[g + kAhead];
      __builtin_prefetch(static_cast<const char*>(a.base->ptr) + at * dtype_size(a.base->dt));
      for (const Src& x : *a.xs) __builtin_prefetch(static_cast<const char*>(x.ptr) + at * dtype_size(x.dt));
    }
    for (int64_t t = 0; t < kGroup; ++t) keys.push_back(sce_key_at(a, starts[g] + t));
  }
  return keys;
}

// The key of rank `rank` from the largest (0) of keys (reordered; select/window.h's key_of_rank).
uint32_t key_from_top(std::vector<uint32_t>& keys, int64_t rank) {
  return key_of_rank(keys, static_cast<int64_t>(keys.size()) - 1 - rank);
}

// The calling thread's arena.
RecordArena& thread_arena() {
  thread_local RecordArena arena;
  return arena;
}

// out[i] = the squares of model i's deltas whose keys are above_key or more, in 16 float64 lanes
// (element j in lane j % 16, flat order), then the lanes in order.
MF_INLINE void above_sums(const float* b, const float* const* x, int K, const uint32_t* kb, int64_t len,
                          uint32_t above_key, double* out) {
  for (int i = 0; i < K; ++i) {
    const float* xi = x[i];
    double lanes[16] = {};
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
      for (int l = 0; l < 16; ++l) {
        const float d = xi[j + l] - b[j + l];
        lanes[l] += static_cast<double>(kb[j + l] >= above_key ? d * d : 0.0f);
      }
    }
    for (; j < len; ++j) {
      const float d = xi[j] - b[j];
      lanes[j % 16] += static_cast<double>(kb[j] >= above_key ? d * d : 0.0f);
    }
    double t = 0.0;
    for (int l = 0; l < 16; ++l) t += lanes[l];
    out[i] = t;
  }
}

// Appends the window's elements j >= from of a block to out (room for len), in flat order;
// returns how many. The portable loop.
int64_t record_block(const SceWindow& w, int K, const uint32_t* kb, int64_t len, const float* b,
                     const float* const* x, WindowRecord* out, int64_t from) {
  int64_t count = 0;
  for (int64_t j = from; j < len; ++j) {
    if (!w.holds(kb[j] >> 16)) continue;
    WindowRecord& r = out[count++];
    r.key = kb[j];
    r.j = static_cast<uint32_t>(j);
    for (int i = 0; i < K; ++i) r.d[i] = x[i][j] - b[j];
  }
  return count;
}

// The records' block function: above_sums, then record (the window's elements into the arena).
using record_fn = int64_t (*)(const SceWindow&, int, const uint32_t*, int64_t, const float*, const float* const*,
                             WindowRecord*, int64_t);

MF_INLINE void window_block_impl(WindowSums& ws, int tid, int64_t off, int64_t len, const uint32_t* kb,
                                 const float* const* staged, record_fn record) {
  if (ws.full.load(std::memory_order_relaxed)) return;
  const int64_t blk = off / kBlock;
  above_sums(staged[0], staged + 1, ws.K, kb, len, ws.w.above_key(), ws.above.data() + blk * ws.K);
  if (ws.arenas[tid] == nullptr) {
    ws.arenas[tid] = &thread_arena();
    ws.arenas[tid]->size = 0;
  }
  RecordArena& arena = *ws.arenas[tid];
  if (arena.size >= ws.cap || !arena.ensure(len)) {
    ws.full.store(true, std::memory_order_relaxed);
    return;
  }
  const int64_t count = record(ws.w, ws.K, kb, len, staged[0], staged + 1, arena.p.get() + arena.size, 0);
  ws.spans[blk] = WindowSums::Span{tid, static_cast<int32_t>(count), arena.size};
  arena.size += count;
}

void window_block_default(WindowSums& ws, int tid, int64_t off, int64_t len, const uint32_t* kb,
                          const float* const* staged) {
  window_block_impl(ws, tid, off, len, kb, staged, &record_block);
}

#if MF_AVX2_CLONES
// record_block with AVX2: whether each of 8 keys is inside (coarse - lo <= hi - lo, unsigned, by
// a min) as one mask, and only the few set lanes visited (~1.5 % of the elements are inside; a
// branch per element, or writing every element of a group and counting, took ~5x as long).
MF_TARGET_AVX2 int64_t record_block_avx2(const SceWindow& w, int K, const uint32_t* kb, int64_t len, const float* b,
                                         const float* const* x, WindowRecord* out, int64_t from) {
  const __m256i lo = _mm256_set1_epi32(static_cast<int>(w.lo));
  const __m256i span = _mm256_set1_epi32(static_cast<int>(w.hi - w.lo));
  int64_t count = 0, j = from;
  for (; j + 8 <= len; j += 8) {
    const __m256i c = _mm256_sub_epi32(
        _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kb + j)), 16), lo);
    const __m256i inside = _mm256_cmpeq_epi32(_mm256_min_epu32(c, span), c);
    for (auto mask = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(inside))); mask != 0;
         mask &= mask - 1) {
      const int64_t e = j + __builtin_ctz(mask);
      WindowRecord& r = out[count++];
      r.key = kb[e];
      r.j = static_cast<uint32_t>(e);
      for (int i = 0; i < K; ++i) r.d[i] = x[i][e] - b[e];
    }
  }
  return count + record_block(w, K, kb, len, b, x, out + count, j);  // the last len % 8
}

MF_TARGET_AVX2 void window_block_avx2(WindowSums& ws, int tid, int64_t off, int64_t len, const uint32_t* kb,
                                      const float* const* staged) {
  window_block_impl(ws, tid, off, len, kb, staged, &record_block_avx2);
}

MF_TARGET_AVX512BW void window_block_avx512(WindowSums& ws, int tid, int64_t off, int64_t len, const uint32_t* kb,
                                            const float* const* staged) {
  window_block_impl(ws, tid, off, len, kb, staged, &record_block_avx2);
}
#endif

}  // namespace

window_block_fn window_block_pick() {
#if MF_AVX2_CLONES
  if (cpu_has_avx512bw()) return &window_block_avx512;
  if (cpu_has_avx2()) return &window_block_avx2;
#endif
  return &window_block_default;
}

bool RecordArena::ensure(int64_t more) {
  if (size + more <= capacity) return true;
  const int64_t grown = std::max(size + more, capacity * 2);
  std::unique_ptr<WindowRecord[]> q(new (std::nothrow) WindowRecord[static_cast<size_t>(grown)]);
  if (q == nullptr) return false;
  if (size > 0) std::memcpy(q.get(), p.get(), static_cast<size_t>(size) * sizeof(WindowRecord));
  p = std::move(q);
  capacity = grown;
  return true;
}

SceWindow sce_sample_window(const SceArgs& a, double topk) {
  SceWindow w;
  if (a.K < 2 || a.K > kWindowMaxModels || a.n < kWindowMin || topk >= 1.0 || window_disabled()) return w;
  std::vector<uint32_t> keys = sample_keys(a);
  const auto nonzero = static_cast<int64_t>(keys.size() - std::count(keys.begin(), keys.end(), 0u));
  const double kept = static_cast<double>(nonzero) * topk;
  if (kept < kMinSampleKeep) return w;
  const double margin = kSigmas * std::sqrt(kept) + kSlack;
  const auto top = static_cast<int64_t>(std::max(0.0, kept - margin));
  const auto bottom = static_cast<int64_t>(kept + margin);
  w.hi = key_from_top(keys, top) >> 16;
  w.lo = bottom < nonzero ? key_from_top(keys, bottom) >> 16 : 0;
  const auto inside = std::count_if(keys.begin(), keys.end(), [&w](uint32_t key) { return w.holds(key >> 16); });
  w.share = static_cast<double>(inside) / static_cast<double>(keys.size());
  return w.share <= kMaxShare ? w : SceWindow{};
}

namespace {
std::atomic<int64_t> g_taken{0}, g_fell_back{0};
}  // namespace

void count_window(const WindowSums& ws, bool taken) {
  if (!ws.on()) return;
  (taken ? g_taken : g_fell_back).fetch_add(1, std::memory_order_relaxed);
}

std::pair<int64_t, int64_t> sce_window_counts() { return {g_taken.load(), g_fell_back.load()}; }

void window_start(const SceArgs& a, double topk, int nthreads, WindowSums& ws) {
  ws.w = sce_sample_window(a, topk);
  if (!ws.w.on()) return;
  const auto nb = static_cast<size_t>(num_blocks(a.n));
  ws.K = a.K;
  // Twice the sampled share of all elements (a thread may run most blocks), and 4 blocks more;
  // past that, heavy ties: the passes without the window.
  ws.cap = static_cast<int64_t>(2.0 * ws.w.share * static_cast<double>(a.n)) + 4 * kBlock;
  ws.above.assign(nb * a.K, 0.0);
  ws.spans.assign(nb, WindowSums::Span{0, 0, 0});
  ws.arenas.assign(static_cast<size_t>(nthreads), nullptr);
}

void window_low_histogram(const WindowSums& ws, uint32_t hi, std::vector<int64_t>& low) {
  for (size_t blk = 0; blk < ws.spans.size(); ++blk) {
    const WindowRecord* rec = ws.records(static_cast<int64_t>(blk));
    for (int32_t e = 0; e < ws.spans[blk].count; ++e) {
      if (rec[e].key >> 16 == hi) low[rec[e].key & 0xFFFFu]++;
    }
  }
}

void window_count_equal(const WindowSums& ws, uint32_t thr, std::vector<int64_t>& eq_in) {
  for (size_t blk = 0; blk < ws.spans.size(); ++blk) {
    const WindowRecord* rec = ws.records(static_cast<int64_t>(blk));
    int64_t eq = 0;
    for (int32_t e = 0; e < ws.spans[blk].count; ++e) eq += rec[e].key == thr;
    eq_in[blk] = eq;
  }
}

void window_energies(const WindowSums& ws, const KeepRule& r, double* energies) {
  const int K = ws.K;
  std::vector<double> part(ws.above);
  for (size_t blk = 0; blk < ws.spans.size(); ++blk) {
    const WindowRecord* rec = ws.records(static_cast<int64_t>(blk));
    uint32_t teff = 0;
    int64_t rem = 0;
    const bool whole = r.block_rule(static_cast<int64_t>(blk), teff, rem);  // key >= teff decides
    for (int32_t e = 0; e < ws.spans[blk].count; ++e) {
      const uint32_t key = rec[e].key;
      const bool keep = whole ? key >= teff : r.keeps_in_split(key, rem);
      const float m = keep ? 1.0f : 0.0f;
      for (int i = 0; i < K; ++i) {
        const float d = rec[e].d[i] * m;
        part[blk * K + i] += static_cast<double>(d * d);
      }
    }
  }
  sce_sum_parts(part, K, energies);
}

}  // namespace mergefast
