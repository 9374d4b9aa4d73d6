// build_tree, CUDA launch: one block per tree; the kernel body
// (specdec/tree_kernels.h) also runs on the host emulator in the C++ tests.  An
// invalid tree is recorded (cuda/device_errors.h) and raised by the eager call
// (one synchronisation), skipped under CUDA graph capture; its outputs are zero
// masks and depths.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/device_errors.h"
#include "ops/tree.h"
#include "specdec/tree_kernels.h"

namespace specdec {
namespace {

__global__ void build_tree_kernel(const int32_t* parents, int64_t nodes, int64_t words, int32_t* mask, int32_t* depth,
                                  ErrorRecord* errors) {
  tree::device::build_tree_block(kernel::DeviceCtx{}, parents, nodes, words, mask, depth, errors);
}

std::tuple<at::Tensor, at::Tensor> build_tree_cuda(const at::Tensor& parents) {
  constexpr const char* op = "specdec::build_tree";
  const int64_t words = check_build_tree_args(op, parents);
  auto [mask, depth] = build_tree_outputs(parents, words);
  const int64_t batch = parents.size(0), nodes = parents.size(1);
  if (batch == 0) return {mask, depth};
  const c10::cuda::CUDAGuard guard(parents.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = device_error_records(batch, parents.options());
  const int threads = static_cast<int>(std::min<int64_t>(128, ((words + 31) / 32) * 32));
  build_tree_kernel<<<batch, threads, block::kSharedBytes, stream>>>(parents.data_ptr<int32_t>(), nodes, words,
                                                                     mask.data_ptr<int32_t>(),
                                                                     depth.data_ptr<int32_t>(), record_ptr(errors));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_device_errors(errors, stream, [op](const ErrorRecord& e) { raise_tree_error(op, e); });
  return {mask, depth};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("build_tree", &build_tree_cuda); }

}  // namespace specdec
