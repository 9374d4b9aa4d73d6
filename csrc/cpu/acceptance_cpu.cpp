// Acceptance sampling, CPU kernels: the shared walks of specdec/acceptance_rules.h
// (accept::run_walk) over a row policy whose vocabulary collectives are
// vectorised loops (accept::VectorRow below) for the token-wise walks and plain
// loops (SequentialRow) for the block and traversal walks, parallel over rows;
// the ragged verifiers run the same walks on views of each row at its offset.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/acceptance.h"
#include "ops/checks.h"
#include "ops/tree.h"
#include "specdec/acceptance_rules.h"
#include "specdec/philox.h"
#include "specdec/tree_rules.h"

namespace specdec {

namespace accept {

// The CPU kernels' row policy: SequentialRow's scratch and outputs, with the
// vocabulary collectives in blocks of kBlock entries, each summed in eight
// independent lanes, so that the walks' loops over the vocabulary vectorise.
// The block sums are added in order; search() walks the same block sums, so
// its running sum at a block's end equals sum()'s partial total exactly, and
// scans only the block where the target is crossed.
//
// Probability reads (tp/dq below, found by argument-dependent lookup in place
// of the generic ones) only note whether an invalid value was read, without a
// branch; the kernel then re-runs such a row with SequentialRow, whose first
// reported error is the op's (exactly what it reported before this policy).
class VectorRow : public RowView {
 public:
  static constexpr int64_t kBlock = 512;

  VectorRow(const RowView& view, int64_t* scratch, ErrorRecord* error)
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
  void note(float v) { invalid_ |= static_cast<int>(!(v >= 0.0f)) | static_cast<int>(!(v <= 3.40282347e38f)); }
  bool read_invalid() const { return invalid_ != 0; }
  void out(int64_t j, int64_t node) { accept_[j] = static_cast<int32_t>(node); }
  void finish(int64_t length, int64_t next) {
    for (int64_t j = length; j < nodes; ++j) accept_[j] = -1;
    *num_ = static_cast<int32_t>(length);
    *next_ = next;
  }
  template <class F>
  double sum(F f) {
    double total = 0.0;
    for (int64_t x = 0; x < vocab; x += kBlock) total += block_sum(f, x, std::min(kBlock, vocab - x));
    return total;
  }
  template <class F>
  int64_t search(F f, double target) {
    double c = 0.0;
    for (int64_t x0 = 0; x0 < vocab; x0 += kBlock) {
      const int64_t n = std::min(kBlock, vocab - x0);
      const double s = block_sum(f, x0, n);
      if (c + s > target) {
        // The first x whose running sum exceeds the target; the running sum of
        // this block can round below c + s, so the last entry with weight
        // (the one that carried the block sum over) stands in then.
        int64_t last = -1;
        for (int64_t x = x0; x < x0 + n; ++x) {
          const double v = f(x);
          c += v;
          if (v > 0.0) last = x;
          if (c > target) return x;
        }
        return last;
      }
      c += s;
    }
    return -1;
  }

 private:
  template <class F>
  double block_sum(F& f, int64_t x0, int64_t n) {
    double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      for (int j = 0; j < 8; ++j) s[j] += f(x0 + i + j);
    }
    for (; i < n; ++i) s[0] += f(x0 + i);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }

  int64_t* scratch_;
  ErrorRecord* error_;
  int invalid_ = 0;
};

// The probability reads of the walks, for VectorRow (overloads of the generic
// tp/dq of acceptance_rules.h, preferred as non-templates).
inline double tp(VectorRow& row, int64_t node, int64_t x) {
  const float v = row.p(node, x);
  row.note(v);
  return static_cast<double>(v);
}
inline double dq(VectorRow& row, int64_t node, int64_t x) {
  const float v = row.q(node, x);
  row.note(v);
  return static_cast<double>(v);
}

}  // namespace accept

namespace {

// One row's walk.  Token-wise walks (kVector): with VectorRow, and again with
// SequentialRow (the reference policy, whose first reported error is the op's)
// when the fast walk read an invalid probability.  The block and traversal
// walks run with SequentialRow only.  `walk` is generic over the policy.
template <bool kVector = true, class Walk>
void walk_row(const accept::RowView& view, int64_t* scratch, ErrorRecord* error, Walk& walk) {
  if constexpr (kVector) {
    const ErrorRecord before = *error;
    accept::VectorRow row(view, scratch, error);
    walk(row);
    if (!row.read_invalid()) return;
    *error = before;
  }
  accept::SequentialRow exact(view, scratch, error);
  walk(exact);
}

void validate_trees(const char* op, const TreeShape& s, const int32_t* parents, const int64_t* tokens, int64_t vocab,
                    bool chain_only = false) {
  std::vector<ErrorRecord> errors(s.batch);
  for (int64_t b = 0; b < s.batch; ++b) {
    errors[b] = accept::check_tree(parents + b * s.nodes, tokens + b * s.nodes, s.nodes, vocab, b);
    if (errors[b].code == kOk && chain_only) errors[b] = accept::check_chain(parents + b * s.nodes, s.nodes, b);
  }
  raise_first_error(errors, [op](const ErrorRecord& e) { raise_acceptance_error(op, e); });
}

// Runs the walk for every row in parallel (row policy with the row's scratch
// of `words` int64, N by default), then raises the lowest failing row's error.
template <bool kVector = true, class Walk>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_rows(const char* op, const TreeShape& s, const at::Tensor& tokens,
                                                        const at::Tensor& parents, const float* target,
                                                        const float* draft, const at::Tensor& seed,
                                                        const at::Tensor& offset, Walk walk, int64_t words = -1) {
  auto [accept, num, next] = verifier_outputs(s, tokens.options());
  std::vector<ErrorRecord> errors(s.batch);
  for (int64_t b = 0; b < s.batch; ++b) errors[b] = no_error(b);
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  const int64_t* sd = seed.data_ptr<int64_t>();
  const int64_t* of = offset.data_ptr<int64_t>();
  int32_t* acc = accept.data_ptr<int32_t>();
  int32_t* nu = num.data_ptr<int32_t>();
  int64_t* nx = next.data_ptr<int64_t>();
  const int64_t row_probs = s.nodes * s.vocab;
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch(words < 0 ? s.nodes : words);
    for (int64_t b = begin; b < end; ++b) {
      const accept::RowView view(s.nodes, s.vocab, par + b * s.nodes, tok + b * s.nodes, target + b * row_probs,
                                 draft ? draft + b * row_probs : nullptr, static_cast<uint64_t>(sd[b]),
                                 static_cast<uint64_t>(of[b]), acc + b * s.nodes, nu + b, nx + b);
      walk_row<kVector>(view, scratch.data(), &errors[b], walk);
    }
  });
  raise_first_error(errors, [op](const ErrorRecord& e) { raise_acceptance_error(op, e); });
  return {accept, num, next};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                                                 const at::Tensor& target_argmax) {
  constexpr const char* op = "specdec::verify_greedy";
  const TreeShape s = check_tree_args(op, tokens, parents);
  check_argmax(op, target_argmax, tokens);
  validate_trees(op, s, parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), 0);
  const int64_t* arg = target_argmax.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.batch * s.nodes; ++i) {
    if (arg[i] < 0) {
      raise_acceptance_error(op, make_error(accept::kArgmaxRange, i / s.nodes, i % s.nodes, arg[i]));
    }
  }
  auto [accept, num, next] = verifier_outputs(s, tokens.options());
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  int32_t* acc = accept.data_ptr<int32_t>();
  int32_t* nu = num.data_ptr<int32_t>();
  int64_t* nx = next.data_ptr<int64_t>();
  at::parallel_for(0, s.batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b * s.nodes;
      nu[b] = static_cast<int32_t>(accept::greedy_walk(par + o, tok + o, arg + o, s.nodes, acc + o, nx + b));
    }
  });
  return {accept, num, next};
}

template <accept::Walk kWalk>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_walk_rows(const char* op, const TreeShape& s,
                                                             const at::Tensor& tokens, const at::Tensor& parents,
                                                             const float* target, const float* draft,
                                                             const at::Tensor& seed, const at::Tensor& offset) {
  // VectorRow for the token-wise walks (the ragged branch's vectorised policy);
  // the block and traversal walks keep the sequential policy they were proven with.
  constexpr bool kVector =
      kWalk == accept::Walk::kRejectionDraft || kWalk == accept::Walk::kRejection || kWalk == accept::Walk::kTypical;
  return run_rows<kVector>(
      op, s, tokens, parents, target, draft, seed, offset, [](auto& row) { accept::run_walk<kWalk>(row, 0.0, 0.0); },
      accept::scratch_words(kWalk, s.nodes));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rejection_sample_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                                                    const std::optional<at::Tensor>& draft_probs,
                                                                    const at::Tensor& target_probs,
                                                                    const at::Tensor& seed, const at::Tensor& offset,
                                                                    c10::string_view method,
                                                                    c10::string_view siblings) {
  constexpr const char* op = "specdec::rejection_sample";
  const RejectionRule rule = parse_rejection_rule(op, method, siblings);
  const TreeShape s = check_rejection_args(op, tokens, parents, draft_probs, target_probs, seed, offset);
  validate_trees(op, s, parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), s.vocab,
                 rule.method == accept::Method::kBlock);
  const float* target = target_probs.data_ptr<float>();
  if (!draft_probs) {  // deterministic drafts: one rule for every method (docs/ops.md)
    return run_walk_rows<accept::Walk::kRejection>(op, s, tokens, parents, target, nullptr, seed, offset);
  }
  const float* draft = draft_probs->data_ptr<float>();
  using W = accept::Walk;
  switch (accept::draft_walk(rule.method, rule.siblings)) {
    case W::kRejectionDraftWor:
      return run_walk_rows<W::kRejectionDraftWor>(op, s, tokens, parents, target, draft, seed, offset);
    case W::kBlock:
      return run_walk_rows<W::kBlock>(op, s, tokens, parents, target, draft, seed, offset);
    case W::kTraversal:
      return run_walk_rows<W::kTraversal>(op, s, tokens, parents, target, draft, seed, offset);
    case W::kTraversalWor:
      return run_walk_rows<W::kTraversalWor>(op, s, tokens, parents, target, draft, seed, offset);
    default:
      return run_walk_rows<W::kRejectionDraft>(op, s, tokens, parents, target, draft, seed, offset);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> typical_accept_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                                                  const at::Tensor& target_probs,
                                                                  double posterior_threshold, double posterior_alpha,
                                                                  const at::Tensor& seed, const at::Tensor& offset) {
  constexpr const char* op = "specdec::typical_accept";
  const TreeShape s =
      check_typical_args(op, tokens, parents, target_probs, posterior_threshold, posterior_alpha, seed, offset);
  validate_trees(op, s, parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), s.vocab);
  const double threshold = posterior_threshold, alpha = posterior_alpha;
  return run_rows(op, s, tokens, parents, target_probs.data_ptr<float>(), nullptr, seed, offset,
                  [=](auto& row) { accept::typical_walk(row, threshold, alpha); });
}

// ---------------------------------------------------------------------------
// Ragged batches: row b is the view of entries cu[b] .. cu[b + 1] - 1 (its
// nodes, parents local to it) and runs the same walk as a padded row.  Errors:
// cu_nodes first, then the lowest row with an error, that row's first (its
// tree, then its walk), as the CUDA kernels report them.
// ---------------------------------------------------------------------------

using RaggedVerdict = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

const int32_t* checked_cu(const char* op, const RaggedTreeShape& s, const at::Tensor& cu_nodes) {
  const int32_t* cu = cu_nodes.data_ptr<int32_t>();
  const ErrorRecord e = tree::check_cu_nodes(cu, s.batch, s.total);
  if (e.code != kOk) raise_cu_nodes_error(op, e, s.total);
  return cu;
}

template <class Walk>
RaggedVerdict run_ragged_rows(const char* op, const RaggedTreeShape& s, const at::Tensor& tokens,
                              const at::Tensor& parents, const at::Tensor& cu_nodes, const float* target,
                              const float* draft, const at::Tensor& seed, const at::Tensor& offset, Walk walk) {
  const int32_t* cu = checked_cu(op, s, cu_nodes);
  auto [accept, num, next] = ragged_verifier_outputs(s, tokens.options());
  std::vector<ErrorRecord> errors(s.batch);
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  const int64_t* sd = seed.data_ptr<int64_t>();
  const int64_t* of = offset.data_ptr<int64_t>();
  int32_t* acc = accept.data_ptr<int32_t>();
  int32_t* nu = num.data_ptr<int32_t>();
  int64_t* nx = next.data_ptr<int64_t>();
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = cu[b], nodes = cu[b + 1] - start;
      errors[b] = accept::check_tree(par + start, tok + start, nodes, s.vocab, b);
      if (errors[b].code != kOk) continue;
      if (static_cast<int64_t>(scratch.size()) < nodes) scratch.resize(nodes);
      const accept::RowView view(nodes, s.vocab, par + start, tok + start, target + start * s.vocab,
                                 draft ? draft + start * s.vocab : nullptr, static_cast<uint64_t>(sd[b]),
                                 static_cast<uint64_t>(of[b]), acc + start, nu + b, nx + b);
      walk_row(view, scratch.data(), &errors[b], walk);
    }
  });
  raise_first_error(errors, [&](const ErrorRecord& e) { raise_acceptance_ragged_error(op, e, cu, s.total); });
  return {accept, num, next};
}

RaggedVerdict verify_greedy_ragged_cpu(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
                                       const at::Tensor& target_argmax) {
  constexpr const char* op = "specdec::verify_greedy_ragged";
  const RaggedTreeShape s = check_ragged_tree_args(op, tokens, parents, cu_nodes);
  check_ragged_argmax(op, target_argmax, tokens);
  const int32_t* cu = checked_cu(op, s, cu_nodes);
  auto [accept, num, next] = ragged_verifier_outputs(s, tokens.options());
  std::vector<ErrorRecord> errors(s.batch);
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  const int64_t* arg = target_argmax.data_ptr<int64_t>();
  int32_t* acc = accept.data_ptr<int32_t>();
  int32_t* nu = num.data_ptr<int32_t>();
  int64_t* nx = next.data_ptr<int64_t>();
  at::parallel_for(0, s.batch, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = cu[b], nodes = cu[b + 1] - start;
      ErrorRecord e = accept::check_tree(par + start, tok + start, nodes, 0, b);
      for (int64_t i = 0; e.code == kOk && i < nodes; ++i) {
        if (arg[start + i] < 0) e = make_error(accept::kArgmaxRange, b, i, arg[start + i]);
      }
      errors[b] = e;
      if (e.code != kOk) continue;
      nu[b] =
          static_cast<int32_t>(accept::greedy_walk(par + start, tok + start, arg + start, nodes, acc + start, nx + b));
    }
  });
  raise_first_error(errors, [&](const ErrorRecord& e) { raise_acceptance_ragged_error(op, e, cu, s.total); });
  return {accept, num, next};
}

RaggedVerdict rejection_sample_ragged_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                          const at::Tensor& cu_nodes, const std::optional<at::Tensor>& draft_probs,
                                          const at::Tensor& target_probs, const at::Tensor& seed,
                                          const at::Tensor& offset) {
  constexpr const char* op = "specdec::rejection_sample_ragged";
  const RaggedTreeShape s =
      check_rejection_ragged_args(op, tokens, parents, cu_nodes, draft_probs, target_probs, seed, offset);
  const float* target = target_probs.data_ptr<float>();
  if (draft_probs) {
    return run_ragged_rows(op, s, tokens, parents, cu_nodes, target, draft_probs->data_ptr<float>(), seed, offset,
                           [](auto& row) { accept::rejection_walk<true>(row); });
  }
  return run_ragged_rows(op, s, tokens, parents, cu_nodes, target, nullptr, seed, offset,
                         [](auto& row) { accept::rejection_walk<false>(row); });
}

RaggedVerdict typical_accept_ragged_cpu(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
                                        const at::Tensor& target_probs, double posterior_threshold,
                                        double posterior_alpha, const at::Tensor& seed, const at::Tensor& offset) {
  constexpr const char* op = "specdec::typical_accept_ragged";
  const RaggedTreeShape s = check_typical_ragged_args(op, tokens, parents, cu_nodes, target_probs, posterior_threshold,
                                                      posterior_alpha, seed, offset);
  const double threshold = posterior_threshold, alpha = posterior_alpha;
  return run_ragged_rows(op, s, tokens, parents, cu_nodes, target_probs.data_ptr<float>(), nullptr, seed, offset,
                         [=](auto& row) { accept::typical_walk(row, threshold, alpha); });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("verify_greedy", &verify_greedy_cpu);
  m.impl("rejection_sample", &rejection_sample_cpu);
  m.impl("typical_accept", &typical_accept_cpu);
  m.impl("verify_greedy_ragged", &verify_greedy_ragged_cpu);
  m.impl("rejection_sample_ragged", &rejection_sample_ragged_cpu);
  m.impl("typical_accept_ragged", &typical_accept_ragged_cpu);
}

}  // namespace specdec
