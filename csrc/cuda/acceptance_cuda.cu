// Acceptance sampling and sampling_probs, CUDA launches.  The kernel bodies
// (one thread block per row, block reductions and a tiled block scan in
// float64; greedy one thread per row) live in specdec/acceptance_device.h,
// where the C++ tests also run them on the host CUDA emulator.  Invalid input
// is recorded per row in an error tensor; in eager mode the host reads it back
// (one synchronisation) and raises the same exception as the CPU kernel.
// During CUDA graph capture the read is skipped and the outputs stay in range.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstring>
#include <optional>
#include <tuple>

#include "cuda/eager_check.cuh"
#include "ops/acceptance.h"
#include "ops/checks.h"
#include "specdec/acceptance_device.h"
#include "specdec/sampling.h"

namespace specdec {
namespace {

namespace dev = accept::device;
using dev::kThreads;
using dev::Walk;
using kernel::DeviceCtx;

template <Walk kWalk>
__global__ void __launch_bounds__(kThreads) walk_kernel(dev::WalkArgs a) {
  dev::walk_block<DeviceCtx, kWalk>(DeviceCtx{}, a);
}

__global__ void greedy_kernel(const int32_t* parents, const int64_t* tokens, const int64_t* argmax,
                              int64_t batch, int64_t nodes, int32_t* accept, int32_t* num,
                              int64_t* next, unsigned long long* errors) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < batch) dev::greedy_row(parents, tokens, argmax, b, nodes, accept, num, next, errors);
}

template <int kKind>
__global__ void __launch_bounds__(kThreads) sampling_probs_kernel(dev::SamplingArgs a) {
  dev::sampling_probs_block<DeviceCtx, kKind>(DeviceCtx{}, a);
}

// In eager mode, read the per-row error records back and raise the first one.
void raise_row_errors(const char* op, const at::Tensor& errors, cudaStream_t stream) {
  const auto host = eager_errors(errors, stream);
  if (!host) return;
  const int64_t* e = host->data_ptr<int64_t>();
  for (int64_t b = 0; b < host->size(0); ++b) {
    if (e[3 * b] != 0) throw_accept_error(op, b, static_cast<int32_t>(e[3 * b]), e[3 * b + 1], e[3 * b + 2]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_walk(const char* op, Walk walk,
                                                        const TreeShape& s, const at::Tensor& tokens,
                                                        const at::Tensor& parents,
                                                        const at::Tensor& target,
                                                        const at::Tensor* draft,
                                                        const at::Tensor& seed,
                                                        const at::Tensor& offset, double threshold,
                                                        double alpha) {
  auto [accept, num, next] = verifier_outputs(s, tokens.options());
  if (s.batch == 0) return {accept, num, next};
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = at::zeros({s.batch, 3}, tokens.options().dtype(at::kLong));
  const size_t scratch = static_cast<size_t>(s.nodes) * sizeof(int64_t);
  TORCH_CHECK_VALUE(scratch <= 40 * 1024,
                    msg(op, "tokens", " has ", s.nodes, " nodes; the CUDA kernel supports up to 5120"));
  const dev::WalkArgs args{parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), target.data_ptr<float>(),
                           draft ? draft->data_ptr<float>() : nullptr, seed.data_ptr<int64_t>(),
                           offset.data_ptr<int64_t>(), s.nodes, s.vocab, threshold, alpha,
                           accept.data_ptr<int32_t>(), num.data_ptr<int32_t>(), next.data_ptr<int64_t>(),
                           reinterpret_cast<unsigned long long*>(errors.data_ptr<int64_t>())};
  const size_t smem = dev::walk_smem(s.nodes);
  switch (walk) {
    case Walk::kRejectionDraft: walk_kernel<Walk::kRejectionDraft><<<s.batch, kThreads, smem, stream>>>(args); break;
    case Walk::kRejection: walk_kernel<Walk::kRejection><<<s.batch, kThreads, smem, stream>>>(args); break;
    case Walk::kTypical: walk_kernel<Walk::kTypical><<<s.batch, kThreads, smem, stream>>>(args); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_row_errors(op, errors, stream);
  return {accept, num, next};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_cuda(const at::Tensor& tokens,
                                                                  const at::Tensor& parents,
                                                                  const at::Tensor& target_argmax) {
  constexpr const char* op = "specdec::verify_greedy";
  const TreeShape s = check_tree_args(op, tokens, parents);
  check_argmax(op, target_argmax, tokens);
  auto [accept, num, next] = verifier_outputs(s, tokens.options());
  if (s.batch == 0) return {accept, num, next};
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = at::zeros({s.batch, 3}, tokens.options().dtype(at::kLong));
  const int threads = 128;
  greedy_kernel<<<(s.batch + threads - 1) / threads, threads, 0, stream>>>(
      parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), target_argmax.data_ptr<int64_t>(),
      s.batch, s.nodes, accept.data_ptr<int32_t>(), num.data_ptr<int32_t>(),
      next.data_ptr<int64_t>(), reinterpret_cast<unsigned long long*>(errors.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_row_errors(op, errors, stream);
  return {accept, num, next};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rejection_sample_cuda(
    const at::Tensor& tokens, const at::Tensor& parents, const std::optional<at::Tensor>& draft_probs,
    const at::Tensor& target_probs, const at::Tensor& seed, const at::Tensor& offset) {
  constexpr const char* op = "specdec::rejection_sample";
  const TreeShape s =
      check_rejection_args(op, tokens, parents, draft_probs, target_probs, seed, offset);
  return run_walk(op, draft_probs ? Walk::kRejectionDraft : Walk::kRejection, s, tokens, parents,
                  target_probs, draft_probs ? &*draft_probs : nullptr, seed, offset, 0.0, 0.0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> typical_accept_cuda(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_probs,
    double posterior_threshold, double posterior_alpha, const at::Tensor& seed,
    const at::Tensor& offset) {
  constexpr const char* op = "specdec::typical_accept";
  const TreeShape s = check_typical_args(op, tokens, parents, target_probs, posterior_threshold,
                                         posterior_alpha, seed, offset);
  return run_walk(op, Walk::kTypical, s, tokens, parents, target_probs, nullptr, seed, offset,
                  posterior_threshold, posterior_alpha);
}

at::Tensor sampling_probs_cuda(const at::Tensor& logits, const at::Tensor& temperature,
                               const at::Tensor& top_k, const at::Tensor& top_p) {
  constexpr const char* op = "specdec::sampling_probs";
  check_sampling_args(op, logits, temperature, top_k, top_p);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  const int64_t batch = logits.size(0), vocab = logits.size(-1);
  const int64_t rows = logits.dim() == 3 ? logits.size(1) : 1;
  if (batch * rows == 0) return out;
  const c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = at::zeros({batch * rows, 2}, logits.options().dtype(at::kLong));
  const dev::SamplingArgs args{logits.data_ptr(), temperature.data_ptr<float>(), top_k.data_ptr<int32_t>(),
                               top_p.data_ptr<float>(), rows, vocab, out.data_ptr<float>(),
                               reinterpret_cast<long long*>(errors.data_ptr<int64_t>())};
  const size_t smem = dev::kSharedBytes;
  switch (logits.scalar_type()) {
    case at::kFloat:
      sampling_probs_kernel<kernel::kF32><<<batch * rows, kThreads, smem, stream>>>(args);
      break;
    case at::kHalf:
      sampling_probs_kernel<kernel::kF16><<<batch * rows, kThreads, smem, stream>>>(args);
      break;
    default:
      sampling_probs_kernel<kernel::kBF16><<<batch * rows, kThreads, smem, stream>>>(args);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (const auto host = eager_errors(errors, stream)) {
    const int64_t* e = host->data_ptr<int64_t>();
    for (int64_t r = 0; r < batch * rows; ++r) {
      if (e[2 * r] == sampling::kOk) continue;
      double value;
      std::memcpy(&value, &e[2 * r + 1], sizeof(value));
      throw_sampling_error(op, static_cast<int32_t>(e[2 * r]), r / rows, r % rows, value);
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("sampling_probs", &sampling_probs_cuda);
  m.impl("verify_greedy", &verify_greedy_cuda);
  m.impl("rejection_sample", &rejection_sample_cuda);
  m.impl("typical_accept", &typical_accept_cuda);
}

}  // namespace specdec
