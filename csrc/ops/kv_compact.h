// Family `kv_compact` (kv_compact_, kv_compact_paged_): argument checks shared by
// the CPU and CUDA kernels, the raiser of its error records, and the public C++
// API (calls go through the dispatcher, like Python calls do).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "specdec/errors.h"

namespace specdec {

// What a kernel needs to know about a validated call.  Every tensor in
// `tensors` has the same shape, dtype and device, and is contiguous.
struct KvCompactPlan {
  std::vector<at::Tensor> tensors;  // caches, or k_pages followed by v_pages
  int64_t batch = 0;                // B
  int64_t width = 0;                // accept_nodes.size(1)
  int64_t capacity = 0;             // slots one sequence can address
  int64_t rows_per_seq = 1;         // contiguous: H rows of one sequence; paged: 1
  int64_t row_bytes = 0;            // bytes moved per slot and row: D*elem or H*D*elem
  int64_t slots = 0;                // contiguous: S (rows are S slots apart)
  // paged only
  bool paged = false;
  int64_t page_size = 0;
  int64_t num_pages = 0;
  int64_t max_blocks = 0;
};

KvCompactPlan check_kv_compact(const char* op, at::TensorList caches, const at::Tensor& cache_lens,
                               const at::Tensor& accept_nodes, const at::Tensor& num_accepted);

KvCompactPlan check_kv_compact_paged(const char* op, at::TensorList k_pages, at::TensorList v_pages,
                                     const at::Tensor& block_tables, const at::Tensor& cache_lens,
                                     const at::Tensor& accept_nodes, const at::Tensor& num_accepted);

// Full validation of one row's index values on the host (contiguous or paged).
ErrorRecord check_row_values(const KvCompactPlan& plan, int64_t b, const int32_t* cache_lens,
                             const int32_t* accept_nodes, const int32_t* num_accepted, const int32_t* block_tables);

// Raise the exception for a kv_compact record (kv::ErrorCode).
[[noreturn]] void raise_kv_compact_error(const char* op, const KvCompactPlan& plan, const ErrorRecord& e);

// Public C++ API, through the dispatcher.
void kv_compact_(at::TensorList caches, const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                 const at::Tensor& num_accepted);
void kv_compact_paged_(at::TensorList k_pages, at::TensorList v_pages, const at::Tensor& block_tables,
                       const at::Tensor& cache_lens, const at::Tensor& accept_nodes, const at::Tensor& num_accepted);

}  // namespace specdec
