// Acceptance sampling, CPU kernels: the shared walks of specdec/acceptance_rules.h
// (accept::run_walk) over a row policy whose vocabulary collectives are plain
// loops, parallel over rows.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "ops/acceptance.h"
#include "ops/checks.h"
#include "specdec/acceptance_rules.h"
#include "specdec/philox.h"

namespace specdec {
namespace {

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
template <class Walk>
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
      accept::SequentialRow row(view, scratch.data(), &errors[b]);
      walk(row);
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
  return run_rows(
      op, s, tokens, parents, target, draft, seed, offset,
      [](accept::SequentialRow& row) { accept::run_walk<kWalk>(row, 0.0, 0.0); },
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
                  [=](accept::SequentialRow& row) { accept::typical_walk(row, threshold, alpha); });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("verify_greedy", &verify_greedy_cpu);
  m.impl("rejection_sample", &rejection_sample_cpu);
  m.impl("typical_accept", &typical_accept_cpu);
}

}  // namespace specdec
