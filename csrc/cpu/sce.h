// What SCE's two calls share (sce.cpp: the variance keys, the selection and the energies;
// sce_apply.cpp: the election and merge): the arguments, the keep-mask of a block from its
// variance keys, and the AVX2 clone picking of their block functions.
#pragma once

#include <vector>

#include "common.h"
#include "select/rules.h"

namespace mergefast {

struct SceArgs {
  const Src* base;
  const std::vector<Src>* xs;
  int K;
  int64_t n;
  int threads;
  const uint32_t* keys;  // the n variance keys (sce.cpp's keys pass writes them)
};

// Whether a rule keeps every position (select_topk >= 1): no keys are needed then.
inline bool sce_keeps_all(const KeepRule& r) { return r.thr == 0 && !r.cut; }

// m[j] = 1.0f where block blk's rule keeps element j (variance key kb[j]), else 0.0f: the
// reference multiplies the deltas by its bool mask (NaN * 0 stays NaN).
MF_INLINE void sce_block_mask(const KeepRule& r, int64_t blk, const uint32_t* kb, int64_t len,
                              float* m) {
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

// The kept deltas of block (off, len) of model i: d[j] = (x[j] - b[j]) * m[j] (m null: every
// position kept, and d * 1.0f == d).
MF_INLINE void sce_kept_deltas(const Src& x, const float* b, const float* m, int64_t off,
                               int64_t len, float* stage_buf, float* d) {
  const float* xv = stage(x, off, len, stage_buf);
  if (m == nullptr) {
    for (int64_t j = 0; j < len; ++j) d[j] = xv[j] - b[j];
  } else {
    for (int64_t j = 0; j < len; ++j) d[j] = (xv[j] - b[j]) * m[j];
  }
}

// NAME##_default and, on x86-64, NAME##_avx2 (common.h) of the always-inlined NAME##_impl, and
// NAME##_pick() choosing one at run time. SIG is the parameter list, ARGS the call's arguments.
#define MF_SCE_CLONED(NAME, SIG, ARGS)          \
  void NAME##_default SIG { NAME##_impl ARGS; } \
  MF_SCE_AVX2_VARIANT(NAME, SIG, ARGS)          \
  using NAME##_fn = decltype(&NAME##_default);  \
  NAME##_fn NAME##_pick() { return MF_SCE_AVX2_PICK(NAME); }

#if MF_AVX2_CLONES
#define MF_SCE_AVX2_VARIANT(NAME, SIG, ARGS) \
  MF_TARGET_AVX2 void NAME##_avx2 SIG { NAME##_impl ARGS; }
#define MF_SCE_AVX2_PICK(NAME) cpu_has_avx2() ? &NAME##_avx2 : &NAME##_default
#else
#define MF_SCE_AVX2_VARIANT(NAME, SIG, ARGS)
#define MF_SCE_AVX2_PICK(NAME) &NAME##_default
#endif

}  // namespace mergefast
