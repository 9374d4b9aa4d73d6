// Family `acceptance` (verify_greedy, rejection_sample, typical_accept):
// argument checks shared by the CPU and CUDA kernels, the raiser of its error
// records, and the public C++ API.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "specdec/acceptance_rules.h"
#include "specdec/errors.h"

namespace specdec {

struct TreeShape {
  int64_t batch = 0;  // B
  int64_t nodes = 0;  // N
  int64_t vocab = 0;  // V (0 when the op has no probabilities)
};

// tokens int64 [B, N], parents int32 [B, N], all on `device`, contiguous.
TreeShape check_tree_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents);

// probs float32 [B, N, V] matching `shape` (sets shape.vocab from the first).
void check_probs(const char* op, const char* arg, const at::Tensor& probs, TreeShape& shape, const c10::Device& device);

// seed, offset int64 [B].
void check_seed_offset(const char* op, const at::Tensor& seed, const at::Tensor& offset, const TreeShape& shape,
                       const c10::Device& device);

// target_argmax int64 [B, N] like tokens.
void check_argmax(const char* op, const at::Tensor& target_argmax, const at::Tensor& tokens);

// posterior_threshold and posterior_alpha finite and >= 0.
void check_typical_params(const char* op, double threshold, double alpha);

// Every shape/dtype/device check of rejection_sample and typical_accept.
TreeShape check_rejection_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                               const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs,
                               const at::Tensor& seed, const at::Tensor& offset);
TreeShape check_typical_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                             const at::Tensor& target_probs, double threshold, double alpha, const at::Tensor& seed,
                             const at::Tensor& offset);

// rejection_sample's method ("tokenwise", "block", "traversal") and siblings
// ("iid", "without_replacement"); anything else raises a ValueError naming the
// argument.
struct RejectionRule {
  accept::Method method = accept::Method::kTokenwise;
  accept::Siblings siblings = accept::Siblings::kIid;
};
RejectionRule parse_rejection_rule(const char* op, std::string_view method, std::string_view siblings);

// The three verifier outputs, allocated on `device`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> verifier_outputs(const TreeShape& shape,
                                                                const at::TensorOptions& device);

// Raise the exception for an acceptance record (accept::ErrorCode, and the
// parent-array codes of tree::ErrorCode).
[[noreturn]] void raise_acceptance_error(const char* op, const ErrorRecord& e);

// Ragged trees (the *_ragged verifiers): tokens int64 [T], parents int32 [T]
// (local to the row: -1 for each row's root), cu_nodes int32 [B + 1].
struct RaggedTreeShape {
  int64_t batch = 0;  // B
  int64_t total = 0;  // T
  int64_t vocab = 0;  // V (0 when the op has no probabilities)
};

RaggedTreeShape check_ragged_tree_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                                       const at::Tensor& cu_nodes);
// target_argmax int64 [T] like tokens.
void check_ragged_argmax(const char* op, const at::Tensor& target_argmax, const at::Tensor& tokens);
RaggedTreeShape check_rejection_ragged_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                                            const at::Tensor& cu_nodes, const std::optional<at::Tensor>& draft_probs,
                                            const at::Tensor& target_probs, const at::Tensor& seed,
                                            const at::Tensor& offset);
RaggedTreeShape check_typical_ragged_args(const char* op, const at::Tensor& tokens, const at::Tensor& parents,
                                          const at::Tensor& cu_nodes, const at::Tensor& target_probs, double threshold,
                                          double alpha, const at::Tensor& seed, const at::Tensor& offset);

// accept_nodes int32 [T], num_accepted int32 [B], next_token int64 [B] on `device`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ragged_verifier_outputs(const RaggedTreeShape& shape,
                                                                       const at::TensorOptions& device);

// Raise the exception for a ragged verifier's record: cu_nodes codes
// (tree::RaggedCode), or a row's record whose `where` is a node local to row
// `row`, named by its entry cu[row] + where of the flat tensors (cu: cu_nodes
// on the host).
[[noreturn]] void raise_acceptance_ragged_error(const char* op, const ErrorRecord& e, const int32_t* cu, int64_t total);

// Public C++ API, through the dispatcher.
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy(const at::Tensor& tokens, const at::Tensor& parents,
                                                             const at::Tensor& target_argmax);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rejection_sample(const at::Tensor& tokens, const at::Tensor& parents,
                                                                const std::optional<at::Tensor>& draft_probs,
                                                                const at::Tensor& target_probs, const at::Tensor& seed,
                                                                const at::Tensor& offset,
                                                                std::string_view method = "tokenwise",
                                                                std::string_view siblings = "iid");
std::tuple<at::Tensor, at::Tensor, at::Tensor> typical_accept(const at::Tensor& tokens, const at::Tensor& parents,
                                                              const at::Tensor& target_probs,
                                                              double posterior_threshold, double posterior_alpha,
                                                              const at::Tensor& seed, const at::Tensor& offset);
std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_ragged(const at::Tensor& tokens, const at::Tensor& parents,
                                                                    const at::Tensor& cu_nodes,
                                                                    const at::Tensor& target_argmax);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rejection_sample_ragged(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
    const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs, const at::Tensor& seed,
    const at::Tensor& offset);
std::tuple<at::Tensor, at::Tensor, at::Tensor> typical_accept_ragged(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes, const at::Tensor& target_probs,
    double posterior_threshold, double posterior_alpha, const at::Tensor& seed, const at::Tensor& offset);

}  // namespace specdec
