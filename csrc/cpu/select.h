// Exact magnitude selection for the task-arithmetic family: which elements of each task
// vector (x - base) are among its k largest |delta|, ties at the threshold kept lowest flat
// index first. Implemented in select.cpp; the apply passes in task_arithmetic.cpp use the
// KeepRule of each model block by block.
#pragma once

#include <climits>
#include <cstdint>
#include <vector>

#include "common.h"

namespace mergefast {

// Keys at or above this are +-inf and NaN.
constexpr uint32_t kNonFiniteKey = 0x7F800000u;
// Every NaN's key: one value just above +inf. The reference's stable sort ranks all NaNs
// equal, above inf, lowest index first; their payloads (0x7FC00000 vs 0x7FFF0000 in bf16)
// must not order them.
constexpr uint32_t kNaNKey = kNonFiniteKey + 1;

// The ordering key of a delta: its float32 bit pattern with the sign cleared (31 bits;
// integer order == magnitude order), every NaN folded onto kNaNKey (a min: vectorises).
MF_INLINE uint32_t mag_key(float d) {
  const uint32_t key = f32_to_bits(d) & 0x7FFFFFFFu;
  return key < kNaNKey ? key : kNaNKey;
}

// Tensors of at most this many elements select with one thread and nth_element; larger
// ones with a sampled window (select_window.h).
constexpr int64_t kSmallSelect = 1 << 16;

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

// The rules of the models whose keep count decides them alone (keep none at keep[i] <= 0,
// keep all at keep[i] >= n) into rules (one per model, default-constructed); returns the
// others, the models that need a threshold.
std::vector<int> known_rules(const std::vector<int64_t>& keep, int64_t n,
                             std::vector<KeepRule>& rules);

// The models of `active` (pointers into xs) and their keep counts: what the window scans take.
struct ActiveModels {
  std::vector<const Src*> xs;
  std::vector<int64_t> keep;
};
ActiveModels active_models(const std::vector<Src>& xs, const std::vector<int64_t>& keep,
                           const std::vector<int>& active);

// One KeepRule per model of `xs`: model i keeps its keep[i] largest |x_i - base| of n.
// `space` (space_bytes, 4-byte aligned) is memory the selection may use until it returns:
// the output tensor, which only the apply pass after it writes. The candidate lists then
// need no memory of their own (they took 18 MB on a 7B layer: the output and 20 % more).
std::vector<KeepRule> select_magnitude(const Src& base, const std::vector<Src>& xs,
                                       const std::vector<int64_t>& keep, int64_t n,
                                       void* space, size_t space_bytes);

// For the one block `blk` where a rule splits its ties (block_rule returned false with
// `rem`): calls kept(j, bool) for each delta d[j], walking the block in flat order.
template <class F>
inline void walk_tie_block(const KeepRule& r, int64_t rem, int64_t len, const float* d, F&& kept) {
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t key = mag_key(d[j]);
    bool keep = key > r.thr;
    if (key == r.thr) keep = rem-- > 0;
    kept(j, keep);
  }
}

}  // namespace mergefast
