// Acceptance rules shared by the CPU and CUDA kernels (torch-free): the walks
// of verify_greedy, rejection_sample (its methods tokenwise, block and
// traversal, siblings iid or without replacement) and typical_accept.
// docs/ops.md, family `acceptance`, states the rules; specdec_cuda/reference.py
// is the oracle these must match.
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
// a scratch array of int64 (get(i), set(i, v): on CUDA a leader-only write
// then a barrier; scratch_words(walk, N) of them, N for every walk but
// traversal's, which keeps per-node state), `bad(code, node, x)` to report an
// invalid probability, and out(j, node) / finish(num, next) for the outputs.
// Doubles live in the scratch as their bits (f64_bits / f64_of_bits).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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
  kNotChain = 8,          // method "block" on a tree that is not a chain: parents[b, i] != i - 1
};

// rejection_sample's verification method and how a node's children were drafted
// (docs/ops.md).  Deterministic drafts (no draft probabilities) are a third
// drafting scheme, chosen by passing no draft_probs.
enum class Method : int32_t { kTokenwise = 0, kBlock = 1, kTraversal = 2 };
enum class Siblings : int32_t { kIid = 0, kWithoutReplacement = 1 };

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

// Method "block" verifies chains only: parents[i] = i - 1 for every i >= 1.
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_chain(const int32_t* parents, int64_t nodes, int64_t row) {
  for (int64_t i = 1; i < nodes; ++i) {
    if (parents[i] != i - 1) return make_error(kNotChain, row, i, parents[i]);
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

// ---------------------------------------------------------------------------
// The methods of issue 13: RSD's recursive rule (tokenwise, siblings drafted
// without replacement), block verification (chains) and traversal
// verification (trees).  docs/ops.md states them; each keeps its residuals in
// the closed form of rejection_walk, w(y) = max(A p(y) - B q(y), 0) of mass Z,
// with an explicit list of excluded tokens where siblings are distinct.
// ---------------------------------------------------------------------------

// Doubles stored in the int64 scratch as their bits.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t f64_bits(double v) { return double_bits(v); }
SPECDEC_HOST_DEVICE SPECDEC_INLINE double f64_of_bits(int64_t bits) {
  double v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// P(u * den < num) for u ~ U[0, 1) and den >= 0: min(1, num / den), or [num > 0] when den = 0.
SPECDEC_HOST_DEVICE SPECDEC_INLINE double ratio(double num, double den) {
  if (den > 0.0) return fmin(1.0, num / den);
  return num > 0.0 ? 1.0 : 0.0;
}

// w / z, and 0 for a residual with no mass.
SPECDEC_HOST_DEVICE SPECDEC_INLINE double share(double w, double z) { return z > 0.0 ? w / z : 0.0; }

// Whether token y is among scratch[from, to).
template <class Row>
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool listed(const Row& row, int64_t from, int64_t to, int64_t y) {
  for (int64_t k = from; k < to; ++k) {
    if (row.get(k) == y) return true;
  }
  return false;
}

// RSD (docs/ops.md: rejection_sample, method "tokenwise", siblings
// "without_replacement"): rejection_walk<true> with the draft side updated the
// way the siblings were drawn.  At node u the draft distribution of the next
// sibling is q restricted to the tokens not drawn before it, of mass m; so a
// rejection adds 1/m (not 1) to B and removes the token from both the residual
// and the draft.  Once m is 0 the remaining siblings are deterministic fillers.
// Scratch [0, N): the rejected siblings' tokens at the current node.
template <class Row>
SPECDEC_HOST_DEVICE void rsd_walk(Row& row) {
  int64_t node = 0;
  int64_t length = 0;
  row.out(length++, 0);
  while (true) {
    double a = 1.0, b = 0.0, z = 1.0, m = 1.0;
    int64_t count = 0;   // scratch[0, count): rejected tokens, removed from the draft
    int64_t w_from = 0;  // scratch[w_from, count): removed from the residual (a restart clears it)
    auto w = [&](int64_t y) -> double {
      return listed(row, w_from, count, y) ? 0.0 : fmax(tp(row, node, y) * a - dq(row, node, y) * b, 0.0);
    };
    int64_t accepted = -1;
    bool has_children = false;
    for (int64_t c = next_child(row, node, node); c >= 0; c = next_child(row, node, c)) {
      has_children = true;
      const int64_t x = row.token(c);
      const double u = row.uniform(c);
      const bool exhausted = !(m > 0.0);
      const double s = exhausted ? 1.0 : listed(row, 0, count, x) ? 0.0 : dq(row, node, x) / m;
      if (u * s < share(w(x), z)) {
        accepted = c;
        break;
      }
      if (!(z > 0.0)) continue;  // a residual with no mass at all stays so
      a = a / z;
      b = b / z + (exhausted ? 0.0 : 1.0 / m);
      row.set(count++, x);
      if (!exhausted) {
        m = row.sum([&](int64_t y) -> double { return listed(row, 0, count, y) ? 0.0 : dq(row, node, y); });
      }
      z = row.sum(w);
      if (!(z > 0.0)) {  // no residual mass: back to the target distribution, at its real mass
        a = 1.0;
        b = 0.0;
        w_from = count;
        z = row.sum([&](int64_t y) -> double { return tp(row, node, y); });
      }
    }
    if (accepted < 0) {
      const double u = row.uniform(row.nodes);
      int64_t next;
      if (!has_children) {
        next = draw(row, node, [&](int64_t y) -> double { return tp(row, node, y); }, u);
      } else {
        next = draw(row, node, w, u, z);
      }
      row.finish(length, next);
      return;
    }
    node = accepted;
    row.out(length++, node);
  }
}

// Block verification of a chain (docs/ops.md: rejection_sample, method
// "block"); the caller has checked that the tree is a chain.  Weights
// P_0 = 1, P_i = ratio(P_{i-1} p_{i-1}(x_i), q_{i-1}(x_i)); node K's test is
// u_K < P_K, node i < K's is u_i < rho_i / ((1 - P_i) + rho_i) with
// rho_i = sum_y max(P_i p_i(y) - q_i(y), 0); the deepest passing test wins (scan
// from K down).  Scratch [0, N): P_i.
template <class Row>
SPECDEC_HOST_DEVICE void block_walk(Row& row) {
  const int64_t k = row.nodes - 1;
  double weight = 1.0;
  row.set(0, f64_bits(weight));
  for (int64_t i = 1; i <= k; ++i) {
    const int64_t x = row.token(i);
    weight = ratio(weight * tp(row, i - 1, x), dq(row, i - 1, x));
    row.set(i, f64_bits(weight));
  }
  // The residual after node i, R_i(y) = max(P_i p_i(y) - q_i(y), 0).
  double pi = 1.0;
  int64_t i = k;
  auto residual = [&](int64_t y) -> double { return fmax(tp(row, i, y) * pi - dq(row, i, y) * 1.0, 0.0); };
  double rho = 0.0;
  for (; i >= 1; --i) {
    pi = f64_of_bits(row.get(i));
    double h = pi;
    if (i < k) {
      rho = row.sum(residual);
      h = rho > 0.0 ? rho / ((1.0 - pi) + rho) : (pi >= 1.0 ? 1.0 : 0.0);
    }
    if (row.uniform(i) < h) break;
  }
  if (i == 0) {  // every draft rejected: the correction comes from R_0 = max(p_0 - q_0, 0)
    pi = 1.0;
    if (k > 0) rho = row.sum(residual);
  }
  for (int64_t j = 0; j <= i; ++j) row.out(j, j);
  const double u = row.uniform(row.nodes);
  int64_t next;
  if (i == k) {  // the bonus token (also N = 1: the root alone)
    next = draw(row, i, [&](int64_t y) -> double { return tp(row, i, y); }, u);
  } else {
    next = draw(row, i, residual, u, rho);  // no mass: draw falls back to p_i
  }
  row.finish(i + 1, next);
}

// Scratch words a walk needs for a tree of `nodes` nodes: traversal keeps its
// excluded tokens ([0, N)) and kTraversalFields words per node.
constexpr int64_t kTraversalFields = 7;
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t traversal_scratch_words(int64_t nodes) {
  return nodes * (1 + kTraversalFields);
}

// Traversal verification (docs/ops.md: rejection_sample, method "traversal").
// Depth first, children in index order; a node is tested after its whole
// subtree was rejected (post-order), with threshold P_c: on entering child c of
// u, P_c = ratio(P_u W_u(x_c), S_u(x_c)); when child c is rejected, u's state
// takes one step of recursive rejection sampling on the distribution
// (P_u W_u, 1 - P_u) over V and "reject u":  W_u <- max(P_u W_u - S_u, 0) / rho,
// P_u <- rho / ((1 - P_u) + rho).  S_u, the distribution c was drafted from,
// is q_u for iid siblings and q_u without the earlier siblings' tokens for
// siblings drawn without replacement.  The root's P stays 1: it is accepted once
// all its children are rejected.  Node state (scratch N + 7 v ..): A, B, Z
// (W_u = max(A p_u - B q_u, 0) / Z outside the excluded tokens), P, M (the draft
// mass left), the start of the node's excluded tokens on the stack [0, N), and
// where the residual's exclusions start (a restart clears them).
template <Siblings kSib, class Row>
SPECDEC_HOST_DEVICE void traversal_walk(Row& row) {
  constexpr bool kWor = kSib == Siblings::kWithoutReplacement;
  const int64_t n = row.nodes;
  struct State {
    double a, b, z, p, m;
    int64_t start, w_from;
  };
  auto load = [&](int64_t v) -> State {
    const int64_t o = n + kTraversalFields * v;
    return State{f64_of_bits(row.get(o)),
                 f64_of_bits(row.get(o + 1)),
                 f64_of_bits(row.get(o + 2)),
                 f64_of_bits(row.get(o + 3)),
                 f64_of_bits(row.get(o + 4)),
                 row.get(o + 5),
                 row.get(o + 6)};
  };
  auto store = [&](int64_t v, const State& s) {
    const int64_t o = n + kTraversalFields * v;
    row.set(o, f64_bits(s.a));
    row.set(o + 1, f64_bits(s.b));
    row.set(o + 2, f64_bits(s.z));
    row.set(o + 3, f64_bits(s.p));
    row.set(o + 4, f64_bits(s.m));
    row.set(o + 5, s.start);
    row.set(o + 6, s.w_from);
  };
  int64_t top = 0;  // the excluded-token stack is scratch [0, top)
  // W_v's numerator at y (v's exclusions are [s.w_from, top) while v is the deepest live node).
  auto wnum = [&](int64_t v, const State& s, int64_t y) -> double {
    return listed(row, s.w_from, top, y) ? 0.0 : fmax(tp(row, v, y) * s.a - dq(row, v, y) * s.b, 0.0);
  };
  store(0, State{1.0, 0.0, 1.0, 1.0, 1.0, 0, 0});
  int64_t cur = 0;
  int64_t child = next_child(row, 0, 0);
  while (true) {
    if (child >= 0) {  // enter `child` of cur
      const State s = load(cur);
      const int64_t x = row.token(child);
      const double wx = wnum(cur, s, x);
      double sx;
      if constexpr (kWor) {
        sx = !(s.m > 0.0) ? 1.0 : listed(row, s.start, top, x) ? 0.0 : dq(row, cur, x) / s.m;
      } else {
        sx = dq(row, cur, x);
      }
      store(child, State{1.0, 0.0, 1.0, ratio(s.p * share(wx, s.z), sx), 1.0, top, top});
      cur = child;
      child = next_child(row, cur, cur);
      continue;
    }
    // cur's subtree is exhausted: test it (the root is never tested).
    State s = load(cur);
    if (cur == 0 || row.uniform(cur) < s.p) break;
    // cur is rejected: one recursive-rejection step at its parent.
    const int64_t rejected = cur;
    const int64_t x = row.token(rejected);
    top = s.start;  // cur's own exclusions go with it
    cur = row.parent(rejected);
    s = load(cur);
    const bool exhausted = kWor && !(s.m > 0.0);  // fillers: treated as deterministic drafts
    const double add = !kWor ? 1.0 : exhausted ? 0.0 : 1.0 / s.m;
    if (s.z > 0.0) {
      s.a = s.p * s.a / s.z;
      s.b = s.p * s.b / s.z + add;
    }
    if constexpr (kWor) {
      row.set(top++, x);
      if (!exhausted) {
        const int64_t from = s.start;
        s.m = row.sum([&](int64_t y) -> double { return listed(row, from, top, y) ? 0.0 : dq(row, cur, y); });
      }
    }
    const double rho = row.sum([&](int64_t y) -> double { return wnum(cur, s, y); });
    if (rho > 0.0) {
      s.p = rho / ((1.0 - s.p) + rho);
      s.z = rho;
    } else if (s.p >= 1.0) {  // P = 1 and no residual (probability 0): restart at the target, real mass
      s.a = 1.0;
      s.b = 0.0;
      s.w_from = top;
      s.z = row.sum([&](int64_t y) -> double { return tp(row, cur, y); });
    } else {  // nothing left: cur itself can no longer be accepted
      s.p = 0.0;
    }
    store(cur, s);
    child = next_child(row, cur, rejected);
  }
  // Accept cur: the path from the root, and the next token from W_cur (p_cur at an original leaf).
  int64_t length = 1;
  for (int64_t v = cur; v != 0; v = row.parent(v)) ++length;
  for (int64_t v = cur, j = length - 1; j >= 0; v = row.parent(v), --j) row.out(j, v);
  const State s = load(cur);
  const double u = row.uniform(n);
  int64_t next;
  if (next_child(row, cur, cur) < 0) {
    next = draw(row, cur, [&](int64_t y) -> double { return tp(row, cur, y); }, u);
  } else {
    next = draw(row, cur, [&](int64_t y) -> double { return wnum(cur, s, y); }, u, s.z);
  }
  row.finish(length, next);
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

// The walks above, by name: the CPU kernel, the CUDA kernel body (one
// instantiation each) and the emulated tests select them with this.
enum class Walk {
  kRejectionDraft,     // rejection_sample tokenwise, iid siblings (rejection_walk<true>)
  kRejection,          // rejection_sample without draft probabilities, every method (rejection_walk<false>)
  kTypical,            // typical_accept
  kRejectionDraftWor,  // rejection_sample tokenwise, siblings without replacement (RSD: rsd_walk)
  kBlock,              // rejection_sample block (block_walk)
  kTraversal,          // rejection_sample traversal, iid siblings
  kTraversalWor,       // rejection_sample traversal, siblings without replacement
};

// The walk of rejection_sample with draft probabilities for a method and sibling scheme.
SPECDEC_HOST_DEVICE constexpr Walk draft_walk(Method method, Siblings siblings) {
  const bool wor = siblings == Siblings::kWithoutReplacement;
  return method == Method::kBlock       ? Walk::kBlock
         : method == Method::kTraversal ? (wor ? Walk::kTraversalWor : Walk::kTraversal)
                                        : (wor ? Walk::kRejectionDraftWor : Walk::kRejectionDraft);
}

// Scratch words (int64) of a walk.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t scratch_words(Walk walk, int64_t nodes) {
  return walk == Walk::kTraversal || walk == Walk::kTraversalWor ? traversal_scratch_words(nodes) : nodes;
}

// Run walk kWalk on one row.
template <Walk kWalk, class Row>
SPECDEC_HOST_DEVICE void run_walk(Row& row, double threshold, double alpha) {
  if constexpr (kWalk == Walk::kRejectionDraft) {
    rejection_walk<true>(row);
  } else if constexpr (kWalk == Walk::kRejection) {
    rejection_walk<false>(row);
  } else if constexpr (kWalk == Walk::kTypical) {
    typical_walk(row, threshold, alpha);
  } else if constexpr (kWalk == Walk::kRejectionDraftWor) {
    rsd_walk(row);
  } else if constexpr (kWalk == Walk::kBlock) {
    block_walk(row);
  } else if constexpr (kWalk == Walk::kTraversal) {
    traversal_walk<Siblings::kIid>(row);
  } else {
    traversal_walk<Siblings::kWithoutReplacement>(row);
  }
}

}  // namespace specdec::accept
