// Family `tree` (build_tree): argument checks shared by the CPU and CUDA
// kernels, the raiser of its error records, and the public C++ API.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "specdec/errors.h"

namespace specdec {

// parents int32 [B, N], N >= 1, contiguous.  Returns W = ceil(N / 32).
int64_t check_build_tree_args(const char* op, const at::Tensor& parents);

// (mask int32 [B, N, W], depth int32 [B, N]) on the device of `parents`.
std::tuple<at::Tensor, at::Tensor> build_tree_outputs(const at::Tensor& parents, int64_t words);

// Raise the exception for a parent-array record (tree::ErrorCode).  The
// acceptance family reuses it for its parent codes.
[[noreturn]] void raise_tree_error(const char* op, const ErrorRecord& e);

// Ragged batches (the *_ragged ops of every family): B rows of nodes stored end
// to end, T entries in all, row b = entries cu_nodes[b] .. cu_nodes[b + 1] - 1.
struct RaggedShape {
  int64_t batch = 0;  // B = cu_nodes.size(0) - 1
  int64_t total = 0;  // T
};

// cu_nodes int32 [B + 1] (B >= 0), on `device`, contiguous, for T = `total`
// entries; B = 0 needs T = 0.  Its values are checked by the kernels
// (tree::check_cu_nodes).
RaggedShape check_cu_nodes_arg(const char* op, const at::Tensor& cu_nodes, int64_t total, const char* total_name,
                               const c10::Device& device);

// Raise the exception for a cu_nodes record (tree::RaggedCode); `total` is T.
[[noreturn]] void raise_cu_nodes_error(const char* op, const ErrorRecord& e, int64_t total);

// Public C++ API, through the dispatcher.
std::tuple<at::Tensor, at::Tensor> build_tree(const at::Tensor& parents);

}  // namespace specdec
