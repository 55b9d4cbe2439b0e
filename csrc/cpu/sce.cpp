// SCE (mergefast/methods/sce.py) on the CPU, selection side: no K x n temporaries, no sort and
// nothing of size n but the output.
//
//   keys     one pass over base + K models: the variance of the K deltas d_i = x_i - b
//            (float32) as torch's CPU var() takes it (Welford in float64, models in order, then
//            m2 / K rounded to float32) and its key (select/rules.h's mag_key: float32 bits,
//            every NaN one key above inf); the key's top 15 bits into the element's slot of
//            the output (common.h, OutputSlots), their histogram and the count of nonzero keys.
//   select   the exact top-k of the keys, k = int(count_nonzero(var) * select_topk): the k-th
//            bucket `hi` of the top histogram, a histogram of the low 16 bits of the keys in
//            it, then per-block counts of the threshold key when the quota splits its ties
//            (kept lowest flat index first, as the reference's stable sort): a KeepRule, as the
//            TIES selection's. The low histogram reads the slots, and the exact key of the
//            elements in bucket hi alone, recomputed from the inputs (sce.h, sce_key_at: the
//            same operations): ~0.1 % of the elements of a 7B layer (base + 3 bf16, topk
//            0.1); it records those keys, and the tie counts come from them (BucketKeys).
//   energies sum_j (d_ij * m_j)^2 per model (m_j = 1.0f kept, 0.0f dropped: NaN * 0 stays NaN,
//            as in the reference's multiply), squares in float32, sums in float64 over 8 fixed
//            lanes per block and the blocks in order (the same on any thread count).
//
// From 2^20 elements, for 2-4 models, a sample of the keys bounds the threshold's bucket to a
// window before the keys pass, which then gathers the energies' sums above the window and
// records the elements inside it (sce_window.h): the low histogram and tie counts come from
// the records, and the energies need no pass of their own (two reads of the inputs in all;
// the passes above where the threshold's bucket falls outside the window).
//
// The variance is computed once for every element: it is the costly part (three float64
// Welford updates an element), and recomputing it in each of the four passes that need it
// took ~370 ms a pass on one 7B layer (2-vCPU AMD EPYC VM). Keeping the top bits in the
// output's slots instead of a 4-byte key array takes n * 4 bytes less memory (131 MB for a
// 32000 x 1024 embedding) at about the same speed: 7B layer, one thread, CPU time 484-549 ms
// against 463-523 ms with the key array (alternated processes on that VM, shared), and none
// of the key array's page faults. The apply (sce_apply.cpp) masks by
// the same keys. The caller turns the energies into the weights w_i (mergefast/kernels/sce.py).
#include <algorithm>
#include <atomic>

#include "kernels.h"
#include "sce.h"
#include "sce_window.h"

namespace mergefast {
namespace {

constexpr int kHiBins = 1 << 15;  // top 15 bits of the 31-bit key
constexpr int kLoBins = 1 << 16;  // low 16 bits
// Scratch buffers of the keys pass: 0 base, 1 staged x, 2-3 Welford mean (float64), 4-5 m2
// (keys_any_k); 0 base, 1..K the staged models (keys_fixed_k, K <= 4).
constexpr int kKeyBuffers = 6;

// One Welford update (torch's WelfordOps::reduce) of the block with model i's deltas x - b.
template <bool Exact, bool Fma>
MF_INLINE void welford(const float* x, const float* b, int64_t len, double nf, double* mean, double* m2) {
  const double inv = 1.0 / nf;
  for (int64_t j = 0; j < len; ++j) {
    const double v = static_cast<double>(x[j] - b[j]);
    const double delta = v - mean[j];
    mean[j] = mean[j] + sce_divide<Fma>(delta, nf, inv, Exact);
    m2[j] = m2[j] + delta * (v - mean[j]);
  }
}

// The variance keys of block (off, len) into keys + off, any K: one Welford update of the whole
// block per model, the running mean and m2 in scratch (buffers 2-3 and 4-5).
template <bool Fma>
MF_INLINE void keys_any_k(const SceArgs& a, const float* b, uint32_t* kb, int64_t off, int64_t len, Scratch& s) {
  double* mean = reinterpret_cast<double*>(s.buf(2));
  double* m2 = reinterpret_cast<double*>(s.buf(4));
  std::fill(mean, mean + len, 0.0);
  std::fill(m2, m2 + len, 0.0);
  for (int i = 0; i < a.K; ++i) {
    const float* x = stage((*a.xs)[i], off, len, s.buf(1));
    if (sce_power_of_two(i + 1)) {
      welford<true, Fma>(x, b, len, i + 1.0, mean, m2);
    } else {
      welford<false, Fma>(x, b, len, i + 1.0, mean, m2);
    }
  }
  const double count = a.K, inv = 1.0 / count;
  const bool exact = sce_power_of_two(a.K);
  for (int64_t j = 0; j < len; ++j) kb[j] = mag_key(static_cast<float>(sce_divide<Fma>(m2[j], count, inv, exact)));
}

// The same keys for K models known at compile time: the K staged blocks (buffers 1..K) first,
// then every element's Welford updates in registers. The same operations in the same order as
// keys_any_k; measured on a 2-vCPU AMD EPYC VM, 8M elements, K = 3, one thread: 19-32 ms
// against 26-57 ms with the AVX2 clones (the machine shared).
template <int K, bool Fma>
MF_INLINE void keys_fixed_k(const SceArgs& a, const float* b, uint32_t* kb, int64_t off, int64_t len, Scratch& s,
                            const float** x) {
  for (int i = 0; i < K; ++i) x[i] = stage((*a.xs)[i], off, len, s.buf(1 + i));
  for (int64_t j = 0; j < len; ++j) {
    double mean = 0.0, m2 = 0.0;
    for (int i = 0; i < K; ++i) {
      const double v = static_cast<double>(x[i][j] - b[j]);
      const double delta = v - mean;
      mean = mean + sce_divide<Fma>(delta, i + 1.0, 1.0 / (i + 1.0), sce_power_of_two(i + 1));
      m2 = m2 + delta * (v - mean);
    }
    kb[j] = mag_key(static_cast<float>(sce_divide<Fma>(m2, K, 1.0 / K, sce_power_of_two(K))));
  }
}

// The variance keys of block (off, len) into kb (block-local); for 2-4 models the staged base
// and models into staged[0] and staged[1..K].
template <bool Fma>
MF_INLINE void keys_block_impl(const SceArgs& a, uint32_t* kb, int64_t off, int64_t len, Scratch& s,
                               const float** staged) {
  const float* b = stage(*a.base, off, len, s.buf(0));
  staged[0] = b;
  switch (a.K) {
    case 2: return keys_fixed_k<2, Fma>(a, b, kb, off, len, s, staged + 1);
    case 3: return keys_fixed_k<3, Fma>(a, b, kb, off, len, s, staged + 1);
    case 4: return keys_fixed_k<4, Fma>(a, b, kb, off, len, s, staged + 1);
    default: return keys_any_k<Fma>(a, b, kb, off, len, s);
  }
}

// Block blk's sum of squared kept deltas per model into part[0..K): squares (d * d in
// float32) added to 8 lanes in flat order, then the lanes in order. Buffers: 0 base, 1 staged
// x, 2 mask, 3 the block's keys.
MF_INLINE void energies_block_impl(const SceArgs& a, const KeepRule& r, int64_t blk, int64_t len, Scratch& s,
                                   double* part) {
  const int64_t off = blk * kBlock;
  float* m = s.buf(2);
  if (sce_keeps_all(r)) {
    std::fill(m, m + len, 1.0f);  // d * 1.0f == d
  } else {
    sce_slot_mask(a, r, blk, len, reinterpret_cast<uint32_t*>(s.buf(3)), m);
  }
  const float* b = stage(*a.base, off, len, s.buf(0));
  for (int i = 0; i < a.K; ++i) {
    const float* x = stage((*a.xs)[i], off, len, s.buf(1));
    double lanes[8] = {};
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
      for (int l = 0; l < 8; ++l) {
        const float d = (x[j + l] - b[j + l]) * m[j + l];
        lanes[l] += static_cast<double>(d * d);
      }
    }
    for (; j < len; ++j) {
      const float d = (x[j] - b[j]) * m[j];
      lanes[j % 8] += static_cast<double>(d * d);
    }
    double t = 0.0;
    for (int l = 0; l < 8; ++l) t += lanes[l];
    part[i] = t;
  }
}

// The keys block by the widest clone the CPU runs; the clones whose CPUs fuse multiply-adds
// divide as sce_divide<true> (the same bits as a division).
void keys_block_default(const SceArgs& a, uint32_t* kb, int64_t off, int64_t len, Scratch& s, const float** staged) {
  keys_block_impl<false>(a, kb, off, len, s, staged);
}

#if MF_AVX2_CLONES
MF_TARGET_FMA void keys_block_avx2(const SceArgs& a, uint32_t* kb, int64_t off, int64_t len, Scratch& s,
                                   const float** staged) {
  keys_block_impl<true>(a, kb, off, len, s, staged);
}

MF_TARGET_AVX512BW void keys_block_avx512(const SceArgs& a, uint32_t* kb, int64_t off, int64_t len, Scratch& s,
                                          const float** staged) {
  keys_block_impl<true>(a, kb, off, len, s, staged);
}
#endif

using keys_block_fn = decltype(&keys_block_default);

keys_block_fn keys_block_pick() {
#if MF_AVX2_CLONES
  if (cpu_has_avx512bw()) return &keys_block_avx512;
  if (cpu_has_avx2_fma()) return &keys_block_avx2;
#endif
  return &keys_block_default;
}

MF_SCE_CLONED(energies_block,
              (const SceArgs& a, const KeepRule& r, int64_t blk, int64_t len, Scratch& s, double* part),
              (a, r, blk, len, s, part))

// A histogram (`bins` bins) summed over per-thread parts: count(tid, off, len, scratch, part)
// adds block (off, len) to its thread's part (bins + 1 counters, the last one "skip") and
// returns how many of the block's keys are nonzero.
template <class Count>
std::vector<int64_t> histogram(const SceArgs& a, int buffers, size_t bins, Count&& count, int64_t* nonzero) {
  const int nthreads = team_size(a.n, a.threads);
  std::vector<std::vector<uint32_t>> part(nthreads, std::vector<uint32_t>(bins + 1, 0));
  std::vector<int64_t> nz(nthreads, 0);
  for_each_block_raw(a.n, nthreads, buffers, [&](int tid, int64_t, int64_t off, int64_t len, Scratch& s) {
    nz[tid] += count(tid, off, len, s, part[tid].data());
  });
  std::vector<int64_t> hist(bins, 0);
  for (int t = 0; t < nthreads; ++t) {
    for (size_t q = 0; q < bins; ++q) hist[q] += part[t][q];
    *nonzero += nz[t];
  }
  return hist;
}

// The keys pass: every key's top 15 bits into its slot and their histogram, the nonzero count;
// with a window, what it gathers (sce_window.h).
std::vector<int64_t> keys_pass(const SceArgs& a, int64_t* nonzero, WindowSums& ws) {
  const keys_block_fn block = keys_block_pick();
  const window_block_fn gather = window_block_pick();
  return histogram(a, kKeyBuffers + 1, kHiBins, [&](int tid, int64_t off, int64_t len, Scratch& s, uint32_t* h) {
    uint32_t* kb = reinterpret_cast<uint32_t*>(s.buf(kKeyBuffers));
    const float* staged[1 + kWindowMaxModels];  // the base, then the models
    prefetch_after(a.base, *a.xs, off + len, a.n);  // common.h: SCE's MLP jobs 0.95x the time
    block(a, kb, off, len, s, staged);
    if (ws.on()) gather(ws, tid, off, len, kb, staged);
    uint16_t* sl = a.slots.p + off * a.slots.stride;
    int64_t nz = 0;
    for (int64_t j = 0; j < len; ++j) {
      h[kb[j] >> 16]++;
      sl[j * a.slots.stride] = static_cast<uint16_t>(kb[j] >> 16);
      nz += kb[j] != 0;
    }
    return nz;
  }, nonzero);
}

// How many positions the selection keeps: int(nonzero * topk), at least 0.
int64_t keep_of(int64_t nonzero, double topk) {
  const double k = static_cast<double>(nonzero) * topk;
  return k > 0.0 ? static_cast<int64_t>(k) : 0;
}

// The exact keys of bucket a.hi as the low histogram recomputes them, per thread, for the tie
// counts per block: counting from them instead of a second scan of the slots saves recomputing
// each key, whose four loads miss the cache (~18 % of sce_select on 16384 x 1024 bf16, base +
// 3, topk 0.1, ties split). At most ~n / 32 of them are kept (16 bytes each); past that the
// counts scan the slots again.
class BucketKeys {
 public:
  BucketKeys(int nthreads, int64_t n) : per_(nthreads), cap_(n / 32 / nthreads + 1024) {}

  void add(int tid, int64_t index, uint32_t key) {
    auto& mine = per_[tid];
    if (mine.size() < static_cast<size_t>(cap_)) {
      mine.push_back(Entry{index, key});
    } else {
      full_.store(true, std::memory_order_relaxed);
    }
  }

  bool complete() const { return !full_.load(std::memory_order_relaxed); }

  // eq_in[block] += the recorded keys equal to thr in that block.
  void count_equal(uint32_t thr, std::vector<int64_t>& eq_in) const {
    for (const auto& mine : per_) {
      for (const Entry& e : mine) eq_in[e.index / kBlock] += e.key == thr;
    }
  }

 private:
  struct Entry {
    int64_t index;
    uint32_t key;
  };
  std::vector<std::vector<Entry>> per_;
  int64_t cap_;
  std::atomic<bool> full_{false};
};

// The rule's threshold key within bucket a.hi (k kept, above_bucket of them above the bucket)
// from the window's records (the low histogram of the bucket's keys, the tie counts).
void rule_from_window(const SceArgs& a, const WindowSums& ws, int64_t k, int64_t above_bucket, KeepRule& r) {
  std::vector<int64_t> low(kLoBins, 0);
  window_low_histogram(ws, a.hi, low);
  const auto [lo, above] = bin_from_top(low, k - above_bucket);
  const uint32_t thr = (a.hi << 16) | static_cast<uint32_t>(lo);
  if (!set_threshold(r, thr, k, above_bucket + above, low[lo], num_blocks(a.n))) return;
  window_count_equal(ws, thr, r.eq_in);
  scan_eq(r);
}

// The same from the slots: the low histogram recomputes the keys of bucket a.hi from the inputs.
void rule_from_slots(const SceArgs& a, int64_t k, int64_t above_bucket, KeepRule& r) {
  int64_t unused = 0;
  BucketKeys found(team_size(a.n, a.threads), a.n);
  const auto low = histogram(a, 0, kLoBins, [&](int tid, int64_t off, int64_t len, Scratch&, uint32_t* h) {
    sce_for_bucket(a, off, len, [&, tid, h](int64_t j, uint32_t key) {
      h[key & 0xFFFFu]++;
      found.add(tid, off + j, key);
    });
    return int64_t{0};
  }, &unused);
  const auto [lo, above] = bin_from_top(low, k - above_bucket);
  const uint32_t thr = (a.hi << 16) | static_cast<uint32_t>(lo);
  if (!set_threshold(r, thr, k, above_bucket + above, low[lo], num_blocks(a.n))) return;
  if (found.complete()) {
    found.count_equal(thr, r.eq_in);
  } else {
    for_each_block_raw(a.n, team_size(a.n, a.threads), 0, [&](int, int64_t blk, int64_t off, int64_t len, Scratch&) {
      int64_t eq = 0;
      sce_for_bucket(a, off, len, [&eq, thr](int64_t, uint32_t key) { eq += key == thr; });
      r.eq_in[blk] = eq;
    });
  }
  scan_eq(r);
}

// The keep rule of the variance selection (see the file comment); writes the slots unless
// topk >= 1, and a.hi: the threshold's bucket. Where the window (sce_window.h) holds a.hi,
// the energies too, and *energies_done.
KeepRule variance_rule(SceArgs& a, double topk, double* energies, bool* energies_done) {
  KeepRule r;  // keep all
  if (topk >= 1.0) return r;
  WindowSums ws;
  window_start(a, topk, team_size(a.n, a.threads), ws);
  int64_t nonzero = 0;
  const auto top = keys_pass(a, &nonzero, ws);
  const int64_t k = keep_of(nonzero, topk);
  if (k <= 0) {
    count_window(ws, false);
    r.thr = 0xFFFFFFFFu;  // keep none
    r.quota = 0;
    return r;
  }
  const auto [bucket, above_bucket] = bin_from_top(top, k);
  a.hi = static_cast<uint32_t>(bucket);
  *energies_done = ws.on() && !ws.full.load() && ws.w.holds(a.hi);
  count_window(ws, *energies_done);
  if (!*energies_done) {
    rule_from_slots(a, k, above_bucket, r);
    return r;
  }
  rule_from_window(a, ws, k, above_bucket, r);
  window_energies(ws, r, energies);
  return r;
}

}  // namespace

KeepRule sce_select(const Src& base, const std::vector<Src>& xs, double topk, int64_t n, int threads,
                    double* energies, const Dst& dst) {
  SceArgs a{&base, &xs, static_cast<int>(xs.size()), n, threads, output_slots(dst), kNoBucket};
  bool energies_done = false;
  const KeepRule r = variance_rule(a, topk, energies, &energies_done);
  if (energies_done) return r;
  const int K = a.K;
  std::vector<double> part(static_cast<size_t>(num_blocks(n)) * K, 0.0);
  const energies_block_fn block = energies_block_pick();
  for_each_block_raw(n, team_size(n, threads), 4, [&](int, int64_t blk, int64_t, int64_t len, Scratch& s) {
    block(a, r, blk, len, s, part.data() + blk * K);
  });
  sce_sum_parts(part, K, energies);
  return r;
}

}  // namespace mergefast
