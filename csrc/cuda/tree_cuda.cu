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

#include "cuda/eager_check.cuh"
#include "ops/acceptance.h"
#include "ops/tree.h"
#include "specdec/acceptance.h"

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

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("build_tree", &build_tree_cuda); }

}  // namespace specdec
