// Tree attention (tree_attention, tree_attention_paged), CUDA launches.  Both
// kernel bodies live in torch-free headers (the C++ tests run them on the host
// emulator, tests/cpp/cuda_emulator.h):
//   specdec/attention_mma_kernels.h   fp16 / bf16 on tensor cores (sm_80+);
//   specdec/attention_simt_kernels.h  fp32, the rest, and the lse merge of splits.
// Index errors are recorded per sequence (cuda/device_errors.h) and raised in
// eager mode; under CUDA graph capture an invalid sequence writes zeros.  The
// sinks' values are checked on the device too (record 0, before the
// sequences' records 1..B, the CPU kernel's order); a non-finite sink acts as
// none under capture.  The value head size may differ from the key's: such
// calls run the SIMT kernel.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "cuda/device_errors.h"
#include "cuda/static_switch.h"
#include "ops/attention.h"
#include "ops/checks.h"
#include "specdec/attention_mma_kernels.h"
#include "specdec/attention_rules.h"
#include "specdec/attention_simt_kernels.h"

namespace specdec {
namespace {

namespace simt = attention::simt;
namespace tc = attention::mma;
using kernel::DeviceCtx;

template <int kKind, int kMaxD, bool kPaged>
__global__ void __launch_bounds__(simt::kThreads) tree_attention_simt_kernel(simt::Params a) {
  simt::tree_attention_block<DeviceCtx, kKind, kMaxD, kPaged>(DeviceCtx{}, a);
}

template <int kKind>
__global__ void merge_kernel(const float* part_out, const float* part_lse, int64_t splits, int64_t rows, int64_t dim,
                             void* out, float* lse, const float* sinks, int64_t q_heads) {
  const int64_t row = blockIdx.x;  // (b * N + node) * Hq + head
  simt::merge_row<kKind>(part_out, part_lse, splits, rows, dim, row, threadIdx.x, blockDim.x, out, lse,
                         attention::sink_logit(sinks, row % q_heads));
}

// Combines the split partials into out / lse (one block per output row; `dim`
// the value head size), adding each row's sink once.
void launch_merge(at::ScalarType dtype, const float* part_out, const float* part_lse, int64_t splits, int64_t rows,
                  int64_t dim, void* out, float* lse, const float* sinks, int64_t q_heads, cudaStream_t stream) {
  SPECDEC_KIND_SWITCH(dtype, kKind, [&] {
    merge_kernel<kKind><<<rows, 128, 0, stream>>>(part_out, part_lse, splits, rows, dim, out, lse, sinks, q_heads);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The errors the kernels recorded (record 0: the sinks; 1 + b: sequence b),
// raised eagerly (one synchronisation; skipped under CUDA graph capture).
void raise_row_errors(const char* op, const AttentionShape& s, const at::Tensor& errors, cudaStream_t stream) {
  raise_device_errors(errors, stream, [&](const ErrorRecord& e) { raise_attention_error(op, s, e); });
}

// ---------------------------------------------------------------------------
// Tensor-core path (fp16 / bf16, sm_80+): the kernel body lives in
// specdec/attention_mma_kernels.h, where the host emulator of tests/cpp runs it too.
// ---------------------------------------------------------------------------
template <bool kBf16, bool kPaged, int kD>
__global__ void __launch_bounds__(32 * tc::kMaxWarps) tree_attention_mma_kernel(tc::Params p) {
  tc::tree_attention_block<DeviceCtx, kBf16, kPaged, kD>(DeviceCtx{}, p);
}

template <bool kBf16, bool kPaged, int kD>
void launch_mma(tc::Params p, const tc::Plan& pl, cudaStream_t stream) {
  auto* kernel = &tree_attention_mma_kernel<kBf16, kPaged, kD>;
  if (pl.smem > 48 * 1024) {  // opt in beyond the default (sm_80: 163 KiB, sm_90: 227 KiB)
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(pl.smem)));
  }
  const dim3 grid(static_cast<unsigned>(pl.splits * pl.q_tiles), static_cast<unsigned>(p.batch * p.kv_heads));
  kernel<<<grid, 32 * pl.warps, pl.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The tensor-core kernel runs fp16 / bf16 with D a multiple of 8 (16-byte row
// chunks) and Dv == D from 16-byte aligned storage, capacity below 2^31, on
// sm_80+ with the shared memory its tile needs (sm_86/89 have less than
// sm_80/90); returns false, launching nothing, otherwise: the SIMT kernel
// below takes the call.
bool attention_mma(const char* op, const AttentionShape& s, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor* block_tables, const at::Tensor& cache_lens,
                   const at::Tensor& mask, double scale, const float* sinks, cudaStream_t stream, at::Tensor& out,
                   at::Tensor& lse) {
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  if ((q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16) || s.dim % 8 != 0 || s.v_dim != s.dim ||
      s.capacity >= INT32_MAX || !aligned(q) || !aligned(k) || !aligned(v)) {
    return false;
  }
  const int dev = q.device().index();
  int major = 0, sms = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (major < 8) return false;
  const int64_t target_blocks = 4 * static_cast<int64_t>(sms);
  const tc::Plan pl = SPECDEC_HEAD_DIM_SWITCH(s.dim, kD, [&] {
    return tc::make_plan<kD>(s.batch, s.nodes, s.q_heads, s.kv_heads, s.dim, s.capacity, target_blocks);
  });
  if (pl.smem > static_cast<size_t>(smem_optin)) return false;
  TORCH_CHECK_VALUE(s.batch * s.kv_heads <= 65535 && pl.splits * pl.q_tiles <= INT32_MAX,
                    msg(op, "q", " is too large for one launch (B * Hkv must be <= 65535)"));
  const int64_t rows_total = s.batch * s.nodes * s.q_heads;
  at::Tensor part_out, part_lse;
  if (pl.splits > 1) {
    part_out = at::empty({pl.splits, rows_total, s.dim}, q.options().dtype(at::kFloat));
    part_lse = at::empty({pl.splits, rows_total}, q.options().dtype(at::kFloat));
  }
  at::Tensor errors = device_error_records(s.batch + 1, q.options());
  auto bits = [](const at::Tensor& t) { return static_cast<const uint16_t*>(t.data_ptr()); };
  tc::Params p{bits(q),
               bits(k),
               bits(v),
               cache_lens.data_ptr<int32_t>(),
               mask.data_ptr<int32_t>(),
               block_tables ? block_tables->data_ptr<int32_t>() : nullptr,
               static_cast<uint16_t*>(out.data_ptr()),
               lse.data_ptr<float>(),
               pl.splits > 1 ? part_out.data_ptr<float>() : nullptr,
               pl.splits > 1 ? part_lse.data_ptr<float>() : nullptr,
               record_ptr(errors) + 1,
               s.batch,
               s.nodes,
               s.q_heads,
               s.kv_heads,
               s.dim,
               s.words,
               s.capacity,
               s.page_size,
               s.max_blocks,
               s.num_pages,
               static_cast<float>(scale),
               pl.splits,
               pl.chunk,
               pl.q_tiles,
               pl.warps,
               s.window,
               s.softcap,
               sinks,
               record_ptr(errors)};
  SPECDEC_BOOL_SWITCH(q.scalar_type() == at::kBFloat16, kBf16, [&] {
    SPECDEC_BOOL_SWITCH(block_tables != nullptr, kPaged, [&] {
      SPECDEC_HEAD_DIM_SWITCH(s.dim, kD, [&] { launch_mma<kBf16, kPaged, kD>(p, pl, stream); });
    });
  });
  if (pl.splits > 1) {
    launch_merge(q.scalar_type(), p.part_out, p.part_lse, pl.splits, rows_total, s.dim, out.data_ptr(),
                 lse.data_ptr<float>(), sinks, s.q_heads, stream);
  }
  raise_row_errors(op, s, errors, stream);
  return true;
}

template <int kKind, int kMaxD, bool kPaged>
void launch_simt(const simt::Params& a, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = simt::Tile<kMaxD>::kSmem;
  static_assert(smem <= 48 * 1024, "tile exceeds the default shared memory");
  tree_attention_simt_kernel<kKind, kMaxD, kPaged><<<grid, simt::kThreads, smem, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor* block_tables,
                                                  const at::Tensor& cache_lens, const at::Tensor& mask, double scale,
                                                  int64_t window, double softcap,
                                                  const std::optional<at::Tensor>& sinks_opt) {
  const AttentionShape s =
      check_tree_attention(op, q, k, v, block_tables, cache_lens, mask, scale, window, softcap, sinks_opt);
  at::Tensor out = at::empty({s.batch, s.nodes, s.q_heads, s.v_dim}, q.options());
  at::Tensor lse = at::empty({s.batch, s.nodes, s.q_heads}, q.options().dtype(at::kFloat));
  if (s.batch == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const float* sinks = s.has_sinks ? sinks_opt->data_ptr<float>() : nullptr;
  if (attention_mma(op, s, q, k, v, block_tables, cache_lens, mask, scale, sinks, stream, out, lse)) {
    return {out, lse};
  }

  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
  const int64_t q_tiles = (s.nodes * s.group() + simt::kRowsPerTile - 1) / simt::kRowsPerTile;
  TORCH_CHECK_VALUE(s.batch * s.kv_heads <= 65535 && q_tiles <= 65535,
                    msg(op, "q", " is too large for one launch (B * Hkv and N * Hq / Hkv / 16 must be <= 65535)"));
  const int64_t rows_total = s.batch * s.nodes * s.q_heads;
  at::Tensor errors = device_error_records(s.batch + 1, q.options());
  simt::Params a{q.data_ptr(),
                 k.data_ptr(),
                 v.data_ptr(),
                 cache_lens.data_ptr<int32_t>(),
                 mask.data_ptr<int32_t>(),
                 block_tables ? block_tables->data_ptr<int32_t>() : nullptr,
                 out.data_ptr(),
                 lse.data_ptr<float>(),
                 nullptr,
                 nullptr,
                 record_ptr(errors) + 1,
                 s.batch,
                 s.nodes,
                 s.q_heads,
                 s.kv_heads,
                 s.dim,
                 s.words,
                 s.capacity,
                 s.page_size,
                 s.max_blocks,
                 s.num_pages,
                 static_cast<float>(scale),
                 1,
                 0,
                 s.v_dim,
                 s.window,
                 s.softcap,
                 sinks,
                 record_ptr(errors)};
  const int64_t target_blocks = 2 * static_cast<int64_t>(sms);
  const int64_t tile_dim = std::max(s.dim, s.v_dim);  // the SIMT tile holds K and V rows of this width
  SPECDEC_HEAD_DIM_SWITCH(tile_dim, kD, [&] { simt::plan_splits<kD>(a, q_tiles, target_blocks); });
  at::Tensor part_out, part_lse;
  if (a.splits > 1) {
    part_out = at::empty({a.splits, rows_total, s.v_dim}, q.options().dtype(at::kFloat));
    part_lse = at::empty({a.splits, rows_total}, q.options().dtype(at::kFloat));
    a.part_out = part_out.data_ptr<float>();
    a.part_lse = part_lse.data_ptr<float>();
  }
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(s.batch * s.kv_heads),
                  static_cast<unsigned>(q_tiles));
  SPECDEC_KIND_SWITCH(q.scalar_type(), kKind, [&] {
    SPECDEC_HEAD_DIM_SWITCH(tile_dim, kD, [&] {
      SPECDEC_BOOL_SWITCH(block_tables != nullptr, kPaged, [&] { launch_simt<kKind, kD, kPaged>(a, grid, stream); });
    });
  });
  if (a.splits > 1) {
    launch_merge(q.scalar_type(), a.part_out, a.part_lse, a.splits, rows_total, s.v_dim, out.data_ptr(),
                 lse.data_ptr<float>(), sinks, s.q_heads, stream);
  }
  raise_row_errors(op, s, errors, stream);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache,
                                                       const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                       const at::Tensor& mask, double scale, int64_t window,
                                                       double softcap, const std::optional<at::Tensor>& sinks) {
  return attention_cuda("specdec::tree_attention", q, k_cache, v_cache, nullptr, cache_lens, mask, scale, window,
                        softcap, sinks);
}

std::tuple<at::Tensor, at::Tensor> tree_attention_paged_cuda(const at::Tensor& q, const at::Tensor& k_pages,
                                                             const at::Tensor& v_pages, const at::Tensor& block_tables,
                                                             const at::Tensor& cache_lens, const at::Tensor& mask,
                                                             double scale, int64_t window, double softcap,
                                                             const std::optional<at::Tensor>& sinks) {
  return attention_cuda("specdec::tree_attention_paged", q, k_pages, v_pages, &block_tables, cache_lens, mask, scale,
                        window, softcap, sinks);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("tree_attention_paged", &tree_attention_paged_cuda);
}

}  // namespace specdec
