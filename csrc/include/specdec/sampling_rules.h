// sampling_probs: definitions shared by the CPU and CUDA kernels (torch-free);
// docs/ops.md, family `sampling`, states the rule.
//
// Per row: temperature T == 0 gives the one-hot of the first maximum.  Else,
// in float64, z = logit / T; top-k (0 < k < V) keeps {z >= the k-th largest z}
// (ties kept); p = softmax over the kept tokens; top-p (p_top < 1) keeps
// {p >= t} for the largest t whose set {p >= t} still holds mass >= p_top
// (ties kept); the result is renormalised.  Since z and p are monotone in the
// logit, both thresholds can be found on the logits' order-preserving keys.
#pragma once

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

}  // namespace specdec::sampling
