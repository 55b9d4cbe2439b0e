// The math of arcee_fusion's KL pass (arcee_fusion.cpp), and the order key of its importance
// values.
//
// The KL is summed as sum q f(p / q), f(r) = r log r - r + 1 >= 0: the same value as
// sum p log(p / q) (sum p = sum q), but a sum of nonnegative terms, so each term needs only
// its own relative accuracy, where sum p log(p / q) cancels (on fine-tune deltas its terms are
// ~1e3 x the KL: torch's float32 KL is off by ~1e-4 relative there). p - q is formed as
// q0 expm1(d), d = (x - b) - c, without cancelling either. So float32 arithmetic (8 AVX2 lanes)
// with float64 sums gives the KL to ~1e-7 relative.
//
// exp, expm1 and log are plain float32 polynomials (no libm call), so that the loops vectorise
// and give the same bits on every thread count and machine.
#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace mergefast {

// e^x for x <= 0 (x - row max), float32; 0 below -87 (e^x < 2^-125: against the softmax's
// 1e-8 it is nothing), NaN for NaN. x = n ln2 + r, |r| <= ln2 / 2, then the Taylor series of
// e^r to r^7 (remainder < 4e-9 relative).
MF_INLINE float exp32_nonpositive(float x) {
  constexpr float kMagic = 0x1.8p23f;  // adding it rounds to an integer in the low bits
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0x1.62e4p-1f, kLn2Lo = 0x1.7f7d1cp-20f;
  const float t = x * kLog2e + kMagic;
  const float nf = t - kMagic;
  const float r = (x - nf * kLn2Hi) - nf * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t n = f32_to_bits(t) - f32_to_bits(kMagic);  // two's complement of nf
  const float e = p * bits_to_f32((n + 127u) << 23);
  return x < -87.0f ? 0.0f : e;  // NaN compares false: stays NaN
}

// e^d - 1 for |d| <= 1/2: d (1 + d/2 + ... + d^8 / 9!) (remainder < 2e-9 relative).
MF_INLINE float expm1_small(float d) {
  float p = 1.0f / 362880.0f;
  p = p * d + 1.0f / 40320.0f;
  p = p * d + 1.0f / 5040.0f;
  p = p * d + 1.0f / 720.0f;
  p = p * d + 1.0f / 120.0f;
  p = p * d + 1.0f / 24.0f;
  p = p * d + 1.0f / 6.0f;
  p = p * d + 0.5f;
  p = p * d + 1.0f;
  return d * p;
}

// e^d - 1 for |d| <= 0.1: d (1 + d/2 + ... + d^5 / 6!) (remainder < 3e-9 relative).
MF_INLINE float expm1_tiny(float d) {
  float p = 1.0f / 720.0f;
  p = p * d + 1.0f / 120.0f;
  p = p * d + 1.0f / 24.0f;
  p = p * d + 1.0f / 6.0f;
  p = p * d + 0.5f;
  p = p * d + 1.0f;
  return d * p;
}

// f(1 + u) = (1 + u) log(1 + u) - u for |u| <= 0.106 by its series sum_k>=2 (-u)^k / (k (k - 1))
// to u^8 (remainder < 4e-9 relative): no division, no cancellation.
MF_INLINE float kl_f_small(float u) {
  float p = 1.0f / 56.0f;
  p = p * u - 1.0f / 42.0f;
  p = p * u + 1.0f / 30.0f;
  p = p * u - 1.0f / 20.0f;
  p = p * u + 1.0f / 12.0f;
  p = p * u - 1.0f / 6.0f;
  p = p * u + 0.5f;
  return (u * u) * p;
}

// f(1 + u) = (1 + u) log(1 + u) - u for u > -1, float32, to a few ulps relative; NaN for NaN.
// 1 + u = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
// |s| <= 0.172, 2 atanh(s) = 2s (1 + s^2 P(s^2)). For e = 0, s = u / (2 + u) from u itself and
// f = u s + 2 (1 + u) s^3 P: no cancellation near u = 0 (f ~ u^2 / 2). Elsewhere
// f = (1 + u) (e ln2 + 2 atanh(s)) - u cancels by a factor of at most ~6.5 (at |e| = 1).
MF_INLINE float kl_f(float u) {
  const float r = 1.0f + u;
  const uint32_t bits = f32_to_bits(r);
  const int32_t e0 = static_cast<int32_t>(bits >> 23) - 127;
  float m = bits_to_f32((bits & 0x007FFFFFu) | 0x3F800000u);
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  const int32_t e = big ? e0 + 1 : e0;
  const float num = e == 0 ? u : m - 1.0f, den = e == 0 ? 2.0f + u : m + 1.0f;
  const float s = num / den, s2 = s * s;
  float p = 1.0f / 9.0f;  // next term s^8 / 11: < 2e-7 of p, whose part of f is < 7 %
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  const float tail = 2.0f * s * (s2 * p);  // 2 atanh(s) - 2s
  const float near = u * s + r * tail;
  const float far = r * ((static_cast<float>(e) * 0.693147181f + 2.0f * s) + tail) - u;
  return e == 0 ? near : far;
}

// log(y) for y > 0 (a ratio of two sums), float64; NaN for NaN. Once a row: y = m 2^e,
// m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its
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
