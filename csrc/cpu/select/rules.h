// The keep rule of one model (which elements of its task vector x - base survive a magnitude
// selection) and the ordering key it is stated in. Every path of the selection ends in
// KeepRules (two_pass.cpp, one_read.cpp); the apply pass (../apply.h) and the fix-up read
// them block by block.
#pragma once

#include <climits>
#include <cstdint>
#include <utility>
#include <vector>

#include "../common.h"

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

  // In the block that splits the ties (block_rule false, rem): whether the element of `key`,
  // the next in flat order, is kept; a tie takes one of the rem still to keep.
  bool keeps_in_split(uint32_t key, int64_t& rem) const { return key == thr ? rem-- > 0 : key > thr; }
};

// Sets thr / quota / cut for a threshold key with `above` keys above it and `equal` keys
// equal to it (k kept of nb blocks). Returns r.cut: the caller then fills r.eq_in per block
// and calls scan_eq.
bool set_threshold(KeepRule& r, uint32_t thr, int64_t k, int64_t above, int64_t equal,
                   int64_t nb);

// eq_before = exclusive prefix sum of eq_in.
void scan_eq(KeepRule& r);

// The bin holding the k-th largest value counted by a histogram (low bin first), and the
// count above it.
std::pair<int64_t, int64_t> bin_from_top(const std::vector<int64_t>& h, int64_t k);

// The rules of the models whose keep count decides them alone (keep none at keep[i] <= 0,
// keep all at keep[i] >= n) into rules (one per model, default-constructed); returns the
// others, the models that need a threshold.
std::vector<int> known_rules(const std::vector<int64_t>& keep, int64_t n,
                             std::vector<KeepRule>& rules);

// For the one block `blk` where a rule splits its ties (block_rule returned false with
// `rem`): calls kept(j, bool) for each delta d[j], walking the block in flat order.
template <class F>
inline void walk_tie_block(const KeepRule& r, int64_t rem, int64_t len, const float* d, F&& kept) {
  for (int64_t j = 0; j < len; ++j) kept(j, r.keeps_in_split(mag_key(d[j]), rem));
}

}  // namespace mergefast
