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

// Public C++ API, through the dispatcher.
std::tuple<at::Tensor, at::Tensor> build_tree(const at::Tensor& parents);

}  // namespace specdec
