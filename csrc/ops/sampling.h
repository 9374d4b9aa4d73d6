// Family `sampling` (sampling_probs): argument checks shared by the CPU and CUDA
// kernels, the raiser of its error records, and the public C++ API.
#pragma once

#include <ATen/core/Tensor.h>

#include "specdec/errors.h"

namespace specdec {

// logits [B, V] or [B, N, V] float32/float16/bfloat16, and per-row temperature
// float32 [B], top_k int32 [B], top_p float32 [B].
void check_sampling_args(const char* op, const at::Tensor& logits, const at::Tensor& temperature,
                         const at::Tensor& top_k, const at::Tensor& top_p);

// Raise the exception for a sampling record (sampling::ErrorCode): `where` is
// the position, `value` the offending parameter's double bits.
[[noreturn]] void raise_sampling_error(const char* op, const ErrorRecord& e);

// Public C++ API, through the dispatcher.
at::Tensor sampling_probs(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                          const at::Tensor& top_p);

}  // namespace specdec
