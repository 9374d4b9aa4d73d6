// sampling_probs, the CUDA kernel body, torch-free: a template over the context
// of specdec/kernel_ctx.h, so csrc/cuda/sampling_cuda.cu runs it on the GPU and
// the C++ tests on the host CUDA emulator (tests/cpp/cuda_emulator.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "specdec/block_collectives.h"
#include "specdec/errors.h"
#include "specdec/kernel_ctx.h"
#include "specdec/sampling_rules.h"

namespace specdec::sampling::device {

using block::kSharedBytes;
using block::kThreads;
using block::Shared;
using block::shared_scalars;

// One block per row of logits.  Errors: the row's record {code, b, position,
// value}, value the offending parameter's double bits (temperature, top_k,
// top_p) or 0; the invalid row gets a harmless one-hot.
struct SamplingArgs {
  const void* logits;  // [B, V] or [B, R, V] in fp32 / fp16 / bf16 (kind)
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  int64_t rows, vocab;  // rows: R (1 for 2-D logits)
  float* out;
  ErrorRecord* errors;  // [B * R], zeroed
};

// The largest key t with measure(t) >= need, where measure is non-increasing in t.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Measure>
SPECDEC_HOST_DEVICE uint32_t largest_key(Measure measure, double need) {
  uint32_t t = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = t | (1u << bit);
    if (measure(cand) >= need) t = cand;
  }
  return t;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, int kKind>
SPECDEC_HOST_DEVICE void sampling_probs_block(const Ctx& ctx, const SamplingArgs& a) {
  using kernel::load;
  Shared* shm = shared_scalars(ctx);
  const int tid = ctx.thread(), threads = ctx.block_dim();
  const int64_t r = ctx.block_x(), b = r / a.rows, vocab = a.vocab;
  const void* x = static_cast<const unsigned char*>(a.logits) + r * vocab * (kKind == kernel::kF32 ? 4 : 2);
  float* y = a.out + r * vocab;
  const float temp = a.temperature[b];
  const int32_t k = a.top_k[b];
  const float tp = a.top_p[b];
  // Pass 1: validity, maximum, first maximum.
  float best = -INFINITY;
  int64_t best_i = INT64_MAX;
  int invalid = 0;
  for (int64_t i = tid; i < vocab; i += threads) {
    const float v = load<kKind>(x, i);
    if (v != v || v == INFINITY) invalid = 1;
    if (v > best || (v == best && i < best_i)) {
      best = v;
      best_i = i;
    }
  }
  // Max by key, then the lowest index holding it.
  const uint32_t best_key = static_cast<uint32_t>(-block::min(ctx, -static_cast<int64_t>(order_key(best)), shm->idx));
  const int64_t first_max = block::min(ctx, order_key(best) == best_key ? best_i : INT64_MAX, shm->idx);
  const double any_invalid = block::sum(ctx, invalid, shm->red);
  if (tid == 0) {
    ErrorRecord e = check_params(temp, k, tp, b);
    if (e.code == kOk && any_invalid > 0) e = make_error(kLogitInvalid, b, 0, 0);
    if (e.code == kOk && best_key == order_key(-INFINITY)) e = make_error(kAllMasked, b, 0, 0);
    e.where = r % a.rows;
    shm->flag = static_cast<int>(e.code);
    if (e.code != kOk) a.errors[r] = e;
  }
  ctx.sync();
  if (shm->flag != kOk || temp == 0.0f) {
    // Greedy (or an invalid row, which gets a harmless one-hot too).
    const int64_t hot = first_max == INT64_MAX ? 0 : first_max;
    for (int64_t i = tid; i < vocab; i += threads) y[i] = i == hot ? 1.0f : 0.0f;
    return;
  }
  const double t = temp;
  const double zmax = static_cast<double>(load<kKind>(x, first_max)) / t;
  // top-k: the k-th largest key (ties kept).
  uint32_t keep = 0;
  if (top_k_active(k, vocab)) {
    keep = largest_key(
        [&](uint32_t cand) {
          double c = 0.0;
          for (int64_t i = tid; i < vocab; i += threads) c += order_key(load<kKind>(x, i)) >= cand;
          return block::sum(ctx, c, shm->red);
        },
        static_cast<double>(k));
  }
  auto weight = [&](int64_t i, uint32_t from) -> double {
    const float v = load<kKind>(x, i);
    return order_key(v) >= from ? exp(static_cast<double>(v) / t - zmax) : 0.0;
  };
  auto mass = [&](uint32_t from) {
    double s = 0.0;
    for (int64_t i = tid; i < vocab; i += threads) s += weight(i, from);
    return block::sum(ctx, s, shm->red);
  };
  const double total = mass(keep);
  if (tp < 1.0f) {
    // top-p on the kept set: the largest key whose upper set holds mass >= top_p.
    const uint32_t cut =
        largest_key([&](uint32_t cand) { return mass(cand > keep ? cand : keep) / total; }, static_cast<double>(tp));
    keep = cut > keep ? cut : keep;
  }
  const double kept = keep == 0 ? total : mass(keep);
  for (int64_t i = tid; i < vocab; i += threads) {
    const double p = weight(i, keep) / total;
    y[i] = p > 0.0 ? static_cast<float>(p / (kept / total)) : 0.0f;
  }
}

}  // namespace specdec::sampling::device
