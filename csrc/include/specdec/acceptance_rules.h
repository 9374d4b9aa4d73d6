// Acceptance rules shared by the CPU and CUDA kernels (torch-free): the walks
// of verify_greedy, rejection_sample and typical_accept.  docs/ops.md, family
// `acceptance`, states the rules; specdec_cuda/reference.py is the oracle these
// must match.
//
// Each verifier walks one row's tree from the root.  The walk is sequential
// and cheap; what touches the whole vocabulary (residual masses, the final
// inverse-CDF draw, entropies) goes through two collectives of a `Row` policy:
//
//   double  row.sum(f)            sum over x in [0, V) of f(x), in float64
//   int64_t row.search(f, t)      smallest x with f(0) + ... + f(x) > t, or -1
//
// The CPU policy (SequentialRow, below) loops; the CUDA policy
// (acceptance_kernels.h) runs them with a whole thread block, every thread
// executing the walk in lock-step on identical scalars.  Rows also give
// parent(i), token(i), p(node, x) (target), q(node, x) (draft), uniform(index),
// a scratch array of N int64 (get(i), set(i, v): on CUDA a leader-only write
// then a barrier), `bad(code, node, x)` to report an invalid probability, and
// out(j, node) / finish(num, next) for the outputs.
#pragma once

#include <cmath>
#include <cstdint>

#include "specdec/errors.h"
#include "specdec/macros.h"
#include "specdec/philox.h"
#include "specdec/tree_rules.h"

namespace specdec::accept {

// Error codes, continuing the tree family's (1: parents[b, 0] != -1, 2: a
// parent out of range).  `where` is the node, `value` the offending entry (for
// probabilities: the token x, at node `where`).
enum ErrorCode : int32_t {
  kTokenRange = 3,        // tokens[b, i] outside [0, V)
  kProbInvalid = 4,       // a target probability read is NaN, infinite or negative
  kNoMass = 5,            // the distribution to draw from has no mass at all
  kArgmaxRange = 6,       // target_argmax[b, i] negative
  kDraftProbInvalid = 7,  // a draft probability read is NaN, infinite or negative
};

// The part of a row policy that is plain data access, shared by the CPU and
// CUDA policies: the row's tree, its probabilities [N, V], its Philox stream
// and its outputs.  A policy adds the collectives, scratch and error report.
class RowView {
 public:
  int64_t nodes, vocab;

  SPECDEC_HOST_DEVICE RowView(int64_t n, int64_t v, const int32_t* parents, const int64_t* tokens, const float* target,
                              const float* draft, uint64_t seed, uint64_t offset, int32_t* accept, int32_t* num,
                              int64_t* next)
      : nodes(n),
        vocab(v),
        parents_(parents),
        tokens_(tokens),
        target_(target),
        draft_(draft),
        seed_(seed),
        offset_(offset),
        accept_(accept),
        num_(num),
        next_(next) {}

  SPECDEC_HOST_DEVICE int32_t parent(int64_t i) const { return parents_[i]; }
  SPECDEC_HOST_DEVICE int64_t token(int64_t i) const { return tokens_[i]; }
  SPECDEC_HOST_DEVICE float p(int64_t node, int64_t x) const { return target_[node * vocab + x]; }
  SPECDEC_HOST_DEVICE float q(int64_t node, int64_t x) const { return draft_[node * vocab + x]; }
  SPECDEC_HOST_DEVICE double uniform(int64_t index) const { return philox::uniform(seed_, offset_, index); }

 protected:
  const int32_t* parents_;
  const int64_t* tokens_;
  const float* target_;
  const float* draft_;
  uint64_t seed_, offset_;
  int32_t* accept_;
  int32_t* num_;
  int64_t* next_;
};

// The sequential row policy (host only): collectives are plain loops.  The
// CPU kernel runs every walk with it; the emulated CUDA tests use it as the
// policy the CUDA block policy must agree with.  `error` receives the row's
// first reported error.
class SequentialRow : public RowView {
 public:
  SequentialRow(const RowView& view, int64_t* scratch, ErrorRecord* error)
      : RowView(view), scratch_(scratch), error_(error) {}

  int64_t get(int64_t i) const { return scratch_[i]; }
  void set(int64_t i, int64_t v) { scratch_[i] = v; }
  void bad(int32_t code, int64_t node, int64_t x) {
    if (error_->code == kOk) {
      error_->code = code;
      error_->where = node;
      error_->value = x;
    }
  }
  void out(int64_t j, int64_t node) { accept_[j] = static_cast<int32_t>(node); }
  void finish(int64_t length, int64_t next) {
    for (int64_t j = length; j < nodes; ++j) accept_[j] = -1;
    *num_ = static_cast<int32_t>(length);
    *next_ = next;
  }
  template <class F>
  double sum(F f) {
    // Four independent accumulators: the adds no longer wait on each other.
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t x = 0;
    for (; x + 4 <= vocab; x += 4) {
      s0 += f(x);
      s1 += f(x + 1);
      s2 += f(x + 2);
      s3 += f(x + 3);
    }
    for (; x < vocab; ++x) s0 += f(x);
    return (s0 + s1) + (s2 + s3);
  }
  template <class F>
  int64_t search(F f, double target) {
    double c = 0.0;
    for (int64_t x = 0; x < vocab; ++x) {
      c += f(x);
      if (c > target) return x;
    }
    return -1;
  }

 private:
  int64_t* scratch_;
  ErrorRecord* error_;
};

// Validate row `row`'s tree: its parent array, then tokens >= 0, and < vocab
// when vocab > 0.
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_tree(const int32_t* parents, const int64_t* tokens, int64_t nodes,
                                                          int64_t vocab, int64_t row) {
  const ErrorRecord e = tree::check_parents(parents, nodes, row);
  if (e.code != kOk) return e;
  for (int64_t i = 0; i < nodes; ++i) {
    if (tokens[i] < 0 || (vocab > 0 && tokens[i] >= vocab)) return make_error(kTokenRange, row, i, tokens[i]);
  }
  return no_error(row);
}

// Greedy verification of one row (docs/ops.md: verify_greedy): from the
// root, accept the first child whose token is the target's argmax after the
// current node.  Writes the path (-1 padded to N), returns its length and sets
// *next to the argmax after the last accepted node.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t greedy_walk(const int32_t* parents, const int64_t* tokens,
                                                       const int64_t* argmax, int64_t nodes, int32_t* accept,
                                                       int64_t* next) {
  int64_t node = 0, length = 0;
  accept[length++] = 0;
  for (int64_t c = 1; c < nodes; ++c) {
    // Children of `node` come after it; the first match in index order wins.
    if (parents[c] == node && tokens[c] == argmax[node]) {
      node = c;
      accept[length++] = static_cast<int32_t>(c);
    }
  }
  for (int64_t j = length; j < nodes; ++j) accept[j] = -1;
  *next = argmax[node];
  return length;
}

// The next child of `node` after `after` (children in increasing index order), or -1.
template <class Row>
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t next_child(const Row& row, int64_t node, int64_t after) {
  for (int64_t c = after + 1; c < row.nodes; ++c) {
    if (row.parent(c) == node) return c;
  }
  return -1;
}

// max(v, 0): fmax's value for every v (NaN included), written as a comparison
// so that the CPU policy's loops over the vocabulary vectorise.
SPECDEC_HOST_DEVICE SPECDEC_INLINE double relu(double v) { return v > 0.0 ? v : 0.0; }

// Finite and non-negative (3.40282347e38f is FLT_MAX; NaN fails both comparisons).
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool valid_prob(float v) { return v >= 0.0f && v <= 3.40282347e38f; }

// Probability reads that flag NaN, infinite or negative values on the way.
template <class Row>
SPECDEC_HOST_DEVICE SPECDEC_INLINE double tp(Row& row, int64_t node, int64_t x) {
  const float v = row.p(node, x);
  if (!valid_prob(v)) row.bad(kProbInvalid, node, x);
  return static_cast<double>(v);
}
template <class Row>
SPECDEC_HOST_DEVICE SPECDEC_INLINE double dq(Row& row, int64_t node, int64_t x) {
  const float v = row.q(node, x);
  if (!valid_prob(v)) row.bad(kDraftProbInvalid, node, x);
  return static_cast<double>(v);
}

// Inverse-CDF draw from weights f; falls back to the node's target
// distribution when f has no mass, and to "no mass" (token 0, flagged) when
// that has none either.  `total` is f's mass when the caller already has it.
template <class Row, class F>
SPECDEC_HOST_DEVICE int64_t draw(Row& row, int64_t node, F f, double u, double total = -1.0) {
  if (total < 0.0) total = row.sum(f);
  if (total > 0.0) {
    const int64_t x = row.search(f, u * total);
    if (x >= 0) return x;
  }
  auto p = [&](int64_t x) -> double { return tp(row, node, x); };
  total = row.sum(p);
  if (total > 0.0) {
    const int64_t x = row.search(p, u * total);
    if (x >= 0) return x;
    // u * total rounded up to the total: the last token with mass.
    return row.search(p, total * (1.0 - 1e-12));
  }
  row.bad(kNoMass, node, 0);
  return 0;
}

// Lossless verification (docs/ops.md: rejection_sample).
template <bool kDraft, class Row>
SPECDEC_HOST_DEVICE void rejection_walk(Row& row) {
  int64_t node = 0;
  int64_t length = 0;
  row.out(length++, 0);
  while (true) {
    double a = 1.0, b = 0.0, z = 1.0;  // residual w(x) = max(p A - q B, 0) of mass z
    int64_t rejected = 0;              // deterministic drafts: tokens zeroed so far (scratch)
    int64_t accepted = -1;
    bool has_children = false;
    for (int64_t c = next_child(row, node, node); c >= 0; c = next_child(row, node, c)) {
      has_children = true;
      const int64_t x = row.token(c);
      const double u = row.uniform(c);
      const double px = tp(row, node, x);
      if constexpr (kDraft) {
        const double qx = dq(row, node, x);
        const double w = relu(px * a - qx * b);
        if (u * qx < w / z) {
          accepted = c;
          break;
        }
        a = a / z;
        b = b / z + 1.0;
        z = row.sum([&](int64_t y) -> double { return relu(tp(row, node, y) * a - dq(row, node, y) * b); });
        if (!(z > 0.0)) {  // no residual mass: back to the target distribution, at its real mass
          a = 1.0;
          b = 0.0;
          z = row.sum([&](int64_t y) -> double { return tp(row, node, y); });
        }
      } else {
        bool already = false;
        for (int64_t k = 0; k < rejected; ++k) already = already || row.get(k) == x;
        const double w = already ? 0.0 : px;
        if (u * z < w) {
          accepted = c;
          break;
        }
        z -= w;
        if (!already) row.set(rejected++, x);
        if (!(z > 0.0)) {  // every token rejected: back to the target distribution, at its real mass
          rejected = 0;
          z = row.sum([&](int64_t y) -> double { return tp(row, node, y); });
        }
      }
    }
    if (accepted < 0) {
      const double u = row.uniform(row.nodes);
      int64_t next;
      if (!has_children) {
        next = draw(row, node, [&](int64_t y) -> double { return tp(row, node, y); }, u);
      } else if constexpr (kDraft) {
        // z is this residual's mass, summed by the last rejection.
        next = draw(
            row, node, [&](int64_t y) -> double { return relu(tp(row, node, y) * a - dq(row, node, y) * b); }, u, z);
      } else {
        next = draw(
            row, node,
            [&](int64_t y) -> double {
              for (int64_t k = 0; k < rejected; ++k) {
                if (row.get(k) == y) return 0.0;
              }
              return tp(row, node, y);
            },
            u);
      }
      row.finish(length, next);
      return;
    }
    node = accepted;
    row.out(length++, node);
  }
}

// Medusa's typical acceptance (docs/ops.md: typical_accept).  The
// scratch holds per-node state: bit 0 = whole path accepted, bits 1.. = depth.
template <class Row>
SPECDEC_HOST_DEVICE void typical_walk(Row& row, double threshold, double alpha) {
  for (int64_t i = 0; i < row.nodes; ++i) row.set(i, i == 0 ? 1 : 0);
  for (int64_t u = 0; u < row.nodes; ++u) {
    if (!(row.get(u) & 1)) continue;
    const int64_t first = next_child(row, u, u);
    if (first < 0) continue;
    const double entropy = row.sum([&](int64_t y) -> double {
      const double v = tp(row, u, y);
      return v > 0.0 ? -v * log(v) : 0.0;
    });
    const double cut = fmin(threshold, alpha * exp(-entropy));
    for (int64_t c = first; c >= 0; c = next_child(row, u, c)) {
      const double pc = tp(row, u, row.token(c));
      const int64_t depth = (row.get(u) >> 1) + 1;
      row.set(c, (depth << 1) | (pc > cut ? 1 : 0));
    }
  }
  int64_t best = 0;
  for (int64_t i = 1; i < row.nodes; ++i) {
    if ((row.get(i) & 1) && (row.get(i) >> 1) > (row.get(best) >> 1)) best = i;
  }
  const int64_t length = (row.get(best) >> 1) + 1;
  for (int64_t node = best, j = length - 1; j >= 0; node = row.parent(node), --j) row.out(j, node);
  const double u = row.uniform(row.nodes);
  const int64_t next = draw(row, best, [&](int64_t y) -> double { return tp(row, best, y); }, u);
  row.finish(length, next);
}

}  // namespace specdec::accept
