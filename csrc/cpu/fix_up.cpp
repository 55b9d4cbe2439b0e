// The fix-up of the speculative TIES pass (see speculative.cpp): every recorded element
// recomputed with the exact thresholds, block by block, with the block pass's vectorised
// loops over the records' columns, and stored over the speculative result.
#include <algorithm>

#include "apply.h"
#include "records.h"

namespace mergefast {
namespace {

// Model i's weighted deltas d of one block's records with its exact rule, summed into mixed.
template <bool First>
MF_INLINE void fix_weigh(const KeepRule& rule, int64_t blk, const float* d, int64_t cnt,
                         float wi, float* wd, float* mixed) {
  uint32_t teff;
  int64_t rem = 0;
  if (rule.block_rule(blk, teff, rem)) {
    for (int64_t q = 0; q < cnt; ++q) {
      const float v = (mag_key(d[q]) >= teff ? d[q] : 0.0f) * wi;
      wd[q] = v;
      mixed[q] = (First ? 0.0f : mixed[q]) + v;
    }
    return;
  }
  // The block where the model's ties are cut: every key equal to the threshold is in a
  // record, so ranking them along the records ranks them in flat order.
  walk_tie_block(rule, rem, cnt, d, [&](int64_t q, bool kept) {
    const float v = (kept ? d[q] : 0.0f) * wi;
    wd[q] = v;
    mixed[q] = (First ? 0.0f : mixed[q]) + v;
  });
}

// One block's records into a.dst (dtype O). bufs: 0 base, 1 a model's values, 2 its deltas,
// 3 mixed, 4 result, 5-6 scratch, 7.. the K weighted deltas.
template <bool Consensus, DType O>
MF_INLINE void fix_block_impl(const ApplyArgs& a, const Records& rec, int64_t blk,
                              float* const* bufs) {
  const int64_t cnt = rec.count[blk];
  if (cnt == 0) return;
  const float* b = rec.column_f32(blk, 1, bufs[0]);
  float* d = bufs[2];
  float* mixed = bufs[3];
  float* const* wd = bufs + 7;
  for (int i = 0; i < a.K; ++i) {
    const float* x = rec.column_f32(blk, 2 + i, bufs[1]);
    for (int64_t q = 0; q < cnt; ++q) d[q] = x[q] - b[q];
    if (i == 0) {
      fix_weigh<true>(a.rules[i], blk, d, cnt, a.w[i], wd[i], mixed);
    } else {
      fix_weigh<false>(a.rules[i], blk, d, cnt, a.w[i], wd[i], mixed);
    }
  }
  float* res = bufs[4];
  combine_block<Consensus>(a, wd, b, mixed, res, cnt, bufs[5], bufs[6]);
  const uint16_t* at = rec.offsets(blk);
  const int64_t off = blk * kBlock;
  for (int64_t q = 0; q < cnt; ++q) store_f32<O>(a.dst.ptr, off + at[q], res[q]);
}

template <bool Consensus>
MF_INLINE void fix_block_any(const ApplyArgs& a, const Records& rec, int64_t blk,
                             float* const* bufs) {
  switch (a.dst.dt) {  // (not visit_output_dtype: a lambda would not get the AVX2 target)
    case DType::BF16: fix_block_impl<Consensus, DType::BF16>(a, rec, blk, bufs); break;
    case DType::F16: fix_block_impl<Consensus, DType::F16>(a, rec, blk, bufs); break;
    case DType::F64: fix_block_impl<Consensus, DType::F64>(a, rec, blk, bufs); break;
    default: fix_block_impl<Consensus, DType::F32>(a, rec, blk, bufs);
  }
}

template <bool Consensus>
void fix_block_default(const ApplyArgs& a, const Records& rec, int64_t blk, float* const* bufs) {
  fix_block_any<Consensus>(a, rec, blk, bufs);
}

#if MF_AVX2_CLONES
template <bool Consensus>
MF_TARGET_AVX2 void fix_block_avx2(const ApplyArgs& a, const Records& rec, int64_t blk,
                                   float* const* bufs) {
  fix_block_any<Consensus>(a, rec, blk, bufs);
}
#endif

template <bool Consensus>
void fix_up_all(const ApplyArgs& a, const Records& rec) {
  auto block = &fix_block_default<Consensus>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &fix_block_avx2<Consensus>;
#endif
  const int64_t nb = num_blocks(a.n);
#pragma omp parallel num_threads(num_threads(a.n))
  {
    Scratch scratch(7 + a.K);
    std::vector<float*> bufs(7 + a.K);
    for (int q = 0; q < 7 + a.K; ++q) bufs[q] = scratch.buf(q);
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) block(a, rec, blk, bufs.data());
  }
}

}  // namespace

void fix_up(const ApplyArgs& a, const Records& rec, bool consensus) {
  if (consensus) {
    fix_up_all<true>(a, rec);
  } else {
    fix_up_all<false>(a, rec);
  }
}

}  // namespace mergefast
