// The fix-up of the one-read pass (see fix_up.h and one_read.cpp): every recorded element
// recomputed with the exact thresholds, block by block, with the block pass's vectorised
// loops over the records' columns, and stored over the pass's result.
#include "fix_up.h"

#include <algorithm>

namespace mergefast {
namespace {

// How a fix-up weighs model i over a block's records (x: its column): the magnitude rules of
// task arithmetic / TIES (apply.h), or breadcrumbs' two cuts (band.h).
template <bool Consensus>
MF_INLINE uint32_t weigh_records(const ApplyArgs& a, int i, const Src& x, int64_t blk,
                                 const float* b, int64_t len, float* d, float* wd, float* mixed) {
  return weigh_model<true, Consensus>(a, i, x, 0, blk, b, len, d, wd, mixed);
}

template <bool Consensus>
MF_INLINE uint32_t weigh_records(const BandArgs& a, int i, const Src& x, int64_t blk,
                                 const float* b, int64_t len, float* d, float* wd, float* mixed) {
  return weigh_band_model<Consensus>(a, i, x, 0, blk, b, len, d, wd, mixed);
}

// One block's records into a.dst (dtype O), through the apply's own weighing and
// combine_block: every key equal to a threshold is in a record, so ranking the ties along
// the records ranks them in flat order. bufs: 0 base, 1 mixed, 2 scratch for the tie walk,
// 3 result, 4-5 scratch, 6.. the K weighted deltas.
template <bool Consensus, DType O, class Args>
MF_INLINE void fix_block_impl(const Args& a, const Records& rec, int64_t blk,
                              float* const* bufs) {
  const int64_t cnt = rec.count[blk];
  if (cnt == 0) return;
  const float* b = rec.column_f32(blk, 1, bufs[0]);
  float* mixed = bufs[1];
  float* const* wd = bufs + 6;
  for (int i = 0; i < a.K; ++i) {
    const Src x{rec.column(blk, 2 + i), rec.sources[2 + i].dt};
    weigh_records<Consensus>(a, i, x, blk, b, cnt, bufs[2], wd[i], mixed);
  }
  float* res = bufs[3];
  combine_block<Consensus>(a, wd, b, mixed, res, cnt, bufs[4], bufs[5]);
  const uint16_t* at = rec.offsets(blk);
  const int64_t off = blk * kBlock;
  for (int64_t q = 0; q < cnt; ++q) store_f32<O>(a.dst.ptr, off + at[q], res[q]);
  if (a.dst.nonfinite == nullptr) return;  // a watched output (common.h OutputWatch): these stores too
  uint32_t bad = 0;
  for (int64_t q = 0; q < cnt; ++q) bad |= block_nonfinite<O>(a.dst.ptr, off + at[q], 1);
  if (bad != 0) a.dst.nonfinite->store(1, std::memory_order_relaxed);
}

template <bool Consensus, class Args>
MF_INLINE void fix_block_any(const Args& a, const Records& rec, int64_t blk,
                             float* const* bufs) {
  switch (a.dst.dt) {  // (not visit_output_dtype: a lambda would not get the AVX2 target)
    case DType::BF16: fix_block_impl<Consensus, DType::BF16>(a, rec, blk, bufs); break;
    case DType::F16: fix_block_impl<Consensus, DType::F16>(a, rec, blk, bufs); break;
    case DType::F64: fix_block_impl<Consensus, DType::F64>(a, rec, blk, bufs); break;
    default: fix_block_impl<Consensus, DType::F32>(a, rec, blk, bufs);
  }
}

template <bool Consensus, class Args>
void fix_block_default(const Args& a, const Records& rec, int64_t blk, float* const* bufs) {
  fix_block_any<Consensus>(a, rec, blk, bufs);
}

#if MF_AVX2_CLONES
template <bool Consensus, class Args>
MF_TARGET_AVX2 void fix_block_avx2(const Args& a, const Records& rec, int64_t blk,
                                   float* const* bufs) {
  fix_block_any<Consensus>(a, rec, blk, bufs);
}

template <bool Consensus, class Args>
MF_TARGET_AVX512BW void fix_block_avx512(const Args& a, const Records& rec, int64_t blk,
                                         float* const* bufs) {
  fix_block_any<Consensus>(a, rec, blk, bufs);
}
#endif

template <bool Consensus, class Args>
void fix_up_all(const Args& a, const Records& rec) {
  auto block = &fix_block_default<Consensus, Args>;
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) block = &fix_block_avx2<Consensus, Args>;
  if (cpu_has_avx512bw()) block = &fix_block_avx512<Consensus, Args>;
#endif
  const int64_t nb = num_blocks(a.n);
#pragma omp parallel num_threads(team_size(a.n, a.threads))
  {
    Scratch scratch(6 + a.K);
    std::vector<float*> bufs(6 + a.K);
    for (int q = 0; q < 6 + a.K; ++q) bufs[q] = scratch.buf(q);
#pragma omp for schedule(dynamic, kChunkBlocks)
    for (int64_t blk = 0; blk < nb; ++blk) block(a, rec, blk, bufs.data());
  }
}

}  // namespace

void fix_up(const ApplyArgs& a, const Records& rec, bool consensus) {
  consensus ? fix_up_all<true>(a, rec) : fix_up_all<false>(a, rec);
}

void fix_up(const BandArgs& a, const Records& rec, bool consensus) {
  consensus ? fix_up_all<true>(a, rec) : fix_up_all<false>(a, rec);
}

}  // namespace mergefast
