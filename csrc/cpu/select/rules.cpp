// KeepRule helpers shared by every path of the selection (see rules.h).
#include "rules.h"

namespace mergefast {

bool set_threshold(KeepRule& r, uint32_t thr, int64_t k, int64_t above, int64_t equal,
                   int64_t nb) {
  r.thr = thr;
  r.quota = k - above;
  r.cut = r.quota < equal;
  if (r.cut) {
    r.eq_in.assign(nb, 0);
    r.eq_before.assign(nb, 0);
  }
  return r.cut;
}

void scan_eq(KeepRule& r) {
  int64_t run = 0;
  for (size_t blk = 0; blk < r.eq_in.size(); ++blk) {
    r.eq_before[blk] = run;
    run += r.eq_in[blk];
  }
}

std::pair<int64_t, int64_t> bin_from_top(const std::vector<int64_t>& h, int64_t k) {
  int64_t cum = 0;
  int64_t bin = static_cast<int64_t>(h.size()) - 1;
  for (; bin > 0; --bin) {
    if (cum + h[bin] >= k) break;
    cum += h[bin];
  }
  return {bin, cum};
}

std::vector<int> known_rules(const std::vector<int64_t>& keep, int64_t n,
                             std::vector<KeepRule>& rules) {
  std::vector<int> active;
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] <= 0) {
      rules[i].thr = 0xFFFFFFFFu;  // keep none
      rules[i].quota = 0;
    } else if (keep[i] < n) {
      active.push_back(static_cast<int>(i));
    }  // else keep all: the default rule
  }
  return active;
}

}  // namespace mergefast
