// Task arithmetic / TIES on the CPU: exact magnitude selection by histogram, then one fused
// apply pass.
//
// Selection (per model i with 0 < k_i < n): the key of an element is the bit pattern of
// |f32(x) - f32(base)| (sign cleared, 31 bits; integer order == magnitude order).
//   pass A: 32768-bin histogram of key >> 16 (private per thread, merged) -> the bucket that
//           holds the k-th largest key and the count above that bucket;
//   pass B: 65536-bin histogram of key & 0xFFFF over that bucket only -> the exact threshold
//           key T, the count strictly above it and the quota r of T-valued elements to keep;
//   pass C: only when r < count(key == T): per-block counts of key == T and an exclusive
//           scan, so that ties are kept lowest flat index first (at most one block per model
//           straddles the cut and is walked in order).
// Passes A/B/C read base and all selected models together, block by block; nothing of size
// n is allocated except the output. The apply pass recomputes the deltas in registers.
#include <algorithm>
#include <climits>
#include <memory>

#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

constexpr int kHiBins = 1 << 15;  // top 15 bits of the 31-bit key
constexpr int kLoBins = 1 << 16;  // low 16 bits

MF_INLINE uint32_t mag_key(float d) {
  return f32_to_bits(d) & 0x7FFFFFFFu;
}

// Which elements of one model survive: key > thr, plus the first `quota` elements with
// key == thr in flat order. keep-all is (thr 0, no cut); keep-none is (thr 0xFFFFFFFF).
struct KeepRule {
  uint32_t thr = 0;
  int64_t quota = LLONG_MAX;
  bool cut = false;                 // quota < count(key == thr): ties are split
  std::vector<int64_t> eq_before;   // per block (only when cut)
  std::vector<int64_t> eq_in;       // per block (only when cut)

  // For block `blk`: returns true and sets `teff` when the block's rule is "key >= teff";
  // returns false and sets `rem` (ties still to keep) when the block straddles the cut.
  bool block_rule(int64_t blk, uint32_t& teff, int64_t& rem) const {
    teff = thr;
    if (!cut) return true;
    const int64_t eb = eq_before[blk];
    if (eb + eq_in[blk] <= quota) return true;
    if (eb >= quota) {
      teff = thr + 1;
      return true;
    }
    rem = quota - eb;
    return false;
  }
};

// Deltas of model `x` against staged base `b` into `d`.
MF_INLINE void deltas(const float* x, const float* b, int64_t len, float* d) {
  for (int64_t j = 0; j < len; ++j) d[j] = x[j] - b[j];
}

// One element of a source as float32 (for sampling).
inline float load_one(const Src& s, int64_t i) {
  switch (s.dt) {
    case DType::F32: return static_cast<const float*>(s.ptr)[i];
    case DType::BF16:
      return bits_to_f32(static_cast<uint32_t>(static_cast<const uint16_t*>(s.ptr)[i]) << 16);
    case DType::F16: return half_to_f32(static_cast<const uint16_t*>(s.ptr)[i]);
    default: return 0.0f;
  }
}

// Candidate bucket: a strided sample of kSample keys per model predicts the hi-bucket of the
// k-th largest key; pass A counts the keys above it and keeps the low 16 bits of the keys in
// it, in flat order (at most n / kCandidateShare per model, 2 bytes each). When the counts
// confirm the prediction, passes B and C walk these candidates instead of re-reading every
// input, so TIES takes 2 full passes instead of 4; otherwise a histogram pass finds the
// bucket and the full passes B and C run. Deltas of bf16 models are coarse: the k-th bucket
// held 22 % of a 7B layer's elements in the benchmark, hence a share of 1/4 (1/16 overflowed).
constexpr int64_t kSample = 1 << 16;

// The low 16 bits of one thread's candidate keys of one model, in flat order. Left
// uninitialised (only the first `size` are written and read) so that its pages are touched
// only as far as they are used.
struct Candidates {
  std::unique_ptr<uint16_t[]> data;
  int64_t size = 0;
  void allocate(int64_t capacity) { data.reset(new uint16_t[capacity]); }
};
constexpr int64_t kCandidateShare = 4;

// At most this many elements: the single-threaded selection by nth_element.
constexpr int64_t kSmallSelect = 1 << 16;

std::vector<KeepRule> select_magnitude(const Src& base, const std::vector<Src>& xs,
                                       const std::vector<int64_t>& keep, int64_t n) {
  const int K = static_cast<int>(xs.size());
  const int64_t nb = num_blocks(n);
  std::vector<KeepRule> rules(K);
  std::vector<int> active;  // models that need a threshold
  for (int i = 0; i < K; ++i) {
    if (keep[i] >= n) {
      rules[i].thr = 0;
    } else if (keep[i] <= 0) {
      rules[i].thr = 0xFFFFFFFFu;
      rules[i].quota = 0;
    } else {
      active.push_back(i);
    }
  }
  if (active.empty()) return rules;
  const int A = static_cast<int>(active.size());

  // ---- small tensors (layer norms, biases): one thread, the keys in a vector and
  // nth_element; the histograms below cost ~0.35 ms per call to set up (measured: TIES of
  // 3 x 1024 bf16 elements took 364 us in the kernel, 17 us with this path).
  if (n <= kSmallSelect) {
    std::vector<uint32_t> keys(n), tmp(n);
    Scratch scratch(1);
    for (int a = 0; a < A; ++a) {
      const Src& x = xs[active[a]];
      for (int64_t off = 0; off < n; off += kBlock) {
        const int64_t len = std::min(kBlock, n - off);
        const float* b = stage(base, off, len, scratch.buf(0));
        visit_input_dtype(x.dt, [&](auto tag) {
          constexpr DType D = decltype(tag)::value;
          for (int64_t j = 0; j < len; ++j) keys[off + j] = mag_key(load_f32<D>(x.ptr, off + j) - b[j]);
        });
      }
      const int64_t k = keep[active[a]];
      tmp = keys;
      std::nth_element(tmp.begin(), tmp.begin() + (n - k), tmp.end());
      const uint32_t t = tmp[n - k];
      int64_t gt = 0, eq = 0;
      for (int64_t j = 0; j < n; ++j) {
        gt += keys[j] > t;
        eq += keys[j] == t;
      }
      KeepRule& r = rules[active[a]];
      r.thr = t;
      r.quota = k - gt;
      r.cut = r.quota < eq;
      if (r.cut) {
        r.eq_in.assign(nb, 0);
        r.eq_before.assign(nb, 0);
        int64_t run = 0;
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t off = blk * kBlock, len = std::min(kBlock, n - off);
          int64_t c = 0;
          for (int64_t j = 0; j < len; ++j) c += keys[off + j] == t;
          r.eq_in[blk] = c;
          r.eq_before[blk] = run;
          run += c;
        }
      }
    }
    return rules;
  }

  // ---- predicted buckets (a window [win_lo, win_hi] of one bucket; empty: lo > hi)
  std::vector<uint32_t> win_lo(A, 1), win_hi(A, 0);
  if (n >= 16 * kSample) {
    const int64_t stride = n / kSample;
    std::vector<uint32_t> keys(kSample);
    for (int a = 0; a < A; ++a) {
      const Src& x = xs[active[a]];
      for (int64_t q = 0; q < kSample; ++q) {
        const int64_t i = q * stride;
        keys[q] = mag_key(load_one(x, i) - load_one(base, i));
      }
      const int64_t r = static_cast<int64_t>(static_cast<double>(keep[active[a]]) / n * kSample);
      auto from_top = [&](int64_t rank) {
        rank = std::min<int64_t>(std::max<int64_t>(rank, 0), kSample - 1);
        auto it = keys.begin() + (kSample - 1 - rank);
        std::nth_element(keys.begin(), it, keys.end());
        return *it;
      };
      win_lo[a] = win_hi[a] = from_top(r) >> 16;
    }
  }

  // ---- pass A over the models with a predicted bucket bk: count the keys above bk (a
  // compare that vectorises) and keep the low 16 bits of the keys in bk, in flat order. No
  // histogram here: together with the larger candidate share this took TIES on a 7B layer
  // (3 models, bf16, density 0.5, 2-core box) from 550 ms to 415 ms, measured side by side.
  const int nthreads = num_threads();
  const int64_t cap = n / kCandidateShare / nthreads + 1;  // candidates per thread and model
  std::vector<Candidates> cand(static_cast<size_t>(nthreads) * A);
  std::vector<int> blk_thread(nb, 0);
  std::vector<std::vector<int64_t>> blk_off(A), blk_cnt(A);
  std::vector<int> windowed;  // indices into `active`
  for (int a = 0; a < A; ++a) {
    if (win_lo[a] <= win_hi[a]) {
      windowed.push_back(a);
      blk_off[a].assign(nb, 0);
      blk_cnt[a].assign(nb, 0);
    }
  }
  std::vector<char> overflow(A, 0);
  std::vector<int64_t> greater(A, 0);
  if (!windowed.empty()) {
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
      const int tid = omp_get_thread_num();
#else
      const int tid = 0;
#endif
      std::vector<char> over(A, 0);
      std::vector<int64_t> gt(A, 0);
      for (int a : windowed) cand[tid * A + a].allocate(cap + kBlock);
      Scratch scratch(3);
      uint32_t* kb = reinterpret_cast<uint32_t*>(scratch.buf(2));
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int64_t off = blk * kBlock;
        const int64_t len = std::min(kBlock, n - off);
        blk_thread[blk] = tid;
        const float* b = stage(base, off, len, scratch.buf(0));
        for (int a : windowed) {
          const uint32_t bk = win_lo[a];
          int64_t above_bk = 0;
          visit_input_dtype(xs[active[a]].dt, [&](auto tag) {
            constexpr DType D = decltype(tag)::value;
            const void* xp = xs[active[a]].ptr;
            for (int64_t j = 0; j < len; ++j) {  // x converted as read, no staging
              const uint32_t key = mag_key(load_f32<D>(xp, off + j) - b[j]);
              kb[j] = key;
              above_bk += (key >> 16) > bk;
            }
          });
          gt[a] += above_bk;
          if (over[a]) continue;
          Candidates& list = cand[tid * A + a];
          const int64_t start = list.size;
          uint16_t* out = list.data.get();
          int64_t pos = start;
          for (int64_t j = 0; j < len; ++j) {  // branch-free compaction: ~22 % of keys are in bk
            out[pos] = static_cast<uint16_t>(kb[j] & 0xFFFFu);
            pos += (kb[j] >> 16) == bk;
          }
          list.size = pos;
          blk_off[a][blk] = start;
          blk_cnt[a][blk] = pos - start;
          if (list.size > cap) over[a] = 1;
        }
      }
#pragma omp critical
      for (int a : windowed) {
        overflow[a] |= over[a];
        greater[a] += gt[a];
      }
    }
  }

  // ---- the bucket of each model: the predicted one when the counts confirm it, else from a
  // histogram of the top 15 bits (small tensors, a missed prediction, too many candidates)
  std::vector<uint32_t> bucket(A);
  std::vector<int64_t> above(A);
  std::vector<int> need_b;  // indices into `active` that need pass B
  std::vector<int> histogram;  // indices into `active` whose bucket needs the histogram
  for (int a = 0; a < A; ++a) {
    const int64_t k = keep[active[a]];
    if (win_lo[a] <= win_hi[a] && !overflow[a]) {
      int64_t in_bucket = 0;
      for (int64_t blk = 0; blk < nb; ++blk) in_bucket += blk_cnt[a][blk];
      if (greater[a] < k && k <= greater[a] + in_bucket) {
        bucket[a] = win_lo[a];
        above[a] = greater[a];
        if (greater[a] + in_bucket == k) {  // the whole bucket is kept
          rules[active[a]].thr = win_lo[a] << 16;
        } else {
          need_b.push_back(a);
        }
        continue;
      }
    }
    win_lo[a] = 1;  // no usable window: the candidates are not used
    win_hi[a] = 0;
    histogram.push_back(a);
  }
  if (!histogram.empty()) {
    const int H = static_cast<int>(histogram.size());
    std::vector<int64_t> hist(static_cast<size_t>(H) * kHiBins, 0);
#pragma omp parallel num_threads(nthreads)
    {
      std::vector<uint32_t> h(static_cast<size_t>(H) * kHiBins, 0);
      Scratch scratch(3);
      uint32_t* kb = reinterpret_cast<uint32_t*>(scratch.buf(2));
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int64_t off = blk * kBlock;
        const int64_t len = std::min(kBlock, n - off);
        const float* b = stage(base, off, len, scratch.buf(0));
        for (int q = 0; q < H; ++q) {
          const float* x = stage(xs[active[histogram[q]]], off, len, scratch.buf(1));
          for (int64_t j = 0; j < len; ++j) kb[j] = mag_key(x[j] - b[j]);
          uint32_t* hq = h.data() + static_cast<size_t>(q) * kHiBins;
          for (int64_t j = 0; j < len; ++j) hq[kb[j] >> 16]++;
        }
      }
#pragma omp critical
      for (size_t i = 0; i < h.size(); ++i) hist[i] += h[i];
    }
    for (int q = 0; q < H; ++q) {
      const int a = histogram[q];
      const int64_t k = keep[active[a]];
      const int64_t* ha = hist.data() + static_cast<size_t>(q) * kHiBins;
      int64_t cum = 0;
      int bkt = kHiBins - 1;
      for (; bkt > 0; --bkt) {
        if (cum + ha[bkt] >= k) break;
        cum += ha[bkt];
      }
      bucket[a] = static_cast<uint32_t>(bkt);
      above[a] = cum;
      if (cum + ha[bkt] == k) {  // the whole bucket is kept: no need to look inside it
        rules[active[a]].thr = static_cast<uint32_t>(bkt) << 16;
      } else {
        need_b.push_back(a);
      }
    }
  }
  if (need_b.empty()) return rules;

  // Threshold and quota of model a from its low-16-bit histogram inside its bucket.
  auto finish = [&](int a, const int64_t* hq) {
    const int64_t k = keep[active[a]];
    int64_t cum = above[a];
    int lo = kLoBins - 1;
    for (; lo > 0; --lo) {
      if (cum + hq[lo] >= k) break;
      cum += hq[lo];
    }
    KeepRule& r = rules[active[a]];
    r.thr = (bucket[a] << 16) | static_cast<uint32_t>(lo);
    r.quota = k - cum;
    r.cut = r.quota < hq[lo];
  };

  // ---- passes B and C over the candidates, where the bucket fell inside the window
  std::vector<int> full_b;  // the others: full passes
  for (int a : need_b) {
    const bool inside = !overflow[a] && win_lo[a] == bucket[a] && win_hi[a] == bucket[a];
    if (!inside) {
      full_b.push_back(a);
      continue;
    }
    std::vector<int64_t> hq(kLoBins, 0);
    for (int t = 0; t < nthreads; ++t) {
      const Candidates& list = cand[t * A + a];
      for (int64_t j = 0; j < list.size; ++j) hq[list.data[j]]++;
    }
    finish(a, hq.data());
    KeepRule& r = rules[active[a]];
    if (r.cut) {
      r.eq_in.assign(nb, 0);
      r.eq_before.assign(nb, 0);
      int64_t run = 0;
      for (int64_t blk = 0; blk < nb; ++blk) {
        const uint16_t* seg = cand[blk_thread[blk] * A + a].data.get() + blk_off[a][blk];
        const uint16_t t = static_cast<uint16_t>(r.thr & 0xFFFFu);
        int64_t cnt = 0;
        for (int64_t j = 0; j < blk_cnt[a][blk]; ++j) cnt += seg[j] == t;
        r.eq_in[blk] = cnt;
        r.eq_before[blk] = run;
        run += cnt;
      }
    }
  }
  cand.clear();
  if (full_b.empty()) return rules;

  // ---- pass B (full): histogram of the low 16 bits inside each model's bucket
  const int B = static_cast<int>(full_b.size());
  std::vector<int64_t> hist2(static_cast<size_t>(B) * kLoBins, 0);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<uint32_t> h(static_cast<size_t>(B) * kLoBins, 0);
    Scratch scratch(3);
    float* d = scratch.buf(2);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t off = blk * kBlock;
      const int64_t len = std::min(kBlock, n - off);
      const float* b = stage(base, off, len, scratch.buf(0));
      for (int q = 0; q < B; ++q) {
        const int a = full_b[q];
        const float* x = stage(xs[active[a]], off, len, scratch.buf(1));
        deltas(x, b, len, d);
        const uint32_t bk = bucket[a];
        uint32_t* hq = h.data() + static_cast<size_t>(q) * kLoBins;
        for (int64_t j = 0; j < len; ++j) {
          const uint32_t key = mag_key(d[j]);
          if ((key >> 16) == bk) hq[key & 0xFFFFu]++;
        }
      }
    }
#pragma omp critical
    for (size_t i = 0; i < h.size(); ++i) hist2[i] += h[i];
  }

  std::vector<int> need_c;  // models (indices into xs) whose ties are split
  for (int q = 0; q < B; ++q) {
    finish(full_b[q], hist2.data() + static_cast<size_t>(q) * kLoBins);
    if (rules[active[full_b[q]]].cut) need_c.push_back(active[full_b[q]]);
  }
  if (need_c.empty()) return rules;

  // ---- pass C (full): per-block counts of key == thr, then an exclusive scan
  const int C = static_cast<int>(need_c.size());
  for (int c = 0; c < C; ++c) {
    rules[need_c[c]].eq_in.assign(nb, 0);
    rules[need_c[c]].eq_before.assign(nb, 0);
  }
#pragma omp parallel num_threads(nthreads)
  {
    Scratch scratch(3);
    float* d = scratch.buf(2);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t off = blk * kBlock;
      const int64_t len = std::min(kBlock, n - off);
      const float* b = stage(base, off, len, scratch.buf(0));
      for (int c = 0; c < C; ++c) {
        KeepRule& r = rules[need_c[c]];
        const float* x = stage(xs[need_c[c]], off, len, scratch.buf(1));
        deltas(x, b, len, d);
        const uint32_t t = r.thr;
        uint32_t cnt = 0;
        for (int64_t j = 0; j < len; ++j) cnt += mag_key(d[j]) == t ? 1u : 0u;
        r.eq_in[blk] = cnt;
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    KeepRule& r = rules[need_c[c]];
    int64_t run = 0;
    for (int64_t blk = 0; blk < nb; ++blk) {
      r.eq_before[blk] = run;
      run += r.eq_in[blk];
    }
  }
  return rules;
}

// d[j] <- d[j] if kept else 0, for block `blk` of one model.
inline void apply_keep(const KeepRule& r, int64_t blk, int64_t len, float* d) {
  uint32_t teff;
  int64_t rem = 0;
  if (r.block_rule(blk, teff, rem)) {
    for (int64_t j = 0; j < len; ++j) d[j] = mag_key(d[j]) >= teff ? d[j] : 0.0f;
  } else {  // the one block where the tie quota runs out: walk it in flat order
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t key = mag_key(d[j]);
      bool kept = key > r.thr;
      if (key == r.thr) kept = rem-- > 0;
      d[j] = kept ? d[j] : 0.0f;
    }
  }
}

// One model's pass over a block of the apply: wd = keep(x - b) * wi (zeroed where dropped),
// stored to `wd` when the consensus needs it, and added to the running sum `mixed` (which
// starts from 0.0f + wd for the first model, as the reference's sum() does). x is converted
// as it is read: no staging buffer.
template <DType D, bool Mag, bool Consensus, bool First>
MF_INLINE void weigh_block(const void* xp, int64_t off, const float* b, int64_t len,
                        uint32_t teff, float wi, float* wd, float* mixed) {
  for (int64_t j = 0; j < len; ++j) {
    float d = load_f32<D>(xp, off + j) - b[j];
    if constexpr (Mag) d = mag_key(d) >= teff ? d : 0.0f;
    const float v = d * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
}

// The TIES result of a block for KK models (KK > 0: unrolled; KK == 0: any K, looping over
// the models with accumulators in `acc` / `dacc`): mixed holds sum_i wd_i, whose sign is
// elected (0 counts as +); then the agreeing weighted deltas and their weights are summed
// (zero deltas never agree; sign * wd is exact, NaN never agrees), divided, scaled, added
// to base and rounded once to the output dtype. Branch free (the signs are random).
template <int KK>
MF_INLINE void consensus_block(const float* const* wd, const float* w, int K,
                            const float* __restrict b, const float* __restrict mixed,
                            bool normalize, bool scale, float lambda, float* __restrict out,
                            int64_t len, float* __restrict acc, float* __restrict dacc) {
  if constexpr (KK > 0) {
    const float* __restrict p[KK];
    float wl[KK];
    for (int i = 0; i < KK; ++i) {
      p[i] = wd[i];
      wl[i] = w[i];
    }
    for (int64_t j = 0; j < len; ++j) {
      const float sgn = mixed[j] >= 0.0f ? 1.0f : -1.0f;
      float a = 0.0f, da = 0.0f;
      for (int i = 0; i < KK; ++i) {
        const float v = p[i][j];
        const bool agree = sgn * v > 0.0f;
        a = a + (agree ? v : 0.0f);
        da = da + (agree ? wl[i] : 0.0f);
      }
      float r = a;
      if (normalize) r = r / (da == 0.0f ? 1.0f : da);
      if (scale) r = r * lambda;
      out[j] = b[j] + r;
    }
  } else {
    for (int64_t j = 0; j < len; ++j) {
      acc[j] = 0.0f;
      dacc[j] = 0.0f;
    }
    for (int i = 0; i < K; ++i) {
      const float* wdi = wd[i];
      const float wi = w[i];
      for (int64_t j = 0; j < len; ++j) {
        const bool agree = (mixed[j] >= 0.0f ? 1.0f : -1.0f) * wdi[j] > 0.0f;
        acc[j] = acc[j] + (agree ? wdi[j] : 0.0f);
        dacc[j] = dacc[j] + (agree ? wi : 0.0f);
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      float r = acc[j];
      if (normalize) r = r / (dacc[j] == 0.0f ? 1.0f : dacc[j]);
      if (scale) r = r * lambda;
      out[j] = b[j] + r;
    }
  }
}

// Everything the apply does to one block (the loop body of apply()).
struct ApplyArgs {
  const Src* base;
  const std::vector<Src>* xs;
  const float* w;
  const KeepRule* rules;
  bool normalize, scale;
  float divisor, lambda;
  Dst dst;
  int64_t n;
  int K;
};

template <DType D, bool Mag, bool Consensus>
MF_INLINE void weigh_block_first_or_not(bool first, const void* xp, int64_t off, const float* b,
                                        int64_t len, uint32_t teff, float wi, float* wd,
                                        float* mixed) {
  if (first) {
    weigh_block<D, Mag, Consensus, true>(xp, off, b, len, teff, wi, wd, mixed);
  } else {
    weigh_block<D, Mag, Consensus, false>(xp, off, b, len, teff, wi, wd, mixed);
  }
}

template <Sparsify S, bool Consensus>
MF_INLINE void apply_block_impl(const ApplyArgs& a, float* const* bufs, float* const* wd,
                                int64_t blk) {
  constexpr bool Mag = S == Sparsify::Magnitude;
  const int K = a.K;
  const int64_t off = blk * kBlock;
  const int64_t len = std::min(kBlock, a.n - off);
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  for (int i = 0; i < K; ++i) {
    const Src& x = (*a.xs)[i];
    uint32_t teff = 0;
    int64_t rem = 0;
    bool whole = true;  // the block's rule is key >= teff
    if constexpr (Mag) whole = a.rules[i].block_rule(blk, teff, rem);
    const float wi = a.w[i];
    float* wdi = wd[i];
    if (whole) {
      switch (x.dt) {
        case DType::BF16:
          weigh_block_first_or_not<DType::BF16, Mag, Consensus>(i == 0, x.ptr, off, b, len, teff, wi, wdi, mixed);
          break;
        case DType::F16:
          weigh_block_first_or_not<DType::F16, Mag, Consensus>(i == 0, x.ptr, off, b, len, teff, wi, wdi, mixed);
          break;
        default:
          weigh_block_first_or_not<DType::F32, Mag, Consensus>(i == 0, x.ptr, off, b, len, teff, wi, wdi, mixed);
      }
    } else {  // the one block where model i's tie quota runs out: walk it in flat order
      float* d = bufs[2];
      const float* xv = stage(x, off, len, d);
      deltas(xv, b, len, d);
      const KeepRule& r = a.rules[i];
      for (int64_t j = 0; j < len; ++j) {
        const uint32_t key = mag_key(d[j]);
        bool kept = key > r.thr;
        if (key == r.thr) kept = rem-- > 0;
        d[j] = kept ? d[j] : 0.0f;
      }
      for (int64_t j = 0; j < len; ++j) {
        const float v = d[j] * wi;
        if constexpr (Consensus) wdi[j] = v;
        mixed[j] = (i == 0 ? 0.0f : mixed[j]) + v;
      }
    }
  }
  float* res = bufs[2];
  const bool normalize = a.normalize, scale = a.scale;
  const float lambda = a.lambda;
  if constexpr (Consensus) {
    float* acc = bufs[3];
    float* dacc = bufs[4];
    switch (K) {
      case 1: consensus_block<1>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      case 2: consensus_block<2>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      case 3: consensus_block<3>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      case 4: consensus_block<4>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc); break;
      default: consensus_block<0>(wd, a.w, K, b, mixed, normalize, scale, lambda, res, len, acc, dacc);
    }
  } else {
    const float divisor = a.divisor;
    for (int64_t j = 0; j < len; ++j) {
      float r = mixed[j];
      if (normalize) r = r / divisor;
      if (scale) r = r * lambda;
      res[j] = b[j] + r;
    }
  }
  store(a.dst, off, len, res);
}

template <Sparsify S, bool Consensus>
void apply_block_default(const ApplyArgs& a, float* const* bufs, float* const* wd, int64_t blk) {
  apply_block_impl<S, Consensus>(a, bufs, wd, blk);
}

#if MF_AVX2_CLONES
template <Sparsify S, bool Consensus>
MF_TARGET_AVX2 void apply_block_avx2(const ApplyArgs& a, float* const* bufs, float* const* wd,
                                     int64_t blk) {
  apply_block_impl<S, Consensus>(a, bufs, wd, blk);
}
#endif

template <Sparsify S, bool Consensus>
void apply(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
           const std::vector<KeepRule>& rules, bool normalize, float divisor, float lambda,
           const Dst& dst, int64_t n) {
  static_assert(S == Sparsify::None || S == Sparsify::Magnitude,
                "magnitude_outliers and random sparsification are not implemented yet");
  const int K = static_cast<int>(xs.size());
  const int64_t nb = num_blocks(n);
  const ApplyArgs args{&base, &xs, w.data(), rules.empty() ? nullptr : rules.data(),
                       normalize, lambda != 1.0f, divisor, lambda, dst, n, K};
  auto block = &apply_block_default<S, Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &apply_block_avx2<S, Consensus>;
#endif
  advise_huge_pages(dst.ptr, static_cast<size_t>(n) * dtype_size(dst.dt));
#pragma omp parallel num_threads(num_threads(n))
  {
    // buffers: 0 base, 1 mixed, 2 delta (tie-cut block) / result, 3 acc, 4 dacc,
    // 5.. weighted deltas (consensus)
    Scratch scratch(5 + (Consensus ? K : 0));
    float* bufs[5];
    for (int q = 0; q < 5; ++q) bufs[q] = scratch.buf(q);
    std::vector<float*> wd(K, nullptr);
    if constexpr (Consensus) {
      for (int i = 0; i < K; ++i) wd[i] = scratch.buf(5 + i);
    }
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) block(args, bufs, wd.data(), blk);
  }
}

}  // namespace

void task_arithmetic_cpu(const at::Tensor& base, const std::vector<at::Tensor>& xs,
                         const std::vector<double>& weights, const std::vector<int64_t>& keep,
                         int64_t sparsify, bool consensus, bool normalize, double divisor,
                         double lambda, at::Tensor out) {
  const char* op = "task_arithmetic";
  TORCH_CHECK(!xs.empty() && xs.size() == weights.size(), op, ": tensors/weights mismatch");
  const int64_t n = out.numel();
  const Src sb = make_src(base, op);
  TORCH_CHECK(base.numel() == n, op, ": base and output sizes differ");
  std::vector<Src> src;
  std::vector<float> w;
  for (size_t i = 0; i < xs.size(); ++i) {
    TORCH_CHECK(xs[i].numel() == n, op, ": inputs have different sizes");
    src.push_back(make_src(xs[i], op));
    w.push_back(static_cast<float>(weights[i]));
  }
  const Dst dst = make_dst(out, op);
  const float dv = static_cast<float>(divisor), lam = static_cast<float>(lambda);
  if (sparsify == static_cast<int64_t>(Sparsify::None)) {
    std::vector<KeepRule> none;
    if (consensus) {
      apply<Sparsify::None, true>(sb, src, w, none, normalize, dv, lam, dst, n);
    } else {
      apply<Sparsify::None, false>(sb, src, w, none, normalize, dv, lam, dst, n);
    }
  } else if (sparsify == static_cast<int64_t>(Sparsify::Magnitude)) {
    TORCH_CHECK(keep.size() == xs.size(), op, ": one keep count per model expected");
    const std::vector<KeepRule> rules = select_magnitude(sb, src, keep, n);
    if (consensus) {
      apply<Sparsify::Magnitude, true>(sb, src, w, rules, normalize, dv, lam, dst, n);
    } else {
      apply<Sparsify::Magnitude, false>(sb, src, w, rules, normalize, dv, lam, dst, n);
    }
  } else {
    TORCH_CHECK(false, op, ": sparsify mode ", sparsify, " is not implemented in mergefast._C");
  }
}

void magnitude_keep_cpu(const at::Tensor& base, const at::Tensor& x, int64_t keep, at::Tensor mask) {
  const char* op = "magnitude_keep";
  TORCH_CHECK(base.numel() == x.numel(), op, ": inputs have different sizes");
  const int64_t n = x.numel();
  const Src sb = make_src(base, op), sx = make_src(x, op);
  const std::vector<KeepRule> rules = select_magnitude(sb, {sx}, {keep}, n);
  TORCH_CHECK(mask.numel() == n && mask.scalar_type() == at::kBool && mask.is_contiguous(), op,
              ": bad mask tensor");
  bool* m = mask.data_ptr<bool>();
  const int64_t nb = num_blocks(n);
#pragma omp parallel num_threads(num_threads())
  {
    Scratch scratch(3);
    float* d = scratch.buf(2);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t off = blk * kBlock;
      const int64_t len = std::min(kBlock, n - off);
      const float* b = stage(sb, off, len, scratch.buf(0));
      const float* xx = stage(sx, off, len, scratch.buf(1));
      for (int64_t j = 0; j < len; ++j) d[j] = xx[j] - b[j];
      uint32_t teff;
      int64_t rem = 0;
      const KeepRule& r = rules[0];
      if (r.block_rule(blk, teff, rem)) {
        for (int64_t j = 0; j < len; ++j) m[off + j] = mag_key(d[j]) >= teff;
      } else {
        for (int64_t j = 0; j < len; ++j) {
          const uint32_t key = mag_key(d[j]);
          bool kept = key > r.thr;
          if (key == r.thr) kept = rem-- > 0;
          m[off + j] = kept;
        }
      }
    }
  }
}

}  // namespace mergefast
