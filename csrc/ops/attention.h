// Family `attention` (tree_attention, tree_attention_paged): argument checks
// shared by the CPU and CUDA kernels, the raiser of its error records, and the
// public C++ API.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "specdec/errors.h"

namespace specdec {

// What the attention kernels need to know about a validated call.
struct AttentionShape {
  int64_t batch = 0, nodes = 0, q_heads = 0, kv_heads = 0, dim = 0;
  int64_t v_dim = 0;     // the value head size Dv (out is [B, N, Hq, Dv]); may differ from dim (Dk)
  int64_t words = 0;     // mask words per row, ceil(N / 32)
  int64_t capacity = 0;  // slots a sequence can address: S, or max_blocks * page_size
  // paged only
  int64_t num_pages = 0, page_size = 0, max_blocks = 0;
  // the optional features (docs/ops.md): 0 / 0 / false disable them
  int64_t window = 0;
  float softcap = 0.0f;
  bool has_sinks = false;
  int64_t group() const { return q_heads / kv_heads; }
};

// q [B, N, Hq, Dk], caches k [B, Hkv, S, Dk] and v [B, Hkv, S, Dv] (contiguous)
// or pages [P, page_size, Hkv, Dk / Dv] (paged, with block_tables int32
// [B, max_blocks]); cache_lens int32 [B]; mask int32 [B, N, ceil(N/32)]; scale
// finite and within float32; window >= 0; softcap 0 or a normal float32 > 0;
// sinks float32 [Hq] or none.  Shapes, dtypes, devices and the scalars only:
// the values of sinks are checked by the kernels (attention::check_sinks).
AttentionShape check_tree_attention(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor* block_tables, const at::Tensor& cache_lens,
                                    const at::Tensor& mask, double scale, int64_t window, double softcap,
                                    const std::optional<at::Tensor>& sinks);

// Index values of sequence b: 0 <= cache_lens[b], cache_lens[b] + N <=
// capacity, and (paged) every block holding a slot below cache_lens[b] + N a
// valid page (attention::check_row).
ErrorRecord check_attention_row(const AttentionShape& s, int64_t b, const int32_t* cache_lens,
                                const int32_t* block_tables);

// Raise the exception for an attention record (attention::ErrorCode).
[[noreturn]] void raise_attention_error(const char* op, const AttentionShape& s, const ErrorRecord& e);

// Public C++ API, through the dispatcher.  window 0, softcap 0 and no sinks
// are plain attention (docs/ops.md).
std::tuple<at::Tensor, at::Tensor> tree_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                  const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                  const at::Tensor& mask, double scale, int64_t window = 0,
                                                  double softcap = 0.0,
                                                  const std::optional<at::Tensor>& sinks = std::nullopt);
std::tuple<at::Tensor, at::Tensor> tree_attention_paged(const at::Tensor& q, const at::Tensor& k_pages,
                                                        const at::Tensor& v_pages, const at::Tensor& block_tables,
                                                        const at::Tensor& cache_lens, const at::Tensor& mask,
                                                        double scale, int64_t window = 0, double softcap = 0.0,
                                                        const std::optional<at::Tensor>& sinks = std::nullopt);

}  // namespace specdec
