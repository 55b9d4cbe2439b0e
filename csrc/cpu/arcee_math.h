// The float64 exp and log of arcee_fusion's KL pass (arcee_fusion.cpp), and the order key of
// its importance values.
//
// exp and log are plain float64 polynomials (no libm call), so that the loops over a row
// vectorise (4 lanes with the AVX2 clone) and give the same bits on every thread count and
// machine. Both are accurate to a few float64 ulps, far below the float32 KL they feed: the
// kernel's KL is the float64 reference's KL rounded to float32 (up to a last-bit tie).
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace mergefast {

MF_INLINE uint64_t f64_to_bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

MF_INLINE double bits_to_f64(uint64_t u) {
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

// e^x for x <= 0 (x - row max); 0 below -708 (where e^x is subnormal: p = e^x / s + 1e-8 is
// 1e-8 either way), NaN for NaN. Range reduction x = n ln2 + r, |r| <= ln2 / 2, then the
// Taylor series of e^r to r^13 (remainder < 4e-18 relative).
MF_INLINE double exp_nonpositive(double x) {
  constexpr double kMagic = 0x1.8p52;  // adding it rounds to an integer in the low bits
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 0x1.62e42fefa3800p-1,
                   kLn2Lo = 0x1.ef35793c76730p-45;
  const double t = x * kLog2e + kMagic;
  const double nf = t - kMagic;
  const double r = (x - nf * kLn2Hi) - nf * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1 / 13!
  constexpr double kInvFact[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                   1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                                   1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                                   1.0 / 6.0,         0.5,              1.0,
                                   1.0};
  for (int i = 0; i < 13; ++i) p = p * r + kInvFact[i];
  const uint64_t n = f64_to_bits(t) - f64_to_bits(kMagic);  // two's complement of nf
  const double scale = bits_to_f64((n + 1023u) << 52);
  const double e = p * scale;
  return x < -708.0 ? 0.0 : e;  // NaN compares false: stays NaN
}

// log(y) for y > 0 (a ratio of probabilities + 1e-8: normal); NaN for NaN. y = m 2^e with
// m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its
// series to s^23 (remainder < 1e-18).
MF_INLINE double log_positive(double y) {
  constexpr double kTwo52 = 0x1p52;  // (u >> 52) in the low bits of 2^52 + it: no int -> double
  const uint64_t u = f64_to_bits(y);
  double ed = bits_to_f64(f64_to_bits(kTwo52) | (u >> 52)) - (kTwo52 + 1023.0);
  double m = bits_to_f64((u & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
  const bool big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  ed = big ? ed + 1.0 : ed;
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double p = 1.0 / 23.0;
  for (int k = 21; k >= 1; k -= 2) p = p * s2 + 1.0 / k;
  constexpr double kLn2Hi = 0x1.62e42fefa3800p-1, kLn2Lo = 0x1.ef35793c76730p-45;
  const double l = ed * kLn2Hi + (ed * kLn2Lo + 2.0 * s * p);
  return y == y ? l : y;
}

// The order key of a float32 importance value: unsigned integer order == the value order of
// torch.kthvalue (-0 and +0 one key, every NaN the top key, above +inf).
constexpr uint32_t kArceeNaNKey = 0xFFFFFFFFu;
MF_INLINE uint32_t order_key(float v) {
  uint32_t u = f32_to_bits(v);
  u = u == 0x80000000u ? 0u : u;
  const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return v == v ? key : kArceeNaNKey;
}

// The float32 value of an order key (the NaN key: a quiet NaN).
inline float key_value(uint32_t key) {
  if (key == kArceeNaNKey) return bits_to_f32(0x7FC00000u);
  return bits_to_f32((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

}  // namespace mergefast
