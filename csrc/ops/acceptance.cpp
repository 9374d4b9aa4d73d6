#include "ops/acceptance.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include <cmath>

#include "ops/checks.h"
#include "ops/tree.h"
#include "specdec/acceptance_rules.h"

namespace specdec {

TreeShape check_tree_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents) {
  check_defined(op, {{"tokens", &tokens}, {"parents", &parents}});
  check_dim(op, "tokens", tokens, 2, "[B, N]");
  check_dim(op, "parents", parents, 2, "[B, N]");
  TORCH_CHECK_VALUE(parents.sizes().equals(tokens.sizes()),
                    msg(op, "parents", " must have the shape of tokens ", shape_str(tokens.sizes()), ", got ",
                        shape_str(parents.sizes())));
  TORCH_CHECK_VALUE(tokens.size(1) >= 1, msg(op, "tokens", " must hold at least the root node (N >= 1)"));
  check_dtype(op, "tokens", tokens, at::kLong);
  check_dtype(op, "parents", parents, at::kInt);
  check_device(op, "parents", parents, tokens.device());
  check_contiguous(op, "tokens", tokens);
  check_contiguous(op, "parents", parents);
  return TreeShape{tokens.size(0), tokens.size(1), 0};
}

void check_probs(const char* op, const char* arg, const at::Tensor& probs, TreeShape& shape,
                 const c10::Device& device) {
  check_defined(op, {{arg, &probs}});
  check_dim(op, arg, probs, 3, "[B, N, V]");
  check_size(op, arg, probs, 0, shape.batch, "B (tokens.size(0))");
  check_size(op, arg, probs, 1, shape.nodes, "N (tokens.size(1))");
  if (shape.vocab == 0) {
    TORCH_CHECK_VALUE(probs.size(2) >= 1, msg(op, arg, " must have a vocabulary of at least 1"));
    shape.vocab = probs.size(2);
  } else {
    check_size(op, arg, probs, 2, shape.vocab, "V (target_probs.size(2))");
  }
  check_dtype(op, arg, probs, at::kFloat);
  check_device(op, arg, probs, device);
  check_contiguous(op, arg, probs);
}

void check_seed_offset(const char* op, const at::Tensor& seed, const at::Tensor& offset, const TreeShape& shape,
                       const c10::Device& device) {
  check_defined(op, {{"seed", &seed}, {"offset", &offset}});
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"seed", &seed},
                         std::pair<const char*, const at::Tensor*>{"offset", &offset}}) {
    check_dim(op, name, *t, 1, "[B]");
    check_size(op, name, *t, 0, shape.batch, "B (tokens.size(0))");
    check_dtype(op, name, *t, at::kLong);
    check_device(op, name, *t, device);
    check_contiguous(op, name, *t);
  }
}

void check_argmax(const char* op, const at::Tensor& target_argmax, const at::Tensor& tokens) {
  check_defined(op, {{"target_argmax", &target_argmax}});
  TORCH_CHECK_VALUE(target_argmax.sizes().equals(tokens.sizes()),
                    msg(op, "target_argmax", " must have the shape of tokens ", shape_str(tokens.sizes()), ", got ",
                        shape_str(target_argmax.sizes())));
  check_dtype(op, "target_argmax", target_argmax, at::kLong);
  check_device(op, "target_argmax", target_argmax, tokens.device());
  check_contiguous(op, "target_argmax", target_argmax);
}

void check_typical_params(const char* op, double threshold, double alpha) {
  TORCH_CHECK_VALUE(std::isfinite(threshold) && threshold >= 0.0,
                    msg(op, "posterior_threshold", " must be finite and >= 0, got ", threshold));
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0.0,
                    msg(op, "posterior_alpha", " must be finite and >= 0, got ", alpha));
}

TreeShape check_rejection_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                               const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs,
                               const at::Tensor& seed, const at::Tensor& offset) {
  TreeShape s = check_tree_args(op, tokens, parents);
  check_probs(op, "target_probs", target_probs, s, tokens.device());
  if (draft_probs) check_probs(op, "draft_probs", *draft_probs, s, tokens.device());
  check_seed_offset(op, seed, offset, s, tokens.device());
  return s;
}

TreeShape check_typical_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                             const at::Tensor& target_probs, double threshold, double alpha, const at::Tensor& seed,
                             const at::Tensor& offset) {
  TreeShape s = check_tree_args(op, tokens, parents);
  check_probs(op, "target_probs", target_probs, s, tokens.device());
  check_seed_offset(op, seed, offset, s, tokens.device());
  check_typical_params(op, threshold, alpha);
  return s;
}

RejectionRule parse_rejection_rule(const char* op, std::string_view method, std::string_view siblings) {
  RejectionRule r;
  if (method == "tokenwise") {
    r.method = accept::Method::kTokenwise;
  } else if (method == "block") {
    r.method = accept::Method::kBlock;
  } else if (method == "traversal") {
    r.method = accept::Method::kTraversal;
  } else {
    TORCH_CHECK_VALUE(false, msg(op, "method", " must be 'tokenwise', 'block' or 'traversal', got '", method, "'"));
  }
  if (siblings == "iid") {
    r.siblings = accept::Siblings::kIid;
  } else if (siblings == "without_replacement") {
    r.siblings = accept::Siblings::kWithoutReplacement;
  } else {
    TORCH_CHECK_VALUE(false, msg(op, "siblings", " must be 'iid' or 'without_replacement', got '", siblings, "'"));
  }
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verifier_outputs(const TreeShape& shape, const at::TensorOptions& opts) {
  return {at::empty({shape.batch, shape.nodes}, opts.dtype(at::kInt)), at::empty({shape.batch}, opts.dtype(at::kInt)),
          at::empty({shape.batch}, opts.dtype(at::kLong))};
}

void raise_acceptance_error(const char* op, const ErrorRecord& e) {
  const int64_t b = e.row, where = e.where, value = e.value;
  switch (e.code) {
    case tree::kParentRoot:
    case tree::kParentRange:
      raise_tree_error(op, e);
    case accept::kTokenRange:
      TORCH_CHECK_INDEX(false,
                        msg(op, "tokens", "[", b, ", ", where, "] = ", value, " is outside the vocabulary [0, V)"));
    case accept::kArgmaxRange:
      TORCH_CHECK_INDEX(false, msg(op, "target_argmax", "[", b, ", ", where, "] = ", value, " is negative"));
    case accept::kProbInvalid:
      TORCH_CHECK_VALUE(false,
                        msg(op, "target_probs", "[", b, ", ", where, ", ", value, "] is NaN, infinite or negative"));
    case accept::kDraftProbInvalid:
      TORCH_CHECK_VALUE(false,
                        msg(op, "draft_probs", "[", b, ", ", where, ", ", value, "] is NaN, infinite or negative"));
    case accept::kNotChain:
      TORCH_CHECK_VALUE(false, msg(op, "parents", "[", b, ", ", where, "] = ", value,
                                   ": method='block' verifies chains only (parents[b, i] = i - 1); use "
                                   "method='traversal' for trees"));
    case accept::kNoMass:
      TORCH_CHECK_VALUE(false,
                        msg(op, "target_probs", "[", b, ", ", where, "] has no probability mass to sample from"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown validation code ", e.code));
  }
}

// ---------------------------------------------------------------------------
// Ragged trees.
// ---------------------------------------------------------------------------

RaggedTreeShape check_ragged_tree_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                                       const at::Tensor& cu_nodes) {
  check_defined(op, {{"tokens", &tokens}, {"parents", &parents}, {"cu_nodes", &cu_nodes}});
  check_dim(op, "tokens", tokens, 1, "[T]");
  check_dim(op, "parents", parents, 1, "[T]");
  TORCH_CHECK_VALUE(parents.sizes().equals(tokens.sizes()),
                    msg(op, "parents", " must have the shape of tokens ", shape_str(tokens.sizes()), ", got ",
                        shape_str(parents.sizes())));
  check_dtype(op, "tokens", tokens, at::kLong);
  check_dtype(op, "parents", parents, at::kInt);
  check_device(op, "parents", parents, tokens.device());
  check_contiguous(op, "tokens", tokens);
  check_contiguous(op, "parents", parents);
  const RaggedShape r = check_cu_nodes_arg(op, cu_nodes, tokens.size(0), "tokens", tokens.device());
  return RaggedTreeShape{r.batch, r.total, 0};
}

namespace {

// probs float32 [T, V] matching `shape` (sets shape.vocab from the first).
void check_ragged_probs(const char* op, const char* arg, const at::Tensor& probs, RaggedTreeShape& shape,
                        const c10::Device& device) {
  check_defined(op, {{arg, &probs}});
  check_dim(op, arg, probs, 2, "[T, V]");
  check_size(op, arg, probs, 0, shape.total, "T (tokens.size(0))");
  if (shape.vocab == 0) {
    TORCH_CHECK_VALUE(probs.size(1) >= 1, msg(op, arg, " must have a vocabulary of at least 1"));
    shape.vocab = probs.size(1);
  } else {
    check_size(op, arg, probs, 1, shape.vocab, "V (target_probs.size(1))");
  }
  check_dtype(op, arg, probs, at::kFloat);
  check_device(op, arg, probs, device);
  check_contiguous(op, arg, probs);
}

void check_ragged_seed_offset(const char* op, const at::Tensor& seed, const at::Tensor& offset,
                              const RaggedTreeShape& shape, const c10::Device& device) {
  check_defined(op, {{"seed", &seed}, {"offset", &offset}});
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"seed", &seed},
                         std::pair<const char*, const at::Tensor*>{"offset", &offset}}) {
    check_dim(op, name, *t, 1, "[B]");
    check_size(op, name, *t, 0, shape.batch, "B (cu_nodes.size(0) - 1)");
    check_dtype(op, name, *t, at::kLong);
    check_device(op, name, *t, device);
    check_contiguous(op, name, *t);
  }
}

}  // namespace

void check_ragged_argmax(const char* op, const at::Tensor& target_argmax, const at::Tensor& tokens) {
  check_defined(op, {{"target_argmax", &target_argmax}});
  TORCH_CHECK_VALUE(target_argmax.sizes().equals(tokens.sizes()),
                    msg(op, "target_argmax", " must have the shape of tokens ", shape_str(tokens.sizes()), ", got ",
                        shape_str(target_argmax.sizes())));
  check_dtype(op, "target_argmax", target_argmax, at::kLong);
  check_device(op, "target_argmax", target_argmax, tokens.device());
  check_contiguous(op, "target_argmax", target_argmax);
}

RaggedTreeShape check_rejection_ragged_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                                            const at::Tensor& cu_nodes, const std::optional<at::Tensor>& draft_probs,
                                            const at::Tensor& target_probs, const at::Tensor& seed,
                                            const at::Tensor& offset) {
  RaggedTreeShape s = check_ragged_tree_args(op, tokens, parents, cu_nodes);
  check_ragged_probs(op, "target_probs", target_probs, s, tokens.device());
  if (draft_probs) check_ragged_probs(op, "draft_probs", *draft_probs, s, tokens.device());
  check_ragged_seed_offset(op, seed, offset, s, tokens.device());
  return s;
}

RaggedTreeShape check_typical_ragged_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                                          const at::Tensor& cu_nodes, const at::Tensor& target_probs, double threshold,
                                          double alpha, const at::Tensor& seed, const at::Tensor& offset) {
  RaggedTreeShape s = check_ragged_tree_args(op, tokens, parents, cu_nodes);
  check_ragged_probs(op, "target_probs", target_probs, s, tokens.device());
  check_ragged_seed_offset(op, seed, offset, s, tokens.device());
  check_typical_params(op, threshold, alpha);
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ragged_verifier_outputs(const RaggedTreeShape& shape,
                                                                       const at::TensorOptions& opts) {
  return {at::empty({shape.total}, opts.dtype(at::kInt)), at::empty({shape.batch}, opts.dtype(at::kInt)),
          at::empty({shape.batch}, opts.dtype(at::kLong))};
}

void raise_acceptance_ragged_error(const char* op, const ErrorRecord& e, const int32_t* cu, int64_t total) {
  if (e.code >= tree::kCuFirst) raise_cu_nodes_error(op, e, total);
  const int64_t b = e.row, node = e.where, entry = cu[b] + e.where, value = e.value;
  switch (e.code) {
    case tree::kParentRoot:
      TORCH_CHECK_VALUE(false, msg(op, "parents", "[", entry, "] = ", value, ": entry ", entry,
                                   " is the root (node 0) of row ", b, ", whose parent must be -1"));
    case tree::kParentRange:
      TORCH_CHECK_VALUE(false, msg(op, "parents", "[", entry, "] = ", value, " is outside [0, ", node, "): node ", node,
                                   " of row ", b, " must have a parent before it (parents are local to the row)"));
    case accept::kTokenRange:
      TORCH_CHECK_INDEX(false, msg(op, "tokens", "[", entry, "] = ", value, " is outside the vocabulary [0, V)"));
    case accept::kArgmaxRange:
      TORCH_CHECK_INDEX(false, msg(op, "target_argmax", "[", entry, "] = ", value, " is negative"));
    case accept::kProbInvalid:
      TORCH_CHECK_VALUE(false, msg(op, "target_probs", "[", entry, ", ", value, "] is NaN, infinite or negative"));
    case accept::kDraftProbInvalid:
      TORCH_CHECK_VALUE(false, msg(op, "draft_probs", "[", entry, ", ", value, "] is NaN, infinite or negative"));
    case accept::kNoMass:
      TORCH_CHECK_VALUE(false, msg(op, "target_probs", "[", entry, "] has no probability mass to sample from"));
    default:
      TORCH_CHECK(false, msg(op, "internal", ": unknown validation code ", e.code));
  }
}

using Verdict = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Verdict verify_greedy(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_argmax) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::verify_greedy", "")
                       .typed<Verdict(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(tokens, parents, target_argmax);
}

Verdict rejection_sample(const at::Tensor& tokens, const at::Tensor& parents,
                         const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs,
                         const at::Tensor& seed, const at::Tensor& offset, std::string_view method,
                         std::string_view siblings) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("specdec::rejection_sample", "")
          .typed<Verdict(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view)>();
  return op.call(tokens, parents, draft_probs, target_probs, seed, offset, method, siblings);
}

Verdict typical_accept(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_probs,
                       double posterior_threshold, double posterior_alpha, const at::Tensor& seed,
                       const at::Tensor& offset) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::typical_accept", "")
                       .typed<Verdict(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                                      const at::Tensor&, const at::Tensor&)>();
  return op.call(tokens, parents, target_probs, posterior_threshold, posterior_alpha, seed, offset);
}

Verdict verify_greedy_ragged(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
                             const at::Tensor& target_argmax) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::verify_greedy_ragged", "")
                       .typed<Verdict(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(tokens, parents, cu_nodes, target_argmax);
}

Verdict rejection_sample_ragged(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
                                const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs,
                                const at::Tensor& seed, const at::Tensor& offset) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("specdec::rejection_sample_ragged", "")
          .typed<Verdict(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(tokens, parents, cu_nodes, draft_probs, target_probs, seed, offset);
}

Verdict typical_accept_ragged(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
                              const at::Tensor& target_probs, double posterior_threshold, double posterior_alpha,
                              const at::Tensor& seed, const at::Tensor& offset) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("specdec::typical_accept_ragged", "")
                       .typed<Verdict(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      double, double, const at::Tensor&, const at::Tensor&)>();
  return op.call(tokens, parents, cu_nodes, target_probs, posterior_threshold, posterior_alpha, seed, offset);
}

}  // namespace specdec
