// sampling_probs and sampling_probs_ragged, CUDA launch.  The kernel body (one
// thread block per row of logits; thresholds by a radix-16 selection on the
// logits' order-preserving keys, sums in float64) lives in
// specdec/sampling_kernels.h, where the C++ tests also run it on the host CUDA
// emulator.  Invalid rows are recorded (cuda/device_errors.h) and raised in
// eager mode; under CUDA graph capture they get a one-hot.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <optional>

#include "cuda/device_errors.h"
#include "cuda/static_switch.h"
#include "ops/sampling.h"
#include "specdec/sampling_kernels.h"

namespace specdec {
namespace {

namespace dev = sampling::device;
using dev::kThreads;
using kernel::DeviceCtx;

template <int kKind>
__global__ void __launch_bounds__(kThreads) sampling_probs_kernel(dev::SamplingArgs a) {
  dev::sampling_probs_block<DeviceCtx, kKind>(DeviceCtx{}, a);
}

void launch(const at::Tensor& logits, const dev::SamplingArgs& args, int64_t blocks, cudaStream_t stream) {
  SPECDEC_KIND_SWITCH(logits.scalar_type(), kKind,
                      [&] { sampling_probs_kernel<kKind><<<blocks, kThreads, dev::kSharedBytes, stream>>>(args); });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor sampling_probs_cuda(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                               const at::Tensor& top_p, const std::optional<at::Tensor>& min_p) {
  constexpr const char* op = "specdec::sampling_probs";
  check_sampling_args(op, logits, temperature, top_k, top_p, min_p);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  const int64_t batch = logits.size(0), vocab = logits.size(-1);
  const int64_t rows = logits.dim() == 3 ? logits.size(1) : 1;
  if (batch * rows == 0) return out;
  const c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = device_error_records(batch * rows, logits.options());
  dev::SamplingArgs args{logits.data_ptr(),
                         temperature.data_ptr<float>(),
                         top_k.data_ptr<int32_t>(),
                         top_p.data_ptr<float>(),
                         rows,
                         vocab,
                         out.data_ptr<float>(),
                         record_ptr(errors)};
  args.min_p = min_p ? min_p->data_ptr<float>() : nullptr;
  launch(logits, args, batch * rows, stream);
  raise_device_errors(errors, stream, [op](const ErrorRecord& e) { raise_sampling_error(op, e); });
  return out;
}

at::Tensor sampling_probs_ragged_cuda(const at::Tensor& logits, const at::Tensor& cu_nodes,
                                      const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                                      const std::optional<at::Tensor>& min_p) {
  constexpr const char* op = "specdec::sampling_probs_ragged";
  const RaggedShape shape = check_sampling_ragged_args(op, logits, cu_nodes, temperature, top_k, top_p, min_p);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  if (shape.total == 0) return out;  // then B = 0 too (checked)
  const c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Records by priority: cu_nodes, then every row's parameters, then every entry's logits.
  at::Tensor errors = device_error_records(1 + shape.batch + shape.total, logits.options());
  ErrorRecord* records = record_ptr(errors);
  dev::SamplingArgs args{
      logits.data_ptr(), temperature.data_ptr<float>(), top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(), 1,
      logits.size(1),    out.data_ptr<float>(),         records + 1 + shape.batch};
  args.min_p = min_p ? min_p->data_ptr<float>() : nullptr;
  args.cu_nodes = cu_nodes.data_ptr<int32_t>();
  args.batch = shape.batch;
  args.total = shape.total;
  args.call_errors = records;
  launch(logits, args, shape.total, stream);
  const int64_t total = shape.total;
  raise_device_errors(errors, stream, [op, total](const ErrorRecord& e) {
    if (e.code >= tree::kCuFirst) raise_cu_nodes_error(op, e, total);
    raise_sampling_ragged_error(op, e);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("sampling_probs", &sampling_probs_cuda);
  m.impl("sampling_probs_ragged", &sampling_probs_ragged_cuda);
}

}  // namespace specdec
