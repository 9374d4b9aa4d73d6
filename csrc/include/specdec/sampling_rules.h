// sampling_probs: definitions shared by the CPU and CUDA kernels (torch-free);
// docs/ops.md, family `sampling`, states the rule.
//
// Per row: temperature T == 0 gives the one-hot of the first maximum.  Else,
// in float64, z = logit / T; top-k (0 < k < V) keeps {z >= the k-th largest z}
// (ties kept); p = softmax over the kept tokens; top-p (p_top < 1) keeps
// {p >= t} for the largest t whose set {p >= t} still holds mass >= p_top
// (ties kept); the result is renormalised.  Since z and p are monotone in the
// logit, both thresholds can be found on the logits' order-preserving keys.
// min-p (min_p > 0) keeps {exp(z - z_max) >= min_p} (p >= min_p * p_max on
// any renormalisation of the row, since the maximum is always kept), a set of
// the same kind as top-k's; top-p then runs on the softmax over both sets.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "specdec/errors.h"
#include "specdec/macros.h"

namespace specdec::sampling {

// Error codes.  An error record's `where` is the position (0 for [B, V]
// logits), `value` the offending parameter as double bits (codes 1-3) or 0.
enum ErrorCode : int32_t {
  kTemperature = 1,   // temperature NaN, infinite or negative
  kTopK = 2,          // top_k negative
  kTopP = 3,          // top_p outside (0, 1] or NaN
  kLogitInvalid = 4,  // a logit is NaN or +inf
  kAllMasked = 5,     // every logit of the row is -inf
  kMinP = 6,          // min_p outside [0, 1] or NaN
};

// Row `row`'s sampling parameters.
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_params(float temperature, int32_t top_k, float top_p,
                                                            int64_t row) {
  if (!(temperature >= 0.0f && temperature <= 3.40282347e38f))  // finite: <= FLT_MAX
    return make_error(kTemperature, row, 0, double_bits(temperature));
  if (top_k < 0) return make_error(kTopK, row, 0, double_bits(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) return make_error(kTopP, row, 0, double_bits(top_p));
  return no_error(row);
}

// Maps a float to an unsigned key with the same order (-inf lowest, +inf highest).
// -0.0 and +0.0 get one key: they tie, as in float comparison.
SPECDEC_HOST_DEVICE SPECDEC_INLINE uint32_t order_key(float v) {
  if (v == 0.0f) v = 0.0f;
  uint32_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

SPECDEC_HOST_DEVICE SPECDEC_INLINE bool top_k_active(int32_t top_k, int64_t vocab) {
  return top_k > 0 && top_k < vocab;
}

// Row `row`'s min_p (0 disables it).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_min_p(float min_p, int64_t row) {
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return make_error(kMinP, row, 0, double_bits(min_p));
  return no_error(row);
}

// The float whose order_key is `key`: the inverse of order_key on the keys of
// non-NaN floats (+0.0 for the key of both zeros).
SPECDEC_HOST_DEVICE SPECDEC_INLINE float key_value(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// min-p as a threshold on keys: the smallest key c with
//   exp(double(key_value(c)) / t - double(xmax) / t) >= min_p
// (the rule's float64 expression, evaluated at the value of c), for
// 0 < min_p <= 1 and xmax the row's (finite) maximum logit.  The expression is
// non-decreasing in c and holds at c = order_key(xmax), so the kept set
// {order_key(x) >= c} is exactly {exp(z - z_max) >= min_p}; a bisection over
// the keys between -inf and xmax, 32 evaluations, no pass over the row.
SPECDEC_HOST_DEVICE SPECDEC_INLINE uint32_t min_p_key(float xmax, double t, float min_p) {
  const double zmax = static_cast<double>(xmax) / t, need = static_cast<double>(min_p);
  uint32_t lo = order_key(-INFINITY), hi = order_key(xmax);  // exp(-inf) = 0 < min_p; hi holds
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (exp(static_cast<double>(key_value(mid)) / t - zmax) >= need) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

}  // namespace specdec::sampling
