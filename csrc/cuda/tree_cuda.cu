// Tree ops, CUDA kernels.
//
// build_tree: one block per tree (the body, build_tree_block, is in
// specdec/acceptance_device.h).  An invalid tree is recorded per row and
// raised by the eager call (one synchronisation), skipped under CUDA graph
// capture; its outputs are zero masks and depths.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>

#include "cuda/eager_check.cuh"
#include "ops/acceptance.h"
#include "ops/checks.h"
#include "ops/tree.h"
#include "specdec/acceptance.h"
#include "specdec/acceptance_device.h"
#include "specdec/attention.h"
#include "specdec/attention_mma.h"
#include "specdec/attention_simt.h"

namespace specdec {
namespace {

__global__ void build_tree_kernel(const int32_t* parents, int64_t nodes, int64_t words,
                                  int32_t* mask, int32_t* depth, int64_t* errors) {
  accept::device::build_tree_block(kernel::DeviceCtx{}, parents, nodes, words, mask, depth, errors);
}

std::tuple<at::Tensor, at::Tensor> build_tree_cuda(const at::Tensor& parents) {
  constexpr const char* op = "specdec::build_tree";
  const int64_t words = check_build_tree_args(op, parents);
  auto [mask, depth] = build_tree_outputs(parents, words);
  const int64_t batch = parents.size(0), nodes = parents.size(1);
  if (batch == 0) return {mask, depth};
  const c10::cuda::CUDAGuard guard(parents.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = at::zeros({batch, 3}, parents.options().dtype(at::kLong));
  const int threads = static_cast<int>(std::min<int64_t>(128, ((words + 31) / 32) * 32));
  build_tree_kernel<<<batch, threads, accept::device::kSharedBytes, stream>>>(
      parents.data_ptr<int32_t>(), nodes, words, mask.data_ptr<int32_t>(), depth.data_ptr<int32_t>(),
      errors.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (const auto host = eager_errors(errors, stream)) {
    const int64_t* e = host->data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      if (e[3 * b] != 0) throw_accept_error(op, b, static_cast<int32_t>(e[3 * b]), e[3 * b + 1], e[3 * b + 2]);
    }
  }
  return {mask, depth};
}

// ---------------------------------------------------------------------------
// Tree attention.  Both kernel bodies live in torch-free headers (the C++
// tests run them on the host emulator, tests/cpp/cuda_emulator.h):
//   specdec/attention_mma.h   fp16 / bf16 on tensor cores (sm_80+);
//   specdec/attention_simt.h  fp32, the rest, and the lse merge of splits.
// ---------------------------------------------------------------------------
namespace simt = attention::simt;
namespace tc = attention::mma;
using kernel::DeviceCtx;

int dtype_kind(at::ScalarType t) {
  return t == at::kFloat ? simt::kF32 : t == at::kHalf ? simt::kF16 : simt::kBF16;
}

template <int kKind, int kMaxD, bool kPaged>
__global__ void __launch_bounds__(simt::kThreads) tree_attention_simt_kernel(simt::Params a) {
  simt::tree_attention_block<DeviceCtx, kKind, kMaxD, kPaged>(DeviceCtx{}, a);
}

template <int kKind>
__global__ void merge_kernel(const float* part_out, const float* part_lse, int64_t splits, int64_t rows,
                             int64_t dim, void* out, float* lse) {
  simt::merge_row<kKind>(part_out, part_lse, splits, rows, dim, blockIdx.x, threadIdx.x, blockDim.x, out, lse);
}

// Combines the split partials into out / lse (one block per output row).
void launch_merge(int kind, const float* part_out, const float* part_lse, int64_t splits, int64_t rows,
                  int64_t dim, void* out, float* lse, cudaStream_t stream) {
  if (kind == simt::kF32) {
    merge_kernel<simt::kF32><<<rows, 128, 0, stream>>>(part_out, part_lse, splits, rows, dim, out, lse);
  } else if (kind == simt::kF16) {
    merge_kernel<simt::kF16><<<rows, 128, 0, stream>>>(part_out, part_lse, splits, rows, dim, out, lse);
  } else {
    merge_kernel<simt::kBF16><<<rows, 128, 0, stream>>>(part_out, part_lse, splits, rows, dim, out, lse);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The per-sequence index errors the kernels recorded, raised eagerly (one
// synchronisation; skipped under CUDA graph capture).
void raise_row_errors(const char* op, const AttentionShape& s, const at::Tensor& errors, cudaStream_t stream) {
  if (const auto host = eager_errors(errors, stream)) {
    const int64_t* e = host->data_ptr<int64_t>();
    for (int64_t b = 0; b < s.batch; ++b) {
      if (e[3 * b] != 0) throw_attention_row_error(op, s, b, static_cast<int32_t>(e[3 * b]), e[3 * b + 1], e[3 * b + 2]);
    }
  }
}

// ---------------------------------------------------------------------------
// Tensor-core path (fp16 / bf16, sm_80+): the kernel body lives in
// specdec/attention_mma.h, where the host emulator of tests/cpp runs it too.
// ---------------------------------------------------------------------------
template <bool kBf16, bool kPaged, int kD>
__global__ void __launch_bounds__(32 * tc::kMaxWarps) tree_attention_mma_kernel(tc::Params p) {
  tc::tree_attention_block<DeviceCtx, kBf16, kPaged, kD>(DeviceCtx{}, p);
}

template <bool kBf16, bool kPaged, int kD>
void launch_mma(tc::Params p, const tc::Plan& pl, cudaStream_t stream) {
  auto* kernel = &tree_attention_mma_kernel<kBf16, kPaged, kD>;
  if (pl.smem > 48 * 1024) {  // opt in beyond the default (sm_80: 163 KiB, sm_90: 227 KiB)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(pl.smem)));
  }
  const dim3 grid(static_cast<unsigned>(pl.splits * pl.q_tiles), static_cast<unsigned>(p.batch * p.kv_heads));
  kernel<<<grid, 32 * pl.warps, pl.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The tensor-core kernel runs fp16 / bf16 with D a multiple of 8 (16-byte row
// chunks) from 16-byte aligned storage, capacity below 2^31, on sm_80+ with
// the shared memory its tile needs (sm_86/89 have less than sm_80/90); returns
// false, launching nothing, otherwise: the SIMT kernel above takes the call.
bool attention_mma(const char* op, const AttentionShape& s, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor* block_tables, const at::Tensor& cache_lens,
                   const at::Tensor& mask, double scale, cudaStream_t stream, at::Tensor& out,
                   at::Tensor& lse) {
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  if ((q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16) || s.dim % 8 != 0 ||
      s.capacity >= INT32_MAX || !aligned(q) || !aligned(k) || !aligned(v)) {
    return false;
  }
  const int dev = q.device().index();
  int major = 0, sms = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (major < 8) return false;
  const int64_t max_d = s.dim <= 64 ? 64 : s.dim <= 128 ? 128 : 256;
  const int64_t target_blocks = 4 * static_cast<int64_t>(sms);
  auto plan = [&](auto d_tag) {
    return tc::make_plan<decltype(d_tag)::value>(s.batch, s.nodes, s.q_heads, s.kv_heads, s.dim, s.capacity,
                                                 target_blocks);
  };
  const tc::Plan pl = max_d == 64    ? plan(std::integral_constant<int, 64>{})
                      : max_d == 128 ? plan(std::integral_constant<int, 128>{})
                                     : plan(std::integral_constant<int, 256>{});
  if (pl.smem > static_cast<size_t>(smem_optin)) return false;
  TORCH_CHECK_VALUE(s.batch * s.kv_heads <= 65535 && pl.splits * pl.q_tiles <= INT32_MAX,
                    msg(op, "q", " is too large for one launch (B * Hkv must be <= 65535)"));
  const int64_t rows_total = s.batch * s.nodes * s.q_heads;
  at::Tensor part_out, part_lse;
  if (pl.splits > 1) {
    part_out = at::empty({pl.splits, rows_total, s.dim}, q.options().dtype(at::kFloat));
    part_lse = at::empty({pl.splits, rows_total}, q.options().dtype(at::kFloat));
  }
  at::Tensor errors = at::zeros({s.batch, 3}, q.options().dtype(at::kLong));
  auto bits = [](const at::Tensor& t) { return static_cast<const uint16_t*>(t.data_ptr()); };
  tc::Params p{bits(q), bits(k), bits(v), cache_lens.data_ptr<int32_t>(), mask.data_ptr<int32_t>(),
               block_tables ? block_tables->data_ptr<int32_t>() : nullptr,
               static_cast<uint16_t*>(out.data_ptr()), lse.data_ptr<float>(),
               pl.splits > 1 ? part_out.data_ptr<float>() : nullptr,
               pl.splits > 1 ? part_lse.data_ptr<float>() : nullptr, errors.data_ptr<int64_t>(),
               s.batch, s.nodes, s.q_heads, s.kv_heads, s.dim, s.words, s.capacity,
               s.page_size, s.max_blocks, s.num_pages, static_cast<float>(scale),
               pl.splits, pl.chunk, pl.q_tiles, pl.warps};
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  auto by_d = [&](auto bf16_tag, auto paged_tag) {
    constexpr bool kB = decltype(bf16_tag)::value, kP = decltype(paged_tag)::value;
    if (max_d == 64) {
      launch_mma<kB, kP, 64>(p, pl, stream);
    } else if (max_d == 128) {
      launch_mma<kB, kP, 128>(p, pl, stream);
    } else {
      launch_mma<kB, kP, 256>(p, pl, stream);
    }
  };
  auto by_paged = [&](auto bf16_tag) {
    if (block_tables) {
      by_d(bf16_tag, std::true_type{});
    } else {
      by_d(bf16_tag, std::false_type{});
    }
  };
  if (bf16) {
    by_paged(std::true_type{});
  } else {
    by_paged(std::false_type{});
  }
  if (pl.splits > 1) {
    launch_merge(dtype_kind(q.scalar_type()), p.part_out, p.part_lse, pl.splits, rows_total, s.dim,
                 out.data_ptr(), lse.data_ptr<float>(), stream);
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

std::tuple<at::Tensor, at::Tensor> attention_cuda(const char* op, const at::Tensor& q,
                                                  const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor* block_tables,
                                                  const at::Tensor& cache_lens,
                                                  const at::Tensor& mask, double scale) {
  const AttentionShape s = check_tree_attention(op, q, k, v, block_tables, cache_lens, mask, scale);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({s.batch, s.nodes, s.q_heads}, q.options().dtype(at::kFloat));
  if (s.batch == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (attention_mma(op, s, q, k, v, block_tables, cache_lens, mask, scale, stream, out, lse)) return {out, lse};

  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
  const int64_t max_d = s.dim <= 64 ? 64 : s.dim <= 128 ? 128 : 256;
  const int64_t q_tiles = (s.nodes * s.group() + simt::kRowsPerTile - 1) / simt::kRowsPerTile;
  TORCH_CHECK_VALUE(s.batch * s.kv_heads <= 65535 && q_tiles <= 65535,
                    msg(op, "q", " is too large for one launch (B * Hkv and N * Hq / Hkv / 16 must be <= 65535)"));
  const int64_t rows_total = s.batch * s.nodes * s.q_heads;
  at::Tensor errors = at::zeros({s.batch, 3}, q.options().dtype(at::kLong));
  simt::Params a{q.data_ptr(), k.data_ptr(), v.data_ptr(), cache_lens.data_ptr<int32_t>(),
                 mask.data_ptr<int32_t>(), block_tables ? block_tables->data_ptr<int32_t>() : nullptr,
                 out.data_ptr(), lse.data_ptr<float>(), nullptr, nullptr, errors.data_ptr<int64_t>(),
                 s.batch, s.nodes, s.q_heads, s.kv_heads, s.dim, s.words, s.capacity,
                 s.page_size, s.max_blocks, s.num_pages, static_cast<float>(scale), 1, 0};
  const int64_t target_blocks = 2 * static_cast<int64_t>(sms);
  if (max_d == 64) {
    simt::plan_splits<64>(a, q_tiles, target_blocks);
  } else if (max_d == 128) {
    simt::plan_splits<128>(a, q_tiles, target_blocks);
  } else {
    simt::plan_splits<256>(a, q_tiles, target_blocks);
  }
  at::Tensor part_out, part_lse;
  if (a.splits > 1) {
    part_out = at::empty({a.splits, rows_total, s.dim}, q.options().dtype(at::kFloat));
    part_lse = at::empty({a.splits, rows_total}, q.options().dtype(at::kFloat));
    a.part_out = part_out.data_ptr<float>();
    a.part_lse = part_lse.data_ptr<float>();
  }
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(s.batch * s.kv_heads),
                  static_cast<unsigned>(q_tiles));
  const int kind = dtype_kind(q.scalar_type());
  auto by_paged = [&](auto kind_tag, auto d_tag) {
    constexpr int kK = decltype(kind_tag)::value, kD = decltype(d_tag)::value;
    if (block_tables) {
      launch_simt<kK, kD, true>(a, grid, stream);
    } else {
      launch_simt<kK, kD, false>(a, grid, stream);
    }
  };
  auto by_d = [&](auto kind_tag) {
    if (max_d == 64) {
      by_paged(kind_tag, std::integral_constant<int, 64>{});
    } else if (max_d == 128) {
      by_paged(kind_tag, std::integral_constant<int, 128>{});
    } else {
      by_paged(kind_tag, std::integral_constant<int, 256>{});
    }
  };
  if (kind == simt::kF32) {
    by_d(std::integral_constant<int, simt::kF32>{});
  } else if (kind == simt::kF16) {
    by_d(std::integral_constant<int, simt::kF16>{});
  } else {
    by_d(std::integral_constant<int, simt::kBF16>{});
  }
  if (a.splits > 1) {
    launch_merge(kind, a.part_out, a.part_lse, a.splits, rows_total, s.dim, out.data_ptr(), lse.data_ptr<float>(),
                 stream);
  }
  raise_row_errors(op, s, errors, stream);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache,
                                                       const at::Tensor& v_cache,
                                                       const at::Tensor& cache_lens,
                                                       const at::Tensor& mask, double scale) {
  return attention_cuda("specdec::tree_attention", q, k_cache, v_cache, nullptr, cache_lens, mask,
                        scale);
}

std::tuple<at::Tensor, at::Tensor> tree_attention_paged_cuda(
    const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
    const at::Tensor& block_tables, const at::Tensor& cache_lens, const at::Tensor& mask,
    double scale) {
  return attention_cuda("specdec::tree_attention_paged", q, k_pages, v_pages, &block_tables,
                        cache_lens, mask, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("build_tree", &build_tree_cuda);
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("tree_attention_paged", &tree_attention_paged_cuda);
}

}  // namespace specdec
