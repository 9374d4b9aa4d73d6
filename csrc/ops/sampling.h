// Family `sampling` (sampling_probs, sampling_probs_ragged): argument checks
// shared by the CPU and CUDA kernels, the raisers of its error records, and the
// public C++ API.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "ops/tree.h"
#include "specdec/errors.h"

namespace specdec {

// logits [B, V] or [B, N, V] float32/float16/bfloat16, and per-row temperature
// float32 [B], top_k int32 [B], top_p float32 [B], min_p float32 [B] or None.
void check_sampling_args(const char* op, const at::Tensor& logits, const at::Tensor& temperature,
                         const at::Tensor& top_k, const at::Tensor& top_p,
                         const std::optional<at::Tensor>& min_p = std::nullopt);

// logits [T, V] float32/float16/bfloat16, cu_nodes int32 [B + 1], and the
// per-row parameters of check_sampling_args, [B] each.
RaggedShape check_sampling_ragged_args(const char* op, const at::Tensor& logits, const at::Tensor& cu_nodes,
                                       const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                                       const std::optional<at::Tensor>& min_p);

// Raise the exception for a sampling record (sampling::ErrorCode): `where` is
// the position, `value` the offending parameter's double bits.
[[noreturn]] void raise_sampling_error(const char* op, const ErrorRecord& e);

// The same for the ragged op, whose logit records name the entry t of the
// [T, V] logits (`where`) and its row (`row`).
[[noreturn]] void raise_sampling_ragged_error(const char* op, const ErrorRecord& e);

// Public C++ API, through the dispatcher.
at::Tensor sampling_probs(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                          const at::Tensor& top_p, const std::optional<at::Tensor>& min_p = std::nullopt);
at::Tensor sampling_probs_ragged(const at::Tensor& logits, const at::Tensor& cu_nodes, const at::Tensor& temperature,
                                 const at::Tensor& top_k, const at::Tensor& top_p,
                                 const std::optional<at::Tensor>& min_p = std::nullopt);

}  // namespace specdec
