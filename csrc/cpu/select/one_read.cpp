// Magnitude-sparsified task arithmetic / TIES in one read of the inputs (see one_read.h and
// README.md).
//
// The two-pass scheme (two_pass.cpp, then the apply of ../task_arithmetic.cpp) reads base and
// every model twice: once to find each model's threshold, once to apply it. But the sampled
// window [lo, hi] of window.cpp decides almost every element before any threshold is known:
// whatever the exact threshold in [lo, hi], a key above hi is kept and one below lo dropped.
// So, in one pass over the inputs:
//   1. the windows are predicted from a sample (sample_size(n) keys per model);
//   2. per block, the apply pass runs with "keep key > hi" for every model, counts the keys
//      above hi and *records* every element where some model's key lies in [lo, hi]: its
//      offset and the base's and every model's values there (records.h; ~7 % of the
//      elements of a 7B layer with 3 models);
//   3. each model's exact threshold comes from its count above hi and the records' keys
//      (scan_records, then resolve_window as in the two-pass scheme: every key equal to lo
//      or hi is recorded);
//   4. the fix-up (fix_up.cpp) recomputes the records alone with the exact rules (every key
//      equal to a threshold is recorded, so ties are still ranked in flat order) and stores
//      them over the pass's results. It does the block pass's float operations in the same
//      order: the output is bit-identical to the two-pass scheme's.
// When the sample predicts records filling more than kRecordFill of an output's worth of
// memory the two passes run instead; a window that misses or records that overflow make the
// caller run them too (rewriting the whole output).
#include "one_read.h"

#include "../apply.h"
#include "fix_up.h"
#include "one_read_parts.h"

namespace mergefast {
namespace {

// One model's share of a block of the pass: "keep key >= teff" weighted into wd (for the
// consensus) and summed into mixed (as weigh_block in apply.h), "key in
// [lo, hi]" or-ed into the block's uncertain flags unc, the keys above hi into *above.
// Returns nonzero when a delta is NaN or infinite.
template <DType D, bool Consensus, bool First>
MF_INLINE uint32_t one_read_weigh(const void* xp, int64_t off, const float* b, int64_t len,
                                  uint32_t teff, float wi, Window win, float* wd, float* mixed,
                                  uint32_t* unc, uint32_t* above) {
  const int32_t lo = static_cast<int32_t>(win.lo), hi = static_cast<int32_t>(win.hi);
  uint32_t nonfinite = 0, count = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float d = load_f32<D>(xp, off + j) - b[j];
    const uint32_t key = mag_key(d);
    nonfinite |= key >= kNonFiniteKey;
    const int32_t k = static_cast<int32_t>(key);  // keys are < 2^31: signed compares vectorise
    const uint32_t over = k > hi;
    count += over;
    const uint32_t in = static_cast<uint32_t>(k >= lo) & (over ^ 1u);
    unc[j] = First ? in : (unc[j] | in);
    const float v = (key >= teff ? d : 0.0f) * wi;
    if constexpr (Consensus) wd[j] = v;
    mixed[j] = (First ? 0.0f : mixed[j]) + v;
  }
  *above = count;
  return nonfinite;
}

template <DType D, bool Consensus>
MF_INLINE uint32_t one_read_weigh_any(bool first, const void* xp, int64_t off, const float* b,
                                      int64_t len, uint32_t teff, float wi, Window win, float* wd,
                                      float* mixed, uint32_t* unc, uint32_t* above) {
  if (first) return one_read_weigh<D, Consensus, true>(xp, off, b, len, teff, wi, win, wd, mixed, unc, above);
  return one_read_weigh<D, Consensus, false>(xp, off, b, len, teff, wi, win, wd, mixed, unc, above);
}

// What the pass needs besides the apply's arguments.
struct OneReadPass {
  ApplyArgs apply;            // its rules: keep key > hi (or all / none)
  const Window* windows;      // per model (kNoWindow when its rule is known)
  uint32_t* const* above;     // per model: keys above hi per block (null when its rule is known)
  Records* records;
};

// One block of the pass. bufs: 0 base, 1 mixed, 2 uncertain flags, 3 result, 4-5 scratch
// (contiguous: record_block's offsets in 4 may run 8 past it).
template <bool Consensus>
MF_INLINE uint32_t pass_block_impl(const OneReadPass& p, float* const* bufs,
                                   float* const* wd, int64_t blk) {
  const ApplyArgs& a = p.apply;
  const int64_t off = blk * kBlock, len = std::min(kBlock, a.n - off);
  prefetch_after(a.base, *a.xs, off + len, a.n);  // common.h: whole TIES jobs 0.97x the time
  const float* b = stage(*a.base, off, len, bufs[0]);
  float* mixed = bufs[1];
  uint32_t* unc = reinterpret_cast<uint32_t*>(bufs[2]);
  uint32_t nonfinite = 0;
  for (int i = 0; i < a.K; ++i) {
    const Src& x = (*a.xs)[i];
    const uint32_t teff = a.rules[i].thr;
    const Window win = p.windows[i];
    uint32_t above;
    switch (x.dt) {
      case DType::BF16:
        nonfinite |= one_read_weigh_any<DType::BF16, Consensus>(i == 0, x.ptr, off, b, len, teff, a.w[i], win, wd[i], mixed, unc, &above);
        break;
      case DType::F16:
        nonfinite |= one_read_weigh_any<DType::F16, Consensus>(i == 0, x.ptr, off, b, len, teff, a.w[i], win, wd[i], mixed, unc, &above);
        break;
      default:
        nonfinite |= one_read_weigh_any<DType::F32, Consensus>(i == 0, x.ptr, off, b, len, teff, a.w[i], win, wd[i], mixed, unc, &above);
    }
    if (p.above[i] != nullptr) p.above[i][blk] = above;
  }
  combine_block<Consensus>(a, wd, b, mixed, bufs[3], len, bufs[4], bufs[5]);
  store(a.dst, off, len, bufs[3]);
  record_block(*p.records, blk, off, unc, len, reinterpret_cast<uint32_t*>(bufs[4]));
  return nonfinite;
}

template <bool Consensus>
uint32_t pass_block_default(const OneReadPass& p, float* const* bufs, float* const* wd,
                            int64_t blk) {
  return pass_block_impl<Consensus>(p, bufs, wd, blk);
}

#if MF_AVX2_CLONES
template <bool Consensus>
MF_TARGET_AVX2 uint32_t pass_block_avx2(const OneReadPass& p, float* const* bufs,
                                        float* const* wd, int64_t blk) {
  return pass_block_impl<Consensus>(p, bufs, wd, blk);
}

template <bool Consensus>
MF_TARGET_AVX512BW uint32_t pass_block_avx512(const OneReadPass& p, float* const* bufs,
                                              float* const* wd, int64_t blk) {
  return pass_block_impl<Consensus>(p, bufs, wd, blk);
}
#endif

// The pass over every block on nthreads threads; returns nonzero when a delta was not finite.
template <bool Consensus>
uint32_t run_pass(const OneReadPass& p, int nthreads) {
  auto block = &pass_block_default<Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &pass_block_avx2<Consensus>;
  if (cpu_has_avx512bw()) block = &pass_block_avx512<Consensus>;
#endif
  return run_pass_blocks(p.apply.n, p.apply.K, nthreads, [&](float* const* bufs, float* const* wd, int64_t blk) {
    return block(p, bufs, wd, blk);
  });
}

template <bool Consensus>
bool one_read(const Src& base, const std::vector<Src>& xs, const std::vector<float>& w,
              const std::vector<int64_t>& keep, const std::vector<int>& active,
              std::vector<KeepRule>& rules, bool normalize, float divisor, float lambda,
              const Dst& dst, int64_t n, int threads, bool& finite) {
  Prediction p = predict(base, xs, keep, active, n, threads);
  const int64_t capacity = output_bytes(dst, n);
  if (!records_fit(p, base, xs, n, capacity)) return false;
  Records rec = make_records(base, xs, n, capacity);
  // The pass's rules: keep the keys above the window (the others' rules are known already).
  for (int i : active) rules[i].thr = p.windows[i].hi + 1;  // hi <= 0x7FFFFFFF: no wrap-around
  ApplyArgs args{&base, &xs, w.data(), rules.data(), normalize, lambda != 1.0f, divisor, lambda,
                 dst, n, static_cast<int>(xs.size()), threads};
  const uint32_t nonfinite = run_pass<Consensus>(
      OneReadPass{args, p.windows.data(), p.above.data(), &rec}, team_size(n, threads));
  if (rec.overflow || !resolve_all(rec, keep, active, 1, n, p.scans, rules, threads)) return false;
  fix_up(args, rec, Consensus);
  finite = nonfinite == 0;
  return true;
}

}  // namespace

bool one_read_task_arithmetic(bool consensus, const Src& base, const std::vector<Src>& xs,
                              const std::vector<float>& w, const std::vector<int64_t>& keep,
                              bool normalize, float divisor, float lambda, const Dst& dst,
                              int64_t n, int threads, bool& finite) {
  std::vector<KeepRule> rules(xs.size());
  const std::vector<int> active = known_rules(keep, n, rules);
  if (active.empty()) return false;
  const bool done =
      consensus ? one_read<true>(base, xs, w, keep, active, rules, normalize, divisor, lambda, dst, n, threads, finite)
                : one_read<false>(base, xs, w, keep, active, rules, normalize, divisor, lambda, dst, n, threads, finite);
  return count_one_read(done);
}

}  // namespace mergefast
