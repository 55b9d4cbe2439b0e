// The records of the one-read pass (see records.h and one_read.cpp).
#include "records.h"

#include <algorithm>

namespace mergefast {
namespace {

static_assert(kBlock <= 65536, "record offsets are uint16");

int64_t padded(int64_t bytes) { return (bytes + 7) & ~int64_t(7); }

// The offsets j of the elements whose flag unc[j] (0 or 1) is set, into idx, in order;
// returns how many. Branch free: which elements are uncertain is random.
MF_INLINE int64_t flagged_scalar(const uint32_t* unc, int64_t j, int64_t len, uint32_t* idx,
                                 int64_t cnt) {
  for (; j < len; ++j) {
    idx[cnt] = static_cast<uint32_t>(j);
    cnt += unc[j];
  }
  return cnt;
}

#if MF_AVX2_CLONES
// flagged_scalar with AVX2: 8 flags per compare, movemask and permute, as compact_avx2
// (window.cpp) packs keys. Writes up to 7 offsets past the count.
MF_TARGET_AVX2 int64_t flagged_avx2(const uint32_t* unc, int64_t len, uint32_t* idx) {
  const __m256i zero = _mm256_setzero_si256();
  int64_t cnt = 0, j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unc + j));
    const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(f, zero)));
    const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
    const __m256i at = _mm256_add_epi32(lanes, _mm256_set1_epi32(static_cast<int32_t>(j)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + cnt), at);
    cnt += __builtin_popcount(static_cast<unsigned>(mask));
  }
  return flagged_scalar(unc, j, len, idx, cnt);
}
#endif

int64_t flagged(const uint32_t* unc, int64_t len, uint32_t* idx) {
#if MF_AVX2_CLONES
  if (cpu_has_avx2()) return flagged_avx2(unc, len, idx);
#endif
  return flagged_scalar(unc, 0, len, idx, 0);
}

template <class T>
void copy_at(const void* from, const uint32_t* idx, int64_t cnt, void* to) {
  const T* src = static_cast<const T*>(from);
  T* dst = static_cast<T*>(to);
  for (int64_t q = 0; q < cnt; ++q) dst[q] = src[idx[q]];
}

}  // namespace

int64_t record_bytes(const Src& base, const std::vector<Src>& xs) {
  int64_t bytes = sizeof(uint16_t) + dtype_size(base.dt);
  for (const Src& x : xs) bytes += dtype_size(x.dt);
  return bytes;
}

int64_t Records::segment_bytes(int64_t cnt) const {
  int64_t bytes = padded(cnt * sizeof(uint16_t));
  for (size_t c = 1; c < sources.size(); ++c) bytes += padded(cnt * dtype_size(sources[c].dt));
  return bytes;
}

const void* Records::column(int64_t blk, int c) const {
  const int64_t cnt = count[blk];
  const char* p = memory + first[blk];
  if (c == 0) return p;
  p += padded(cnt * sizeof(uint16_t));
  for (int k = 1; k < c; ++k) p += padded(cnt * dtype_size(sources[k].dt));
  return p;
}

Records make_records(const Src& base, const std::vector<Src>& xs, int64_t n, int64_t bytes) {
  // Kept between calls by the calling thread: fresh memory costs a page fault per 4 KiB on
  // every tensor (see output_buffers in mergefast/kernels/cpu.py). Uninitialised: pages are
  // touched as used.
  thread_local std::unique_ptr<char[]> memory;
  thread_local int64_t have = 0;
  Records r;
  r.sources.push_back(Src{nullptr, DType::F32});  // column 0: the offsets
  r.sources.push_back(base);
  r.sources.insert(r.sources.end(), xs.begin(), xs.end());
  r.capacity = padded(bytes);
  if (r.capacity > have) {
    memory.reset();
    memory.reset(new char[r.capacity]);
    have = r.capacity;
    advise_huge_pages(memory.get(), have);
  }
  r.memory = memory.get();
  r.first.assign(num_blocks(n), 0);
  r.count.assign(num_blocks(n), 0);
  return r;
}

void record_block(Records& r, int64_t blk, int64_t off, const uint32_t* unc, int64_t len,
                  uint32_t* idx) {
  const int64_t cnt = flagged(unc, len, idx);
  const int64_t bytes = r.segment_bytes(cnt);
  int64_t at;
#pragma omp atomic capture
  {
    at = r.used;
    r.used += bytes;
  }
  r.first[blk] = at;
  r.count[blk] = static_cast<uint32_t>(cnt);
  if (at + bytes > r.capacity) {
#pragma omp atomic write
    r.overflow = 1;
    r.count[blk] = 0;
    return;
  }
  uint16_t* to = static_cast<uint16_t*>(const_cast<void*>(r.column(blk, 0)));
  for (int64_t q = 0; q < cnt; ++q) to[q] = static_cast<uint16_t>(idx[q]);
  for (size_t c = 1; c < r.sources.size(); ++c) {
    const Src& s = r.sources[c];
    void* col = const_cast<void*>(r.column(blk, static_cast<int>(c)));
    if (dtype_size(s.dt) == 4) {
      copy_at<uint32_t>(static_cast<const uint32_t*>(s.ptr) + off, idx, cnt, col);
    } else {
      copy_at<uint16_t>(static_cast<const uint16_t*>(s.ptr) + off, idx, cnt, col);
    }
  }
}

void scan_records(const Records& rec, const std::vector<int>& active, int sides, int64_t n,
                  std::vector<WindowScan>& scans, std::unique_ptr<uint32_t[]>& memory,
                  int threads) {
  const int A = static_cast<int>(active.size()), nthreads = team_size(n, threads);
  const int64_t nb = num_blocks(n);
  int64_t total = 0;
  for (int64_t blk = 0; blk < nb; ++blk) total += rec.count[blk];
  const int64_t room = total + 8;  // a thread's list may hold every record; + 8: compact_window
  memory.reset(new uint32_t[A * nthreads * room]);  // uninitialised: touched as used
  for (int q = 0; q < A; ++q) {
    WindowScan& s = scans[q];
    s.cand_off.assign(nb, 0);
    s.cand_cnt.assign(nb, 0);
    s.owner.assign(nb, 0);
    s.size.assign(nthreads, 0);
    s.lists.clear();
    for (int t = 0; t < nthreads; ++t) s.lists.push_back(memory.get() + (q * nthreads + t) * room);
    s.capacity = room;
    s.overflow = false;
  }
  // One pass over the blocks for all models, the base column staged once per block (7.5-7.7
  // ms on the 7B layer on a 2-vCPU AMD EPYC VM; a pass per model, each staging the base,
  // takes 10.1-10.4 ms).
  for_each_block_raw(n, nthreads, 3, [&](int tid, int64_t blk, int64_t, int64_t, Scratch& sc) {
    const int64_t cnt = rec.count[blk];
    const float* b = rec.column_f32(blk, 1, sc.buf(0));
    uint32_t* keys = reinterpret_cast<uint32_t*>(sc.buf(2));
    int keyed = -1;  // the model whose keys `keys` holds (a model's cuts are adjacent)
    for (int q = 0; q < A; ++q) {
      WindowScan& s = scans[q];
      const int model = active[q] / sides;
      if (model != keyed) {
        const float* x = rec.column_f32(blk, 2 + model, sc.buf(1));
        for (int64_t j = 0; j < cnt; ++j) keys[j] = mag_key(x[j] - b[j]);
        keyed = model;
      }
      uint32_t eq_hi = 0, eq_lo = 0;
      for (int64_t j = 0; j < cnt; ++j) {
        eq_hi += keys[j] == s.w.hi;
        eq_lo += keys[j] == s.w.lo;
      }
      s.eq_hi[blk] = eq_hi;
      s.eq_lo[blk] = s.w.lo < s.w.hi ? eq_lo : 0;
      int64_t& size = s.size[tid];
      s.owner[blk] = tid;
      s.cand_off[blk] = size;
      s.cand_cnt[blk] = static_cast<uint32_t>(compact_window(keys, cnt, s.w, s.lists[tid] + size));
      size += s.cand_cnt[blk];
    }
  });
}

}  // namespace mergefast
