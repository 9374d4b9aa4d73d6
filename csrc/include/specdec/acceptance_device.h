// Acceptance sampling, build_tree and sampling_probs, the CUDA kernel bodies, torch-free:
// templates over the context of specdec/kernel_ctx.h, so acceptance_cuda.cu
// (and tree_cuda.cu, build_tree) run them on the GPU and the C++ tests on the
// host CUDA emulator
// (tests/cpp/cuda_emulator.h).
//
// One thread block per row.  Every thread runs the shared walk of
// specdec/acceptance.h in lock-step on identical scalars; the vocabulary-wide
// collectives (sum, search) are block reductions and a tiled block scan, in
// float64.  Invalid input is recorded per row in an error array (the launcher
// raises it in eager mode); the outputs stay in range (tokens in [0, V)).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "specdec/acceptance.h"
#include "specdec/kernel_ctx.h"
#include "specdec/sampling.h"

namespace specdec::accept::device {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;  // consecutive vocabulary entries per thread in a scan tile

// The block's shared scalars, at the start of dynamic shared memory; the walk
// kernels put their int64 scratch (one per node) after it.
struct Shared {
  double red[kWarps];
  long long idx[kWarps];
  int flag;
};
constexpr size_t kSharedBytes = (sizeof(Shared) + 15) / 16 * 16;

template <class Ctx>
SPECDEC_HOST_DEVICE SPECDEC_INLINE Shared* shared_scalars(const Ctx& ctx) {
  return reinterpret_cast<Shared*>(ctx.shared());
}

// ---------------------------------------------------------------------------
// Block collectives (every thread must call them; results are broadcast).
// ---------------------------------------------------------------------------

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE double block_sum(const Ctx& ctx, double v, double* shm) {
  for (int o = 16; o > 0; o >>= 1) v += ctx.shfl_xor(v, o);
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  ctx.sync();  // shm may still be read by a previous collective
  if (lane == 0) shm[warp] = v;
  ctx.sync();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += shm[w];
  return total;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE int64_t block_min(const Ctx& ctx, int64_t v, long long* shm) {
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t other = ctx.shfl_xor(v, o);
    v = other < v ? other : v;
  }
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  ctx.sync();
  if (lane == 0) shm[warp] = v;
  ctx.sync();
  int64_t m = shm[0];
  for (int w = 1; w < kWarps; ++w) m = shm[w] < m ? shm[w] : m;
  return m;
}

// Exclusive prefix of v over the block; *total receives the block's sum.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE double block_exclusive_scan(const Ctx& ctx, double v, double* shm, double* total) {
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  double incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const double up = ctx.shfl_up(incl, static_cast<unsigned>(o));
    if (lane >= o) incl += up;
  }
  ctx.sync();
  if (lane == 31) shm[warp] = incl;
  ctx.sync();
  double before = 0.0, all = 0.0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += shm[w];
    all += shm[w];
  }
  *total = all;
  return before + incl - v;
}

// ---------------------------------------------------------------------------
// The row policy of specdec/acceptance.h on a thread block.
// ---------------------------------------------------------------------------

template <class Ctx>
class BlockRow : public RowView {
 public:
  SPECDEC_HOST_DEVICE BlockRow(const Ctx& ctx, const RowView& view, int64_t* scratch, Shared* shm,
                               unsigned long long* error)
      : RowView(view), ctx_(ctx), scratch_(scratch), shm_(shm), error_(error) {}

  SPECDEC_HOST_DEVICE int64_t get(int64_t i) const { return scratch_[i]; }
  SPECDEC_HOST_DEVICE void set(int64_t i, int64_t v) {
    ctx_.sync();  // everyone has read the old value
    if (ctx_.thread() == 0) scratch_[i] = v;
    ctx_.sync();
  }
  SPECDEC_HOST_DEVICE void bad(int32_t code, int64_t node, int64_t x) {
    // error_ = {code, where, value}; the first reporter wins.
    if (ctx_.atomic_cas(error_, 0ull, static_cast<unsigned long long>(code)) == 0ull) {
      error_[1] = static_cast<unsigned long long>(node);
      error_[2] = static_cast<unsigned long long>(x);
    }
  }
  SPECDEC_HOST_DEVICE void out(int64_t j, int64_t node) {
    if (ctx_.thread() == 0) accept_[j] = static_cast<int32_t>(node);
  }
  SPECDEC_HOST_DEVICE void finish(int64_t length, int64_t next) {
    for (int64_t j = length + ctx_.thread(); j < nodes; j += ctx_.block_dim()) accept_[j] = -1;
    if (ctx_.thread() == 0) {
      *num_ = static_cast<int32_t>(length);
      *next_ = next < 0 || next >= vocab ? 0 : next;
    }
  }
  template <class F>
  SPECDEC_HOST_DEVICE double sum(F f) {
    double s = 0.0;
    for (int64_t x = ctx_.thread(); x < vocab; x += ctx_.block_dim()) s += f(x);
    return block_sum(ctx_, s, shm_->red);
  }
  template <class F>
  SPECDEC_HOST_DEVICE int64_t search(F f, double target) {
    double carry = 0.0;
    const int64_t tile = static_cast<int64_t>(ctx_.block_dim()) * kItems;
    for (int64_t base = 0; base < vocab; base += tile) {
      const int64_t first = base + ctx_.thread() * kItems;
      double v[kItems];
      double mine = 0.0;
      SPECDEC_UNROLL
      for (int k = 0; k < kItems; ++k) {
        v[k] = first + k < vocab ? f(first + k) : 0.0;
        mine += v[k];
      }
      double total;
      const double before = block_exclusive_scan(ctx_, mine, shm_->red, &total);
      if (carry + total > target) {
        int64_t hit = INT64_MAX;
        double run = carry + before;
        SPECDEC_UNROLL
        for (int k = 0; k < kItems; ++k) {
          run += v[k];
          if (hit == INT64_MAX && first + k < vocab && run > target) hit = first + k;
        }
        const int64_t x = block_min(ctx_, hit, shm_->idx);
        if (x != INT64_MAX) return x;
      }
      carry += total;
    }
    return -1;
  }

 private:
  const Ctx& ctx_;
  int64_t* scratch_;
  Shared* shm_;
  unsigned long long* error_;
};

enum class Walk { kRejectionDraft, kRejection, kTypical };

struct WalkArgs {
  const int32_t* parents;  // [B, N]
  const int64_t* tokens;   // [B, N]
  const float* target;     // [B, N, V]
  const float* draft;      // [B, N, V] or nullptr
  const int64_t *seed, *offset;
  int64_t nodes, vocab;
  double threshold, alpha;  // typical acceptance
  int32_t *accept, *num;    // [B, N], [B]
  int64_t* next;            // [B]
  unsigned long long* errors;  // [B, 3]
};

// Dynamic shared memory of a walk block.
SPECDEC_HOST_DEVICE SPECDEC_INLINE size_t walk_smem(int64_t nodes) {
  return kSharedBytes + static_cast<size_t>(nodes) * sizeof(int64_t);
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, Walk kWalk>
SPECDEC_HOST_DEVICE void walk_block(const Ctx& ctx, const WalkArgs& a) {
  Shared* shm = shared_scalars(ctx);
  int64_t* scratch = reinterpret_cast<int64_t*>(ctx.shared() + kSharedBytes);
  const int64_t b = ctx.block_x(), o = b * a.nodes;
  unsigned long long* error = a.errors + 3 * b;
  // Thread 0 validates the tree; everyone learns the verdict.
  if (ctx.thread() == 0) {
    int64_t where = 0, value = 0;
    const int32_t code = check_tree(a.parents + o, a.tokens + o, a.nodes, a.vocab, &where, &value);
    shm->flag = code == kOk;
    if (code != kOk) {
      error[0] = static_cast<unsigned long long>(code);
      error[1] = static_cast<unsigned long long>(where);
      error[2] = static_cast<unsigned long long>(value);
    }
  }
  ctx.sync();
  if (!shm->flag) {  // a valid, empty verdict
    for (int64_t j = ctx.thread(); j < a.nodes; j += ctx.block_dim()) a.accept[o + j] = j == 0 ? 0 : -1;
    if (ctx.thread() == 0) {
      a.num[b] = 1;
      a.next[b] = 0;
    }
    return;
  }
  const RowView view(a.nodes, a.vocab, a.parents + o, a.tokens + o, a.target + o * a.vocab,
                     a.draft ? a.draft + o * a.vocab : nullptr, static_cast<uint64_t>(a.seed[b]),
                     static_cast<uint64_t>(a.offset[b]), a.accept + o, a.num + b, a.next + b);
  BlockRow<Ctx> row(ctx, view, scratch, shm, error);
  if constexpr (kWalk == Walk::kRejectionDraft) {
    rejection_walk<true>(row);
  } else if constexpr (kWalk == Walk::kRejection) {
    rejection_walk<false>(row);
  } else {
    typical_walk(row, a.threshold, a.alpha);
  }
}

// verify_greedy: one thread per row.
SPECDEC_HOST_DEVICE SPECDEC_INLINE void greedy_row(const int32_t* parents, const int64_t* tokens,
                                                   const int64_t* argmax, int64_t b, int64_t nodes,
                                                   int32_t* accept, int32_t* num, int64_t* next,
                                                   unsigned long long* errors) {
  const int64_t o = b * nodes;
  unsigned long long* error = errors + 3 * b;
  int64_t where = 0, value = 0;
  int32_t code = check_tree(parents + o, tokens + o, nodes, 0, &where, &value);
  for (int64_t i = 0; code == kOk && i < nodes; ++i) {
    if (argmax[o + i] < 0) {
      code = kArgmaxRange;
      where = i;
      value = argmax[o + i];
    }
  }
  if (code != kOk) {
    error[0] = static_cast<unsigned long long>(code);
    error[1] = static_cast<unsigned long long>(where);
    error[2] = static_cast<unsigned long long>(value);
    for (int64_t j = 0; j < nodes; ++j) accept[o + j] = j == 0 ? 0 : -1;
    num[b] = 1;
    next[b] = 0;
    return;
  }
  num[b] = static_cast<int32_t>(greedy_walk(parents + o, tokens + o, argmax + o, nodes, accept + o, next + b));
}

// ---------------------------------------------------------------------------
// build_tree: one block per tree.  Thread 0 validates the parent array; then
// each thread owns word columns of the mask: row i's word w reads only the
// parent's word w, written earlier by the same thread, so no barrier is
// needed between rows.  An invalid tree gets zero masks and depths and an
// error record {code, where, value}.
// ---------------------------------------------------------------------------

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE void build_tree_block(const Ctx& ctx, const int32_t* parents, int64_t nodes, int64_t words,
                                          int32_t* mask, int32_t* depth, int64_t* errors) {
  Shared* shm = shared_scalars(ctx);
  const int64_t b = ctx.block_x();
  const int tid = ctx.thread(), threads = ctx.block_dim();
  const int32_t* row = parents + b * nodes;
  int32_t* m = mask + b * nodes * words;
  if (tid == 0) {
    int64_t where = 0, value = 0;
    const int32_t code = check_parents(row, nodes, &where, &value);
    shm->flag = code == kOk;
    if (code != kOk) {
      errors[3 * b] = code;
      errors[3 * b + 1] = where;
      errors[3 * b + 2] = value;
    }
  }
  ctx.sync();
  if (!shm->flag) {
    for (int64_t i = tid; i < nodes * words; i += threads) m[i] = 0;
    for (int64_t i = tid; i < nodes; i += threads) depth[b * nodes + i] = 0;
    return;
  }
  for (int64_t w = tid; w < words; w += threads) tree_mask_column(row, nodes, words, w, m);
  if (tid == 0) tree_depths(row, nodes, depth + b * nodes);
}

// ---------------------------------------------------------------------------
// sampling_probs: one block per row of logits.
// ---------------------------------------------------------------------------

struct SamplingArgs {
  const void* logits;  // [B, V] or [B, R, V] in fp32 / fp16 / bf16 (kind)
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  int64_t rows, vocab;  // rows: R (1 for 2-D logits)
  float* out;
  long long* errors;  // [B * R, 2]: code, value (the double's bits)
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
  const uint32_t best_key =
      static_cast<uint32_t>(-block_min(ctx, -static_cast<int64_t>(sampling::order_key(best)), shm->idx));
  const int64_t first_max = block_min(ctx, sampling::order_key(best) == best_key ? best_i : INT64_MAX, shm->idx);
  const double any_invalid = block_sum(ctx, invalid, shm->red);
  if (tid == 0) {
    int32_t code = sampling::check_params(temp, k, tp);
    if (code == sampling::kOk && any_invalid > 0) code = sampling::kLogitInvalid;
    if (code == sampling::kOk && best_key == sampling::order_key(-INFINITY)) code = sampling::kAllMasked;
    shm->flag = code;
    if (code != sampling::kOk) {
      const double value = code == sampling::kTemperature ? temp : code == sampling::kTopK ? k : tp;
      long long bits;
      std::memcpy(&bits, &value, sizeof(bits));
      a.errors[2 * r] = code;
      a.errors[2 * r + 1] = bits;
    }
  }
  ctx.sync();
  if (shm->flag != sampling::kOk || temp == 0.0f) {
    // Greedy (or an invalid row, which gets a harmless one-hot too).
    const int64_t hot = first_max == INT64_MAX ? 0 : first_max;
    for (int64_t i = tid; i < vocab; i += threads) y[i] = i == hot ? 1.0f : 0.0f;
    return;
  }
  const double t = temp;
  const double zmax = static_cast<double>(load<kKind>(x, first_max)) / t;
  // top-k: the k-th largest key (ties kept).
  uint32_t keep = 0;
  if (sampling::top_k_active(k, vocab)) {
    keep = largest_key(
        [&](uint32_t cand) {
          double c = 0.0;
          for (int64_t i = tid; i < vocab; i += threads) c += sampling::order_key(load<kKind>(x, i)) >= cand;
          return block_sum(ctx, c, shm->red);
        },
        static_cast<double>(k));
  }
  auto weight = [&](int64_t i, uint32_t from) -> double {
    const float v = load<kKind>(x, i);
    return sampling::order_key(v) >= from ? exp(static_cast<double>(v) / t - zmax) : 0.0;
  };
  auto mass = [&](uint32_t from) {
    double s = 0.0;
    for (int64_t i = tid; i < vocab; i += threads) s += weight(i, from);
    return block_sum(ctx, s, shm->red);
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

}  // namespace specdec::accept::device
