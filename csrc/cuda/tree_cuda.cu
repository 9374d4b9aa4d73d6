// Tree ops, CUDA kernels.
//
// build_tree: one block per tree.  Thread 0 validates the parent array; then
// each thread owns word columns of the mask: row i's word w reads only the
// parent's word w, written earlier by the same thread, so no barrier is
// needed between rows.  An invalid tree is recorded per row and raised by the
// eager call (one synchronisation), skipped under CUDA graph capture; its
// outputs are zero masks and depths.
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
#include "ops/dispatch.h"
#include "ops/tree.h"
#include "specdec/acceptance.h"
#include "specdec/attention.h"
#include "specdec/attention_mma.h"

namespace specdec {
namespace {

__global__ void build_tree_kernel(const int32_t* parents, int64_t nodes, int64_t words,
                                  int32_t* mask, int32_t* depth, int64_t* errors) {
  __shared__ int ok;
  const int64_t b = blockIdx.x;
  const int32_t* row = parents + b * nodes;
  int32_t* m = mask + b * nodes * words;
  if (threadIdx.x == 0) {
    int64_t where = 0, value = 0;
    const int32_t code = accept::check_parents(row, nodes, &where, &value);
    ok = code == accept::kOk;
    if (!ok) {
      errors[3 * b] = code;
      errors[3 * b + 1] = where;
      errors[3 * b + 2] = value;
    }
  }
  __syncthreads();
  if (!ok) {
    for (int64_t i = threadIdx.x; i < nodes * words; i += blockDim.x) m[i] = 0;
    for (int64_t i = threadIdx.x; i < nodes; i += blockDim.x) depth[b * nodes + i] = 0;
    return;
  }
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) accept::tree_mask_column(row, nodes, words, w, m);
  if (threadIdx.x == 0) accept::tree_depths(row, nodes, depth + b * nodes);
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
  build_tree_kernel<<<batch, threads, 0, stream>>>(parents.data_ptr<int32_t>(), nodes, words,
                                                   mask.data_ptr<int32_t>(), depth.data_ptr<int32_t>(),
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
// Tree attention, SIMT kernel: fp32, and the fp16 / bf16 calls the tensor-core
// kernel below cannot take (see attention_mma).
//
// Block (split, b * Hkv + h, query tile): 16 query rows of KV head h's GQA
// group (row r = node * G + g) against the split's key range, K/V tiles staged
// in shared memory once for all 16 rows; 8 threads per row share its scores,
// softmax statistics and D / 8 output columns.  fp32 throughout.  With one
// split the block writes the result; otherwise normalised partials and their
// lse go to a workspace that merge_kernel combines.
// ---------------------------------------------------------------------------

constexpr int kAttnThreads = 128;
constexpr int kRowsPerTile = 16;
constexpr int kThreadsPerRow = kAttnThreads / kRowsPerTile;  // 8

template <int kMaxD>
struct AttnTile {
  static constexpr int kKeys = kMaxD >= 256 ? 8 : 4096 / kMaxD;  // keys per shared tile
  static constexpr int kStride = kMaxD + 1;                      // padded shared row
  static constexpr int kCols = kMaxD / kThreadsPerRow;           // output columns per thread
  static constexpr size_t kSmem =
      sizeof(float) * ((kRowsPerTile + 2 * kKeys) * kStride + kRowsPerTile * kKeys);
};

struct AttnArgs {
  int64_t batch, nodes, q_heads, kv_heads, dim, words, capacity;
  int64_t page_size, max_blocks, num_pages;
  float scale;
  int64_t splits, chunk;
};

template <typename scalar_t, int kMaxD, bool kPaged>
__global__ void __launch_bounds__(kAttnThreads)
    tree_attention_kernel(const scalar_t* q, const scalar_t* k, const scalar_t* v,
                          const int32_t* lens, const int32_t* mask, const int32_t* tables,
                          AttnArgs a, scalar_t* out, float* lse, float* part_out, float* part_lse,
                          int64_t* errors) {
  using T = AttnTile<kMaxD>;
  extern __shared__ float smem[];
  float* sQ = smem;
  float* sK = sQ + kRowsPerTile * T::kStride;
  float* sV = sK + T::kKeys * T::kStride;
  float* sP = sV + T::kKeys * T::kStride;
  __shared__ int ok;

  const int64_t split = blockIdx.x;
  const int64_t b = blockIdx.y / a.kv_heads, h = blockIdx.y % a.kv_heads;
  const int64_t G = a.q_heads / a.kv_heads, rows = a.nodes * G, D = a.dim;
  const int rr = threadIdx.x / kThreadsPerRow, lane = threadIdx.x % kThreadsPerRow;
  const int64_t r = blockIdx.z * kRowsPerTile + rr;
  const bool row_valid = r < rows;
  const int64_t node = row_valid ? r / G : 0, head = h * G + (row_valid ? r % G : 0);
  const int64_t length = lens[b];
  const int32_t* table = kPaged ? tables + b * a.max_blocks : nullptr;

  if (threadIdx.x == 0) {
    int64_t where = 0, value = 0;
    const int32_t code = attention::check_row(length, a.nodes, a.capacity, table, a.page_size,
                                              a.num_pages, &where, &value);
    ok = code == attention::kOk;
    if (!ok && split == 0 && h == 0 && blockIdx.z == 0) {
      errors[3 * b] = code;
      errors[3 * b + 1] = where;
      errors[3 * b + 2] = value;
    }
  }
  __syncthreads();

  const int64_t total = ok ? length + a.nodes : 0;
  const int64_t begin = split * a.chunk, end = min(total, begin + a.chunk);
  for (int64_t idx = threadIdx.x; idx < kRowsPerTile * kMaxD; idx += kAttnThreads) {
    const int64_t qr = idx / kMaxD, d = idx % kMaxD, rq = blockIdx.z * kRowsPerTile + qr;
    float val = 0.0f;
    if (rq < rows && d < D) {
      val = static_cast<float>(q[((b * a.nodes + rq / G) * a.q_heads + h * G + rq % G) * D + d]) * a.scale;
    }
    sQ[qr * T::kStride + d] = val;
  }
  const int32_t* mrow = mask + (b * a.nodes + node) * a.words;
  float acc[T::kCols];
#pragma unroll
  for (int e = 0; e < T::kCols; ++e) acc[e] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;
  __syncthreads();

  for (int64_t t0 = begin; t0 < end; t0 += T::kKeys) {
    for (int64_t idx = threadIdx.x; idx < T::kKeys * kMaxD; idx += kAttnThreads) {
      const int64_t kk = idx / kMaxD, d = idx % kMaxD, slot = t0 + kk;
      float kv = 0.0f, vv = 0.0f;
      if (slot < end && d < D) {
        int64_t off;
        if constexpr (kPaged) {
          const int64_t page = table[slot / a.page_size];
          off = ((page * a.page_size + slot % a.page_size) * a.kv_heads + h) * D + d;
        } else {
          off = ((b * a.kv_heads + h) * a.capacity + slot) * D + d;
        }
        kv = static_cast<float>(k[off]);
        vv = static_cast<float>(v[off]);
      }
      sK[kk * T::kStride + d] = kv;
      sV[kk * T::kStride + d] = vv;
    }
    __syncthreads();
    constexpr int kPer = (T::kKeys + kThreadsPerRow - 1) / kThreadsPerRow;
    float sc[kPer];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int kk = lane + j * kThreadsPerRow;
      const int64_t slot = t0 + kk;
      float x = -INFINITY;
      if (kk < T::kKeys && row_valid && slot < end && attention::visible(slot, length, mrow)) {
        x = 0.0f;
        for (int64_t d = 0; d < D; ++d) x += sQ[rr * T::kStride + d] * sK[kk * T::kStride + d];
      }
      sc[j] = x;
      tile_max = fmaxf(tile_max, x);
    }
    for (int o = kThreadsPerRow / 2; o > 0; o >>= 1) {
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
    }
    const float m_new = fmaxf(m_run, tile_max);
    float alpha = 1.0f, psum = 0.0f;
    if (m_new != -INFINITY) {
      alpha = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        sc[j] = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - m_new);
        psum += sc[j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < kPer; ++j) sc[j] = 0.0f;
    }
    for (int o = kThreadsPerRow / 2; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
    l_run = l_run * alpha + psum;
    m_run = m_new;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int kk = lane + j * kThreadsPerRow;
      if (kk < T::kKeys) sP[rr * T::kKeys + kk] = sc[j];
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < T::kCols; ++e) {
      const int d = lane * T::kCols + e;
      float x = acc[e] * alpha;
      for (int kk = 0; kk < T::kKeys; ++kk) x += sP[rr * T::kKeys + kk] * sV[kk * T::kStride + d];
      acc[e] = x;
    }
    __syncthreads();
  }

  if (!row_valid) return;
  const int64_t out_row = (b * a.nodes + node) * a.q_heads + head;
  const float inv = l_run > 0.0f ? 1.0f / l_run : 0.0f;
  const float row_lse = l_run > 0.0f ? m_run + logf(l_run) : -INFINITY;
  if (a.splits == 1) {
#pragma unroll
    for (int e = 0; e < T::kCols; ++e) {
      const int64_t d = lane * T::kCols + e;
      if (d < D) out[out_row * D + d] = static_cast<scalar_t>(acc[e] * inv);
    }
    if (lane == 0) lse[out_row] = row_lse;
  } else {
    const int64_t part_row = split * a.batch * a.nodes * a.q_heads + out_row;
#pragma unroll
    for (int e = 0; e < T::kCols; ++e) {
      const int64_t d = lane * T::kCols + e;
      if (d < D) part_out[part_row * D + d] = acc[e] * inv;
    }
    if (lane == 0) part_lse[part_row] = row_lse;
  }
}

// out = sum_s exp(lse_s - lse) * out_s, lse = log(sum_s exp(lse_s)).
template <typename scalar_t>
__global__ void merge_kernel(const float* part_out, const float* part_lse, int64_t splits,
                             int64_t rows, int64_t dim, scalar_t* out, float* lse) {
  const int64_t row = blockIdx.x;
  float m = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) m = fmaxf(m, part_lse[s * rows + row]);
  float weight_sum = 0.0f;
  for (int64_t s = 0; s < splits; ++s) {
    const float ls = part_lse[s * rows + row];
    weight_sum += ls == -INFINITY ? 0.0f : expf(ls - m);
  }
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    float x = 0.0f;
    if (m != -INFINITY) {
      for (int64_t s = 0; s < splits; ++s) {
        const float ls = part_lse[s * rows + row];
        if (ls != -INFINITY) x += expf(ls - m) * part_out[(s * rows + row) * dim + d];
      }
      x /= weight_sum;
    }
    out[row * dim + d] = static_cast<scalar_t>(x);
  }
  if (threadIdx.x == 0) lse[row] = m == -INFINITY ? -INFINITY : m + logf(weight_sum);
}

template <typename scalar_t, int kMaxD, bool kPaged>
void launch_attention(const AttnArgs& a, dim3 grid, const scalar_t* q, const scalar_t* k,
                      const scalar_t* v, const int32_t* lens, const int32_t* mask,
                      const int32_t* tables, scalar_t* out, float* lse, float* part_out,
                      float* part_lse, int64_t* errors, cudaStream_t stream) {
  constexpr size_t smem = AttnTile<kMaxD>::kSmem;
  static_assert(smem <= 48 * 1024, "tile exceeds the default shared memory");
  tree_attention_kernel<scalar_t, kMaxD, kPaged><<<grid, kAttnThreads, smem, stream>>>(
      q, k, v, lens, mask, tables, a, out, lse, part_out, part_lse, errors);
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
namespace tc = attention::mma;

template <bool kBf16, bool kPaged, int kD>
__global__ void __launch_bounds__(32 * tc::kMaxWarps) tree_attention_mma_kernel(tc::Params p) {
  tc::tree_attention_block<tc::DeviceCtx, kBf16, kPaged, kD>(tc::DeviceCtx{}, p);
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
    SPECDEC_DISPATCH_KV_TYPES(q.scalar_type(), "tree_attention", [&] {
      merge_kernel<scalar_t><<<rows_total, 128, 0, stream>>>(p.part_out, p.part_lse, pl.splits, rows_total,
                                                             s.dim, out.data_ptr<scalar_t>(),
                                                             lse.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  raise_row_errors(op, s, errors, stream);
  return true;
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
  const int64_t keys = max_d >= 256 ? 8 : 4096 / max_d;
  const int64_t q_tiles = (s.nodes * s.group() + kRowsPerTile - 1) / kRowsPerTile;
  const int64_t base = s.batch * s.kv_heads * q_tiles;
  // Split the keys (up to the cache capacity: cache_lens stays on the device)
  // so that about two blocks per SM are busy, keeping the workspace bounded.
  const int64_t rows_total = s.batch * s.nodes * s.q_heads;
  const int64_t max_by_work = std::max<int64_t>(1, (s.capacity + 4 * keys - 1) / (4 * keys));
  const int64_t max_by_memory = std::max<int64_t>(1, (256ll << 20) / (rows_total * s.dim * 4 + 1));
  int64_t splits = std::max<int64_t>(1, (2 * sms + base - 1) / base);
  splits = std::min({splits, max_by_work, max_by_memory, int64_t{64}});
  int64_t chunk = (s.capacity + splits - 1) / splits;
  chunk = std::max<int64_t>(keys, (chunk + keys - 1) / keys * keys);  // capacity 0: one empty split
  splits = std::max<int64_t>(1, (s.capacity + chunk - 1) / chunk);
  TORCH_CHECK_VALUE(s.batch * s.kv_heads <= 65535 && q_tiles <= 65535,
                    msg(op, "q", " is too large for one launch (B * Hkv and N * Hq / Hkv / 16 must be <= 65535)"));
  AttnArgs a{s.batch, s.nodes, s.q_heads, s.kv_heads, s.dim, s.words, s.capacity,
             s.page_size, s.max_blocks, s.num_pages, static_cast<float>(scale), splits, chunk};
  at::Tensor part_out, part_lse;
  if (splits > 1) {
    part_out = at::empty({splits, rows_total, s.dim}, q.options().dtype(at::kFloat));
    part_lse = at::empty({splits, rows_total}, q.options().dtype(at::kFloat));
  }
  at::Tensor errors = at::zeros({s.batch, 3}, q.options().dtype(at::kLong));
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(s.batch * s.kv_heads),
                  static_cast<unsigned>(q_tiles));
  const int32_t* tables = block_tables ? block_tables->data_ptr<int32_t>() : nullptr;
  float* po = splits > 1 ? part_out.data_ptr<float>() : nullptr;
  float* pl = splits > 1 ? part_lse.data_ptr<float>() : nullptr;
  SPECDEC_DISPATCH_KV_TYPES(q.scalar_type(), "tree_attention", [&] {
    auto run = [&](auto max_d_tag, auto paged_tag) {
      constexpr int kD = decltype(max_d_tag)::value;
      constexpr bool kP = decltype(paged_tag)::value;
      launch_attention<scalar_t, kD, kP>(a, grid, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                                         v.data_ptr<scalar_t>(), cache_lens.data_ptr<int32_t>(),
                                         mask.data_ptr<int32_t>(), tables, out.data_ptr<scalar_t>(),
                                         lse.data_ptr<float>(), po, pl, errors.data_ptr<int64_t>(),
                                         stream);
    };
    auto by_paged = [&](auto max_d_tag) {
      if (tables) {
        run(max_d_tag, std::true_type{});
      } else {
        run(max_d_tag, std::false_type{});
      }
    };
    if (max_d == 64) {
      by_paged(std::integral_constant<int, 64>{});
    } else if (max_d == 128) {
      by_paged(std::integral_constant<int, 128>{});
    } else {
      by_paged(std::integral_constant<int, 256>{});
    }
    if (splits > 1) {
      merge_kernel<scalar_t><<<rows_total, 128, 0, stream>>>(po, pl, splits, rows_total, s.dim,
                                                             out.data_ptr<scalar_t>(),
                                                             lse.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
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
