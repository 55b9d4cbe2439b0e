// SCE (mergefast/methods/sce.py) on the CPU: no K x n temporaries and no sort. Every pass
// reads base + K models block by block and recomputes what it needs per element:
//
//   deltas   d_i = x_i - b (float32), the variance of the K deltas as torch's CPU var() takes
//            it (Welford in float64, models in order, then m2 / K rounded to float32), and its
//            key (select/rules.h's mag_key: float32 bits, every NaN one key above inf).
//   select   the exact top-k of the keys, k = int(count_nonzero(var) * select_topk): a
//            histogram of the top 15 key bits (and the nonzero count), one of the low 16
//            bits inside the k-th bucket, then per-block counts of the threshold key when
//            the quota splits its ties (kept lowest flat index first, as the reference's
//            stable sort): a KeepRule, as the TIES selection's.
//   energies sum_j (d_ij * m_j)^2 per model (m_j = 1.0f kept, 0.0f dropped: NaN * 0 stays
//            NaN, as in the reference's multiply), squares in float32, sums in float64 over
//            8 fixed lanes per block and the blocks in order (the same on any thread count).
//   apply    the reference's float32 operations in its order: s = sum_i md_i, elected sign
//            (0 counts as +), agree_i = sign(md_i) == elected, sum_i (md_i * w_i) * agree_i
//            over max(sum_i w_i * agree_i, 1e-6), plus base, rounded once.
//
// The caller turns the energies into the weights w_i (mergefast/kernels/sce.py).
#include <algorithm>
#include <climits>

#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

constexpr int kHiBins = 1 << 15;  // top 15 bits of the 31-bit key
constexpr int kLoBins = 1 << 16;  // low 16 bits
constexpr float kDivisorMin = 1e-6f;
// Scratch buffers of a block: 0 base, 1 staged x, 2-3 Welford mean (float64), 4-5 Welford
// m2, 6 keys, 7 mask, 8 sum, 9 mixed, 10 divisor, 11 result, kFirstDelta.. the K deltas.
constexpr int kFirstDelta = 12;

struct SceArgs {
  const Src* base;
  const std::vector<Src>* xs;
  int K;
  int64_t n;
  int threads;
};

// The K delta buffers of the calling thread's scratch.
std::vector<float*> delta_bufs(const SceArgs& a, Scratch& s) {
  std::vector<float*> d(a.K);
  for (int i = 0; i < a.K; ++i) d[i] = s.buf(kFirstDelta + i);
  return d;
}

// The deltas of block (off, len) into d[i]; with `keys`, the variance key of every element into
// s.buf(6). Returns the staged base.
const float* block_deltas(const SceArgs& a, int64_t off, int64_t len, Scratch& s,
                          float* const* d, bool keys) {
  const float* b = stage(*a.base, off, len, s.buf(0));
  double* mean = reinterpret_cast<double*>(s.buf(2));
  double* m2 = reinterpret_cast<double*>(s.buf(4));
  if (keys) {
    std::fill(mean, mean + len, 0.0);
    std::fill(m2, m2 + len, 0.0);
  }
  for (int i = 0; i < a.K; ++i) {
    const float* x = stage((*a.xs)[i], off, len, s.buf(1));
    float* di = d[i];
    for (int64_t j = 0; j < len; ++j) di[j] = x[j] - b[j];
    if (!keys) continue;
    const double nf = static_cast<double>(i + 1);
    for (int64_t j = 0; j < len; ++j) {  // torch's WelfordOps::reduce
      const double v = di[j];
      const double delta = v - mean[j];
      mean[j] = mean[j] + delta / nf;
      m2[j] = m2[j] + delta * (v - mean[j]);
    }
  }
  if (keys) {
    uint32_t* kb = reinterpret_cast<uint32_t*>(s.buf(6));
    const double count = static_cast<double>(a.K);
    for (int64_t j = 0; j < len; ++j) kb[j] = mag_key(static_cast<float>(m2[j] / count));
  }
  return b;
}

// m[j] = 1.0f where block blk's rule keeps element j (key kb[j]), else 0.0f.
void block_mask(const KeepRule& r, int64_t blk, const uint32_t* kb, int64_t len, float* m) {
  uint32_t teff = 0;
  int64_t rem = 0;
  if (r.block_rule(blk, teff, rem)) {
    for (int64_t j = 0; j < len; ++j) m[j] = kb[j] >= teff ? 1.0f : 0.0f;
    return;
  }
  for (int64_t j = 0; j < len; ++j) {
    bool keep = kb[j] > r.thr;
    if (kb[j] == r.thr) keep = rem-- > 0;
    m[j] = keep ? 1.0f : 0.0f;
  }
}

// d[i] *= m over the block, for every model (the reference's deltas * mask).
void mask_deltas(int K, float* const* d, const float* m, int64_t len) {
  for (int i = 0; i < K; ++i) {
    for (int64_t j = 0; j < len; ++j) d[i][j] = d[i][j] * m[j];
  }
}

// Runs body(blk, len, scratch, deltas, base) over the blocks, the keys in s.buf(6) when `keys`.
template <class Body>
void for_each_sce_block(const SceArgs& a, bool keys, Body&& body) {
  for_each_block_raw(a.n, team_size(a.n, a.threads), kFirstDelta + a.K,
                     [&](int tid, int64_t blk, int64_t off, int64_t len, Scratch& s) {
                       const std::vector<float*> d = delta_bufs(a, s);
                       const float* b = block_deltas(a, off, len, s, d.data(), keys);
                       body(tid, blk, len, s, d.data(), b);
                     });
}

// A histogram of bin(key) (a bin in [0, bins], `bins` meaning skip) over every element's
// variance key; the count of nonzero keys into *nonzero when not null.
template <class Bin>
std::vector<int64_t> key_histogram(const SceArgs& a, size_t bins, const Bin& bin,
                                   int64_t* nonzero) {
  const int nthreads = team_size(a.n, a.threads);
  std::vector<std::vector<uint32_t>> part(nthreads, std::vector<uint32_t>(bins + 1, 0));
  std::vector<int64_t> nz(nthreads, 0);
  for_each_sce_block(a, true, [&](int tid, int64_t, int64_t len, Scratch& s, float* const*,
                                  const float*) {
    const uint32_t* kb = reinterpret_cast<const uint32_t*>(s.buf(6));
    uint32_t* h = part[tid].data();
    int64_t count = 0;
    for (int64_t j = 0; j < len; ++j) {
      h[bin(kb[j])]++;
      count += kb[j] != 0;
    }
    nz[tid] += count;
  });
  std::vector<int64_t> hist(bins, 0);
  for (int t = 0; t < nthreads; ++t) {
    for (size_t q = 0; q < bins; ++q) hist[q] += part[t][q];
    if (nonzero != nullptr) *nonzero += nz[t];
  }
  return hist;
}

// How many positions the selection keeps: int(nonzero * topk), at least 0.
int64_t keep_of(int64_t nonzero, double topk) {
  const double k = static_cast<double>(nonzero) * topk;
  return k > 0.0 ? static_cast<int64_t>(k) : 0;
}

// The keep rule of the variance selection (see the file comment).
KeepRule variance_rule(const SceArgs& a, double topk) {
  KeepRule r;  // keep all
  if (topk >= 1.0) return r;
  int64_t nonzero = 0;
  const auto top = key_histogram(a, kHiBins, [](uint32_t key) { return key >> 16; }, &nonzero);
  const int64_t k = keep_of(nonzero, topk);
  if (k <= 0) {
    r.thr = 0xFFFFFFFFu;  // keep none
    r.quota = 0;
    return r;
  }
  const auto [bucket, above_bucket] = bin_from_top(top, k);
  const uint32_t hi = static_cast<uint32_t>(bucket);
  const auto low = key_histogram(a, kLoBins, [hi](uint32_t key) {
    return (key >> 16) == hi ? key & 0xFFFFu : static_cast<uint32_t>(kLoBins);
  }, nullptr);
  const auto [lo, above] = bin_from_top(low, k - above_bucket);
  const uint32_t thr = (hi << 16) | static_cast<uint32_t>(lo);
  if (!set_threshold(r, thr, k, above_bucket + above, low[lo], num_blocks(a.n))) return r;
  for_each_sce_block(a, true, [&](int, int64_t blk, int64_t len, Scratch& s, float* const*,
                                  const float*) {
    const uint32_t* kb = reinterpret_cast<const uint32_t*>(s.buf(6));
    r.eq_in[blk] = std::count(kb, kb + len, thr);
  });
  scan_eq(r);
  return r;
}

bool keeps_all(const KeepRule& r) { return r.thr == 0 && !r.cut; }

// sums[0..7] += v[j], lane j % 8, in flat order (the same sums whatever the vector width).
void add_lanes(const float* v, int64_t len, double* sums) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    for (int l = 0; l < 8; ++l) sums[l] += static_cast<double>(v[j + l]);
  }
  for (; j < len; ++j) sums[j % 8] += static_cast<double>(v[j]);
}

// The deltas of a block with the rule applied (the keys computed unless the rule keeps all).
template <class Body>
void for_each_masked_block(const SceArgs& a, const KeepRule& r, Body&& body) {
  const bool all = keeps_all(r);
  for_each_sce_block(a, !all, [&](int, int64_t blk, int64_t len, Scratch& s, float* const* d,
                                  const float* b) {
    if (!all) {
      block_mask(r, blk, reinterpret_cast<const uint32_t*>(s.buf(6)), len, s.buf(7));
      mask_deltas(a.K, d, s.buf(7), len);
    }
    body(blk, len, s, d, b);
  });
}

}  // namespace

KeepRule sce_select(const Src& base, const std::vector<Src>& xs, double topk, int64_t n,
                    int threads, double* energies) {
  const SceArgs a{&base, &xs, static_cast<int>(xs.size()), n, threads};
  KeepRule r = variance_rule(a, topk);
  const int K = a.K;
  std::vector<double> part(static_cast<size_t>(num_blocks(n)) * K, 0.0);
  for_each_masked_block(a, r, [&](int64_t blk, int64_t len, Scratch& s, float* const* d,
                                  const float*) {
    float* sq = s.buf(8);
    for (int i = 0; i < K; ++i) {
      for (int64_t j = 0; j < len; ++j) sq[j] = d[i][j] * d[i][j];
      double lanes[8] = {};
      add_lanes(sq, len, lanes);
      double t = 0.0;
      for (int l = 0; l < 8; ++l) t += lanes[l];
      part[blk * K + i] = t;
    }
  });
  std::fill(energies, energies + K, 0.0);
  for (size_t q = 0; q < part.size(); ++q) energies[q % K] += part[q];
  return r;
}

void sce_apply(const Src& base, const std::vector<Src>& xs, const KeepRule& rule,
               const std::vector<float>& w, const Dst& dst, int64_t n, int threads) {
  const SceArgs a{&base, &xs, static_cast<int>(xs.size()), n, threads};
  const int K = a.K;
  for_each_masked_block(a, rule, [&](int64_t blk, int64_t len, Scratch& s, float* const* d,
                                     const float* b) {
    float *sum = s.buf(8), *mixed = s.buf(9), *div = s.buf(10), *res = s.buf(11);
    std::copy(d[0], d[0] + len, sum);
    for (int i = 1; i < K; ++i) {
      for (int64_t j = 0; j < len; ++j) sum[j] = sum[j] + d[i][j];
    }
    for (int i = 0; i < K; ++i) {
      const float wi = w[i];
      const float* di = d[i];
      for (int64_t j = 0; j < len; ++j) {
        const float elected = sum[j] >= 0.0f ? 1.0f : -1.0f;
        const float agree = elected * di[j] > 0.0f ? 1.0f : 0.0f;  // sign(d) == elected
        const float v = (di[j] * wi) * agree, dw = wi * agree;
        mixed[j] = i == 0 ? v : mixed[j] + v;
        div[j] = i == 0 ? dw : div[j] + dw;
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      const float dv = div[j] < kDivisorMin ? kDivisorMin : div[j];  // NaN stays NaN
      res[j] = b[j] + mixed[j] / dv;
    }
    store(dst, blk * kBlock, len, res);
  });
}

}  // namespace mergefast
