// all_finite: whether none of n elements is NaN or +-inf, tested on the raw bits (a value is
// not finite exactly when its exponent bits are all ones), so the test is exact for every
// dtype and needs no conversion to float32.
// The scan is memory bound: each block is OR-reduced without a branch in the inner loop (GCC
// vectorises it: SSE2 compares 8 fp16/bf16 words a step, the AVX2 clone 16), and the blocks
// are split across the OpenMP team (the dynamic schedule of every pass, see kChunkBlocks).
// There is no early exit: finite tensors, the common case, are read whole anyway, and an OR
// over blocks gives the same answer on any thread count.
#include "common.h"
#include "kernels.h"

namespace mergefast {
namespace {

template <DType D>
uint32_t block_default(const void* x, int64_t off, int64_t len) {
  return block_nonfinite<D>(x, off, len);
}

#if MF_AVX2_CLONES
template <DType D>
MF_TARGET_AVX2 uint32_t block_avx2(const void* x, int64_t off, int64_t len) {
  return block_nonfinite<D>(x, off, len);
}

template <DType D>
MF_TARGET_AVX512BW uint32_t block_avx512(const void* x, int64_t off, int64_t len) {
  return block_nonfinite<D>(x, off, len);
}
#endif

using BlockFn = uint32_t (*)(const void*, int64_t, int64_t);

// The block function of dtype D for this CPU, chosen once per call (not per block).
template <DType D>
BlockFn block_for() {
#if MF_AVX2_CLONES
  if (cpu_has_avx512bw()) return &block_avx512<D>;
  if (cpu_has_avx2()) return &block_avx2<D>;
#endif
  return &block_default<D>;
}

}  // namespace

bool all_finite(const Src& x, int64_t n, int threads) {
  BlockFn block = nullptr;
  visit_output_dtype(x.dt, [&](auto tag) { block = block_for<decltype(tag)::value>(); });
  const int64_t nb = num_blocks(n);
  uint32_t nonfinite = 0;
  // No scratch: the bits are tested in place, so a plain OR reduction over the blocks.
#pragma omp parallel for num_threads(team_size(n, threads)) schedule(dynamic, kChunkBlocks) \
    reduction(| : nonfinite)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t off = blk * kBlock;
    nonfinite |= block(x.ptr, off, std::min(kBlock, n - off));
  }
  return nonfinite == 0;
}

}  // namespace mergefast
