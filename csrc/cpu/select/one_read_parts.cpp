// What the one-read passes share (see one_read_parts.h).
#include "one_read_parts.h"

#include <algorithm>
#include <atomic>

#include "candidates.h"
#include "one_read.h"

namespace mergefast {
namespace {

// Sampled keys per model: n / 128 in [16384, 32768]. A larger sample narrows the windows and
// so the records (7B layer, 3 models: 12.4 % of the elements recorded with 8192 samples,
// 6.9 % with 32768, 5.5 % with 65536), but gathering and ordering it costs ~0.07 ms per 1000
// keys; 65536 is no faster than 32768 on the 7B layer (2-vCPU AMD EPYC VM).
int64_t sample_size(int64_t n) { return std::clamp<int64_t>(n / 128, 1 << 14, 1 << 15); }

// The share of the records' memory (an output's worth) the sample may predict them to fill.
constexpr double kRecordFill = 0.7;

// Calls that a one-read pass finished, and that fell back to two passes (one_read_counts).
std::atomic<int64_t> g_finished{0}, g_fell_back{0};

}  // namespace

Prediction predict(const Src& base, const std::vector<Src>& xs, const std::vector<int64_t>& keep,
                   const std::vector<int>& active, int64_t n, int threads) {
  const ActiveModels selected = active_models(xs, keep, active);
  const auto predicted = predict_windows(base, selected.xs, selected.keep, n, sample_size(n), threads);
  Prediction p{std::vector<Window>(xs.size(), kNoWindow), std::vector<WindowScan>(active.size()),
               std::vector<uint32_t*>(xs.size(), nullptr), 0.0};
  for (size_t q = 0; q < active.size(); ++q) {
    WindowScan& s = p.scans[q];
    p.windows[active[q]] = s.w = predicted[q];
    p.share += predicted[q].share;
    for (auto* v : {&s.above_blk, &s.eq_hi, &s.eq_lo}) v->assign(num_blocks(n), 0);
    p.above[active[q]] = s.above_blk.data();
  }
  return p;
}

bool resolve_all(const Records& rec, const std::vector<int64_t>& keep,
                 const std::vector<int>& active, int sides, int64_t n,
                 std::vector<WindowScan>& scans, std::vector<KeepRule>& rules, int threads) {
  std::unique_ptr<uint32_t[]> lists;  // the candidates, alive while resolving
  scan_records(rec, active, sides, n, scans, lists, threads);
  const int A = static_cast<int>(active.size());
  std::vector<char> resolved(A, 0);
#pragma omp parallel for num_threads(std::min(A, std::max(1, threads))) schedule(dynamic, 1)
  for (int q = 0; q < A; ++q) {
    const int i = active[q];
    rules[i] = KeepRule();
    resolved[q] = resolve_window(scans[q], keep[i], num_blocks(n), rules[i]);
  }
  return std::find(resolved.begin(), resolved.end(), 0) == resolved.end();
}

int64_t output_bytes(const Dst& dst, int64_t n) {
  return n * static_cast<int64_t>(dtype_size(dst.dt));
}

bool records_fit(const Prediction& p, const Src& base, const std::vector<Src>& xs, int64_t n,
                 int64_t capacity) {
  const double predicted = p.share * static_cast<double>(n * record_bytes(base, xs));
  return predicted <= kRecordFill * static_cast<double>(capacity);
}

bool count_one_read(bool done) {
  (done ? g_finished : g_fell_back).fetch_add(1);
  return done;
}

std::pair<int64_t, int64_t> one_read_counts() {
  return {g_finished.load(), g_fell_back.load()};
}

}  // namespace mergefast
