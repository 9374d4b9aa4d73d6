// sampling_probs and sampling_probs_ragged, the CUDA kernel body, torch-free: a
// template over the context of specdec/kernel_ctx.h, so csrc/cuda/sampling_cuda.cu
// runs it on the GPU and the C++ tests on the host CUDA emulator
// (tests/cpp/cuda_emulator.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "specdec/block_collectives.h"
#include "specdec/errors.h"
#include "specdec/kernel_ctx.h"
#include "specdec/sampling_rules.h"
#include "specdec/tree_rules.h"

namespace specdec::sampling::device {

using block::kSharedBytes;
using block::kThreads;
using block::Shared;
using block::shared_scalars;

// One block per row of logits.  Errors: the row's record {code, b, position,
// value}, value the offending parameter's double bits (temperature, top_k,
// top_p, min_p) or 0; the invalid row gets a harmless one-hot.
//
// Ragged (cu_nodes set): the grid has one block per entry t of the [T, V]
// logits, row b = tree::ragged_row_of(t) supplies the parameters, and the
// records are split by priority as the CPU kernel raises them: call_errors[0]
// for cu_nodes (block 0 checks it), call_errors[1 + b] for row b's parameters
// (the block of its first entry reports), errors[t] for entry t's logits
// {code, b, t, 0}.
struct SamplingArgs {
  const void* logits;  // [B, V] or [B, R, V] (ragged: [T, V]) in fp32 / fp16 / bf16 (kind)
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  int64_t rows, vocab;  // rows: R (1 for 2-D logits and for ragged logits)
  float* out;
  ErrorRecord* errors;                 // [B * R] (ragged: [T]), zeroed
  const float* min_p = nullptr;        // [B], or nullptr: min-p off
  const int32_t* cu_nodes = nullptr;   // ragged only: [B + 1]
  int64_t batch = 0, total = 0;        // ragged only: B and T
  ErrorRecord* call_errors = nullptr;  // ragged only: [1 + B], zeroed
};

// The largest key t such that ok(measure(t), total) holds, where measure(c) is
// the sum of weight(v, key) over the row's logits v with key = order_key(v) >= c
// (non-increasing in c), `total` = measure(0), and ok(measure(0)) holds.
// Four bits per pass, most significant first: a pass weighs the 15 candidates
// t + j 2^s (j = 1..15) of the current window [t, t + 2^(s+4)) together;
// logits above the window add the same measure to all of them (carried from
// the previous pass) and logits below add none, so only the window's logits
// are weighed (their weight, an exp for top-p, computed once per pass).  Eight
// passes instead of the 32 of a bit-by-bit bisection; the result is the same
// largest key.  *measure_t receives measure(t), *total_out measure(0).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <int kKind, class Ctx, class Weight, class Ok>
SPECDEC_HOST_DEVICE uint32_t radix_select(const Ctx& ctx, Shared* shm, const void* x, int64_t vocab, Weight weight,
                                          Ok ok, double* measure_t, double* total_out) {
  using kernel::load;
  const int tid = ctx.thread(), threads = ctx.block_dim();
  uint32_t t = 0;
  double above = 0.0, at_t = 0.0, total = 0.0;
  for (int shift = 28; shift >= 0; shift -= 4) {
    double m[block::kWide];  // m[j]: the window's weight at keys >= t + j 2^shift (m[0]: all of it)
    for (int j = 0; j < block::kWide; ++j) m[j] = 0.0;
    const uint64_t top = static_cast<uint64_t>(t) + (uint64_t{1} << (shift + 4));
    for (int64_t i = tid; i < vocab; i += threads) {
      const float v = load<kKind>(x, i);
      const uint32_t key = order_key(v);
      if (key < t || key >= top) continue;
      const double w = weight(v, key);
      const uint32_t digit = (key - t) >> shift;
      for (int j = 0; j < block::kWide; ++j) m[j] += digit >= static_cast<uint32_t>(j) ? w : 0.0;
    }
    block::sum_wide(ctx, m, shm->wide);
    if (shift == 28) total = m[0];
    int digit = 0;
    for (int j = 1; j < block::kWide; ++j) {
      if (ok(above + m[j], total)) digit = j;
    }
    at_t = above + m[digit];
    if (digit + 1 < block::kWide) above += m[digit + 1];
    t += static_cast<uint32_t>(digit) << shift;
  }
  *measure_t = at_t;
  *total_out = total;
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
  const int64_t r = ctx.block_x(), vocab = a.vocab;
  const bool ragged = a.cu_nodes != nullptr;
  const int64_t b = ragged ? tree::ragged_row_of(a.cu_nodes, a.batch, r) : r / a.rows;
  const void* x = static_cast<const unsigned char*>(a.logits) + r * vocab * (kKind == kernel::kF32 ? 4 : 2);
  float* y = a.out + r * vocab;
  const float temp = a.temperature[b];
  const int32_t k = a.top_k[b];
  const float tp = a.top_p[b];
  const float mp = a.min_p ? a.min_p[b] : 0.0f;
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
    if (e.code == kOk && a.min_p) e = check_min_p(mp, b);
    const bool bad_params = e.code != kOk;
    if (ragged) {
      if (r == 0) {
        const ErrorRecord cu = tree::check_cu_nodes(a.cu_nodes, a.batch, a.total);
        if (cu.code != kOk) a.call_errors[0] = cu;
      }
      if (bad_params && a.cu_nodes[b] == r) a.call_errors[1 + b] = e;
    }
    if (e.code == kOk && any_invalid > 0) e = make_error(kLogitInvalid, b, 0, 0);
    if (e.code == kOk && best_key == order_key(-INFINITY)) e = make_error(kAllMasked, b, 0, 0);
    e.where = ragged ? r : r % a.rows;
    shm->flag = static_cast<int>(e.code);
    if (e.code != kOk && !(ragged && bad_params)) a.errors[r] = e;
  }
  ctx.sync();
  if (shm->flag != kOk || temp == 0.0f) {
    // Greedy (or an invalid row, which gets a harmless one-hot too).
    const int64_t hot = first_max == INT64_MAX ? 0 : first_max;
    for (int64_t i = tid; i < vocab; i += threads) y[i] = i == hot ? 1.0f : 0.0f;
    return;
  }
  const double t = temp;
  const float xmax = load<kKind>(x, first_max);
  const double zmax = static_cast<double>(xmax) / t;
  double measure, total;
  // top-k: the k-th largest key (ties kept).
  uint32_t keep = 0;
  if (top_k_active(k, vocab)) {
    keep = radix_select<kKind>(
        ctx, shm, x, vocab, [](float, uint32_t) { return 1.0; },
        [k](double count, double) { return count >= static_cast<double>(k); }, &measure, &total);
  }
  // min-p: a threshold on the keys, from the rule alone.
  if (mp > 0.0f) {
    const uint32_t cut = min_p_key(xmax, t, mp);
    keep = cut > keep ? cut : keep;
  }
  auto weight = [&](float v, uint32_t key) -> double {
    return key >= keep ? exp(static_cast<double>(v) / t - zmax) : 0.0;
  };
  double kept;
  if (tp < 1.0f) {
    // top-p on the kept set: the largest key whose upper set holds mass >= top_p
    // (it is >= keep, whose upper set holds all the mass).
    keep = radix_select<kKind>(
        ctx, shm, x, vocab, weight, [tp](double mass, double all) { return mass / all >= static_cast<double>(tp); },
        &kept, &total);
  } else {
    double s = 0.0;
    for (int64_t i = tid; i < vocab; i += threads) {
      const float v = load<kKind>(x, i);
      s += weight(v, order_key(v));
    }
    total = block::sum(ctx, s, shm->red);
    kept = total;
  }
  for (int64_t i = tid; i < vocab; i += threads) {
    const float v = load<kKind>(x, i);
    const double p = weight(v, order_key(v)) / total;
    y[i] = p > 0.0 ? static_cast<float>(p / (kept / total)) : 0.0f;
  }
}

}  // namespace specdec::sampling::device
