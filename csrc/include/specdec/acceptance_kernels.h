// Acceptance sampling, the CUDA kernel bodies (verify_greedy, rejection_sample
// with its methods, typical_accept), torch-free: templates over the context of
// specdec/kernel_ctx.h, so csrc/cuda/acceptance_cuda.cu runs them on the GPU and
// the C++ tests on the host CUDA emulator (tests/cpp/cuda_emulator.h).
//
// One thread block per row.  Every thread runs the shared walk of
// specdec/acceptance_rules.h in lock-step on identical scalars; the
// vocabulary-wide collectives (sum, search) are block reductions and a tiled
// block scan (specdec/block_collectives.h), in float64.  Invalid input is
// recorded in the row's ErrorRecord (the launcher raises it in eager mode); the
// outputs stay in range (tokens in [0, V)).
#pragma once

#include <cmath>
#include <cstdint>

#include "specdec/acceptance_rules.h"
#include "specdec/block_collectives.h"
#include "specdec/errors.h"
#include "specdec/kernel_ctx.h"

namespace specdec::accept::device {

using block::kItems;
using block::kSharedBytes;
using block::kThreads;
using block::Shared;
using block::shared_scalars;

// The row policy of specdec/acceptance_rules.h on a thread block.

template <class Ctx>
class BlockRow : public RowView {
 public:
  SPECDEC_HOST_DEVICE BlockRow(const Ctx& ctx, const RowView& view, int64_t* scratch, Shared* shm, ErrorRecord* error)
      : RowView(view), ctx_(ctx), scratch_(scratch), shm_(shm), error_(error) {}

  SPECDEC_HOST_DEVICE int64_t get(int64_t i) const { return scratch_[i]; }
  SPECDEC_HOST_DEVICE void set(int64_t i, int64_t v) {
    ctx_.sync();  // everyone has read the old value
    if (ctx_.thread() == 0) scratch_[i] = v;
    ctx_.sync();
  }
  SPECDEC_HOST_DEVICE void bad(int32_t code, int64_t node, int64_t x) {
    // The first reporter wins the record (its row was set by walk_block).
    auto* code_word = reinterpret_cast<unsigned long long*>(&error_->code);
    if (ctx_.atomic_cas(code_word, 0ull, static_cast<unsigned long long>(code)) == 0ull) {
      error_->where = node;
      error_->value = x;
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
    return block::sum(ctx_, s, shm_->red);
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
      const double before = block::exclusive_scan(ctx_, mine, shm_->red, &total);
      if (carry + total > target) {
        int64_t hit = INT64_MAX;
        double run = carry + before;
        SPECDEC_UNROLL
        for (int k = 0; k < kItems; ++k) {
          run += v[k];
          if (hit == INT64_MAX && first + k < vocab && run > target) hit = first + k;
        }
        const int64_t x = block::min(ctx_, hit, shm_->idx);
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
  ErrorRecord* error_;
};

using accept::Walk;  // the walks, one kernel instantiation each (acceptance_rules.h)

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
  ErrorRecord* errors;      // [B], zeroed
  bool chain_only = false;  // method "block": a row whose tree is not a chain is invalid
};

// Dynamic shared memory of a walk block (N scratch words; `words` for walks that need more).
SPECDEC_HOST_DEVICE SPECDEC_INLINE size_t walk_smem(int64_t nodes, int64_t words = -1) {
  return kSharedBytes + static_cast<size_t>(words < 0 ? nodes : words) * sizeof(int64_t);
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, Walk kWalk>
SPECDEC_HOST_DEVICE void walk_block(const Ctx& ctx, const WalkArgs& a) {
  Shared* shm = shared_scalars(ctx);
  int64_t* scratch = reinterpret_cast<int64_t*>(ctx.shared() + kSharedBytes);
  const int64_t b = ctx.block_x(), o = b * a.nodes;
  ErrorRecord* error = a.errors + b;
  // Thread 0 validates the tree; everyone learns the verdict.
  if (ctx.thread() == 0) {
    ErrorRecord e = check_tree(a.parents + o, a.tokens + o, a.nodes, a.vocab, b);
    if (e.code == kOk && a.chain_only) e = check_chain(a.parents + o, a.nodes, b);
    shm->flag = e.code == kOk;
    *error = e;  // the row is set for bad() reports too
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
  run_walk<kWalk>(row, a.threshold, a.alpha);
}

// verify_greedy: one thread per row.
SPECDEC_HOST_DEVICE SPECDEC_INLINE void greedy_row(const int32_t* parents, const int64_t* tokens, const int64_t* argmax,
                                                   int64_t b, int64_t nodes, int32_t* accept, int32_t* num,
                                                   int64_t* next, ErrorRecord* errors) {
  const int64_t o = b * nodes;
  ErrorRecord e = check_tree(parents + o, tokens + o, nodes, 0, b);
  for (int64_t i = 0; e.code == kOk && i < nodes; ++i) {
    if (argmax[o + i] < 0) e = make_error(kArgmaxRange, b, i, argmax[o + i]);
  }
  if (e.code != kOk) {
    errors[b] = e;
    for (int64_t j = 0; j < nodes; ++j) accept[o + j] = j == 0 ? 0 : -1;
    num[b] = 1;
    next[b] = 0;
    return;
  }
  num[b] = static_cast<int32_t>(greedy_walk(parents + o, tokens + o, argmax + o, nodes, accept + o, next + b));
}

// ---------------------------------------------------------------------------
// Ragged batches: row b's nodes are the entries cu_nodes[b] .. cu_nodes[b + 1] - 1
// of the flat [T] / [T, V] tensors, parents local to the row.  Each row checks
// its share of cu_nodes (tree::check_cu_row) into cu_errors[b], which the
// launcher ranks before every row's own record in errors[b]; a row whose
// entries are not inside [0, T) writes no entry of accept_nodes (the launcher
// fills it with -1 first) and num = 1, next = 0.
// ---------------------------------------------------------------------------

struct RaggedWalkArgs {
  const int32_t* parents;   // [T], local
  const int64_t* tokens;    // [T]
  const int32_t* cu_nodes;  // [B + 1]
  const float* target;      // [T, V]
  const float* draft;       // [T, V] or nullptr
  const int64_t *seed, *offset;
  int64_t batch, total, vocab;
  double threshold, alpha;  // typical acceptance
  int32_t *accept, *num;    // [T], [B]
  int64_t* next;            // [B]
  int64_t* scratch;         // [T]: each row's walk scratch at its entries (deterministic drafts, typical)
  ErrorRecord* cu_errors;   // [B], zeroed
  ErrorRecord* errors;      // [B], zeroed
};

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, Walk kWalk>
SPECDEC_HOST_DEVICE void walk_block_ragged(const Ctx& ctx, const RaggedWalkArgs& a) {
  Shared* shm = shared_scalars(ctx);
  const int64_t b = ctx.block_x();
  ErrorRecord* error = a.errors + b;
  // Thread 0 checks the row's offsets and tree; everyone learns the verdict:
  // 0 = entries outside [0, T), 1 = an invalid tree, 2 = valid.
  if (ctx.thread() == 0) {
    bool safe = false;
    const ErrorRecord cu = tree::check_cu_row(a.cu_nodes, a.batch, a.total, b, &safe);
    if (cu.code != kOk) a.cu_errors[b] = cu;
    int flag = 0;
    if (safe) {
      const int64_t start = a.cu_nodes[b], nodes = a.cu_nodes[b + 1] - start;
      const ErrorRecord e = check_tree(a.parents + start, a.tokens + start, nodes, a.vocab, b);
      *error = e;  // the row is set for bad() reports too
      flag = e.code == kOk ? 2 : 1;
    }
    shm->flag = flag;
  }
  ctx.sync();
  const int flag = shm->flag;
  if (flag < 2) {  // a harmless verdict
    if (flag == 1) {
      const int64_t start = a.cu_nodes[b], nodes = a.cu_nodes[b + 1] - start;
      for (int64_t j = ctx.thread(); j < nodes; j += ctx.block_dim()) a.accept[start + j] = j == 0 ? 0 : -1;
    }
    if (ctx.thread() == 0) {
      a.num[b] = 1;
      a.next[b] = 0;
    }
    return;
  }
  const int64_t start = a.cu_nodes[b], nodes = a.cu_nodes[b + 1] - start;
  const RowView view(nodes, a.vocab, a.parents + start, a.tokens + start, a.target + start * a.vocab,
                     a.draft ? a.draft + start * a.vocab : nullptr, static_cast<uint64_t>(a.seed[b]),
                     static_cast<uint64_t>(a.offset[b]), a.accept + start, a.num + b, a.next + b);
  BlockRow<Ctx> row(ctx, view, a.scratch ? a.scratch + start : nullptr, shm, error);
  if constexpr (kWalk == Walk::kRejectionDraft) {
    rejection_walk<true>(row);
  } else if constexpr (kWalk == Walk::kRejection) {
    rejection_walk<false>(row);
  } else {
    typical_walk(row, a.threshold, a.alpha);
  }
}

// verify_greedy_ragged: one thread per row.
SPECDEC_HOST_DEVICE SPECDEC_INLINE void greedy_row_ragged(const int32_t* parents, const int64_t* tokens,
                                                          const int64_t* argmax, const int32_t* cu, int64_t batch,
                                                          int64_t total, int64_t b, int32_t* accept, int32_t* num,
                                                          int64_t* next, ErrorRecord* cu_errors, ErrorRecord* errors) {
  bool safe = false;
  const ErrorRecord c = tree::check_cu_row(cu, batch, total, b, &safe);
  if (c.code != kOk) cu_errors[b] = c;
  num[b] = 1;
  next[b] = 0;
  if (!safe) return;
  const int64_t start = cu[b], nodes = cu[b + 1] - start;
  ErrorRecord e = check_tree(parents + start, tokens + start, nodes, 0, b);
  for (int64_t i = 0; e.code == kOk && i < nodes; ++i) {
    if (argmax[start + i] < 0) e = make_error(kArgmaxRange, b, i, argmax[start + i]);
  }
  if (e.code != kOk) {
    errors[b] = e;
    for (int64_t j = 0; j < nodes; ++j) accept[start + j] = j == 0 ? 0 : -1;
    return;
  }
  num[b] = static_cast<int32_t>(
      greedy_walk(parents + start, tokens + start, argmax + start, nodes, accept + start, next + b));
}

}  // namespace specdec::accept::device
