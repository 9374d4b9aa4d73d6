// Family `attention` (tree_attention, tree_attention_paged): argument checks
// shared by the CPU and CUDA kernels, the raiser of its error records, and the
// public C++ API.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "specdec/errors.h"

namespace specdec {

// What the attention kernels need to know about a validated call.
struct AttentionShape {
  int64_t batch = 0, nodes = 0, q_heads = 0, kv_heads = 0, dim = 0;
  int64_t words = 0;     // mask words per row, ceil(N / 32)
  int64_t capacity = 0;  // slots a sequence can address: S, or max_blocks * page_size
  // paged only
  int64_t num_pages = 0, page_size = 0, max_blocks = 0;
  int64_t group() const { return q_heads / kv_heads; }
};

// q [B, N, Hq, D], caches [B, Hkv, S, D] (contiguous) or pages [P, page_size, Hkv, D]
// (paged, with block_tables int32 [B, max_blocks]); cache_lens int32 [B]; mask
// int32 [B, N, ceil(N/32)]; scale finite.  Shapes, dtypes, devices only.
AttentionShape check_tree_attention(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor* block_tables, const at::Tensor& cache_lens,
                                    const at::Tensor& mask, double scale);

// Index values of sequence b: 0 <= cache_lens[b], cache_lens[b] + N <=
// capacity, and (paged) every block holding a slot below cache_lens[b] + N a
// valid page (attention::check_row).
ErrorRecord check_attention_row(const AttentionShape& s, int64_t b, const int32_t* cache_lens,
                                const int32_t* block_tables);

// Raise the exception for an attention record (attention::ErrorCode).
[[noreturn]] void raise_attention_error(const char* op, const AttentionShape& s, const ErrorRecord& e);

// Public C++ API, through the dispatcher.
std::tuple<at::Tensor, at::Tensor> tree_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                  const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                  const at::Tensor& mask, double scale);
std::tuple<at::Tensor, at::Tensor> tree_attention_paged(const at::Tensor& q, const at::Tensor& k_pages,
                                                        const at::Tensor& v_pages, const at::Tensor& block_tables,
                                                        const at::Tensor& cache_lens, const at::Tensor& mask,
                                                        double scale);

}  // namespace specdec
