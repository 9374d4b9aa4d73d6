// Acceptance sampling (verify_greedy, rejection_sample with its methods,
// typical_accept), CUDA launches.  The kernel bodies (one thread block per row, block reductions and
// a tiled block scan in float64; greedy one thread per row) live in
// specdec/acceptance_kernels.h, where the C++ tests also run them on the host
// CUDA emulator.  Invalid input is recorded per row (cuda/device_errors.h); in
// eager mode the host reads the records back (one synchronisation) and raises
// the same exception as the CPU kernel.  During CUDA graph capture the read is
// skipped and the outputs stay in range.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "cuda/device_errors.h"
#include "cuda/static_switch.h"
#include "ops/acceptance.h"
#include "ops/checks.h"
#include "ops/tree.h"
#include "specdec/acceptance_kernels.h"

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

__global__ void greedy_kernel(const int32_t* parents, const int64_t* tokens, const int64_t* argmax, int64_t batch,
                              int64_t nodes, int32_t* accept, int32_t* num, int64_t* next, ErrorRecord* errors) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < batch) dev::greedy_row(parents, tokens, argmax, b, nodes, accept, num, next, errors);
}

// In eager mode, raise the first row's error.
void raise_row_errors(const char* op, const at::Tensor& errors, cudaStream_t stream) {
  raise_device_errors(errors, stream, [op](const ErrorRecord& e) { raise_acceptance_error(op, e); });
}

// The most scratch a walk block takes (dynamic shared memory beyond the block's scalars).
constexpr int64_t kMaxScratchWords = 40 * 1024 / sizeof(int64_t);

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_walk(const char* op, Walk walk, const TreeShape& s,
                                                        const at::Tensor& tokens, const at::Tensor& parents,
                                                        const at::Tensor& target, const at::Tensor* draft,
                                                        const at::Tensor& seed, const at::Tensor& offset,
                                                        double threshold, double alpha, RejectionRule rule = {}) {
  auto [accept, num, next] = verifier_outputs(s, tokens.options());
  if (s.batch == 0) return {accept, num, next};
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = device_error_records(s.batch, tokens.options());
  const bool chain_only = walk != Walk::kTypical && rule.method == accept::Method::kBlock;
  const int64_t words = accept::scratch_words(walk, s.nodes);
  if (words == s.nodes) {
    TORCH_CHECK_VALUE(words <= kMaxScratchWords,
                      msg(op, "tokens", " has ", s.nodes, " nodes; the CUDA kernel supports up to ", kMaxScratchWords));
  } else {
    TORCH_CHECK_VALUE(words <= kMaxScratchWords, msg(op, "tokens", " has ", s.nodes,
                                                     " nodes; the CUDA kernel of method 'traversal' supports up to ",
                                                     kMaxScratchWords / accept::traversal_scratch_words(1)));
  }
  const dev::WalkArgs args{parents.data_ptr<int32_t>(),
                           tokens.data_ptr<int64_t>(),
                           target.data_ptr<float>(),
                           draft ? draft->data_ptr<float>() : nullptr,
                           seed.data_ptr<int64_t>(),
                           offset.data_ptr<int64_t>(),
                           s.nodes,
                           s.vocab,
                           threshold,
                           alpha,
                           accept.data_ptr<int32_t>(),
                           num.data_ptr<int32_t>(),
                           next.data_ptr<int64_t>(),
                           record_ptr(errors),
                           chain_only};
  const size_t smem = dev::walk_smem(s.nodes, words);
  auto launch = [&](auto walk_constant) {
    walk_kernel<decltype(walk_constant)::value><<<s.batch, kThreads, smem, stream>>>(args);
  };
  if (walk == Walk::kTypical) {
    launch(std::integral_constant<Walk, Walk::kTypical>{});
  } else if (walk == Walk::kRejection) {
    launch(std::integral_constant<Walk, Walk::kRejection>{});
  } else {  // rejection_sample with draft probabilities: the method, then how siblings were drafted
    SPECDEC_SWITCH3(
        rule.method, kMethod, accept::Method::kTokenwise, accept::Method::kBlock, accept::Method::kTraversal, [&] {
          SPECDEC_BOOL_SWITCH(rule.siblings == accept::Siblings::kWithoutReplacement, kWor, [&] {
            constexpr auto kSiblings = kWor ? accept::Siblings::kWithoutReplacement : accept::Siblings::kIid;
            launch(std::integral_constant<Walk, accept::draft_walk(kMethod, kSiblings)>{});
          });
        });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_row_errors(op, errors, stream);
  return {accept, num, next};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_greedy_cuda(const at::Tensor& tokens, const at::Tensor& parents,
                                                                  const at::Tensor& target_argmax) {
  constexpr const char* op = "specdec::verify_greedy";
  const TreeShape s = check_tree_args(op, tokens, parents);
  check_argmax(op, target_argmax, tokens);
  auto [accept, num, next] = verifier_outputs(s, tokens.options());
  if (s.batch == 0) return {accept, num, next};
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = device_error_records(s.batch, tokens.options());
  const int threads = 128;
  greedy_kernel<<<(s.batch + threads - 1) / threads, threads, 0, stream>>>(
      parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), target_argmax.data_ptr<int64_t>(), s.batch, s.nodes,
      accept.data_ptr<int32_t>(), num.data_ptr<int32_t>(), next.data_ptr<int64_t>(), record_ptr(errors));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_row_errors(op, errors, stream);
  return {accept, num, next};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rejection_sample_cuda(
    const at::Tensor& tokens, const at::Tensor& parents, const std::optional<at::Tensor>& draft_probs,
    const at::Tensor& target_probs, const at::Tensor& seed, const at::Tensor& offset, c10::string_view method,
    c10::string_view siblings) {
  constexpr const char* op = "specdec::rejection_sample";
  const RejectionRule rule = parse_rejection_rule(op, method, siblings);
  const TreeShape s = check_rejection_args(op, tokens, parents, draft_probs, target_probs, seed, offset);
  // Deterministic drafts: one rule for every method (docs/ops.md); block still needs a chain.
  const Walk walk = draft_probs ? accept::draft_walk(rule.method, rule.siblings) : Walk::kRejection;
  return run_walk(op, walk, s, tokens, parents, target_probs, draft_probs ? &*draft_probs : nullptr, seed, offset, 0.0,
                  0.0, rule);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> typical_accept_cuda(const at::Tensor& tokens, const at::Tensor& parents,
                                                                   const at::Tensor& target_probs,
                                                                   double posterior_threshold, double posterior_alpha,
                                                                   const at::Tensor& seed, const at::Tensor& offset) {
  constexpr const char* op = "specdec::typical_accept";
  const TreeShape s =
      check_typical_args(op, tokens, parents, target_probs, posterior_threshold, posterior_alpha, seed, offset);
  return run_walk(op, Walk::kTypical, s, tokens, parents, target_probs, nullptr, seed, offset, posterior_threshold,
                  posterior_alpha);
}

// ---------------------------------------------------------------------------
// Ragged batches: one block (greedy: one thread) per row, at its offset.  The
// records are [2B]: every row's share of the cu_nodes check first, then every
// row's own error, so the host raises what the CPU kernel raises.
// ---------------------------------------------------------------------------

template <Walk kWalk>
__global__ void __launch_bounds__(kThreads) walk_ragged_kernel(dev::RaggedWalkArgs a) {
  dev::walk_block_ragged<DeviceCtx, kWalk>(DeviceCtx{}, a);
}

__global__ void greedy_ragged_kernel(const int32_t* parents, const int64_t* tokens, const int64_t* argmax,
                                     const int32_t* cu, int64_t batch, int64_t total, int32_t* accept, int32_t* num,
                                     int64_t* next, ErrorRecord* cu_errors, ErrorRecord* errors) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < batch)
    dev::greedy_row_ragged(parents, tokens, argmax, cu, batch, total, b, accept, num, next, cu_errors, errors);
}

using RaggedVerdict = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// accept_nodes filled with -1 (entries of rows with bad offsets stay in range), num, next.
RaggedVerdict ragged_outputs(const RaggedTreeShape& s, const at::Tensor& tokens) {
  return {at::full({s.total}, -1, tokens.options().dtype(at::kInt)),
          at::empty({s.batch}, tokens.options().dtype(at::kInt)),
          at::empty({s.batch}, tokens.options().dtype(at::kLong))};
}

void raise_ragged_errors(const char* op, const at::Tensor& errors, const at::Tensor& cu_nodes, int64_t total,
                         cudaStream_t stream) {
  raise_device_errors(errors, stream, [&](const ErrorRecord& e) {
    const at::Tensor cu = cu_nodes.to(at::kCPU);  // only to name the entry of a failing row
    raise_acceptance_ragged_error(op, e, cu.data_ptr<int32_t>(), total);
  });
}

RaggedVerdict run_walk_ragged(const char* op, Walk walk, const RaggedTreeShape& s, const at::Tensor& tokens,
                              const at::Tensor& parents, const at::Tensor& cu_nodes, const at::Tensor& target,
                              const at::Tensor* draft, const at::Tensor& seed, const at::Tensor& offset,
                              double threshold, double alpha) {
  auto [accept, num, next] = ragged_outputs(s, tokens);
  if (s.batch == 0) return {accept, num, next};
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = device_error_records(2 * s.batch, tokens.options());
  ErrorRecord* records = record_ptr(errors);
  // Per-node scratch of the deterministic-draft and typical walks, in global memory (rows have any size).
  at::Tensor scratch;
  if (walk != Walk::kRejectionDraft) scratch = at::empty({s.total}, tokens.options().dtype(at::kLong));
  const dev::RaggedWalkArgs args{parents.data_ptr<int32_t>(),
                                 tokens.data_ptr<int64_t>(),
                                 cu_nodes.data_ptr<int32_t>(),
                                 target.data_ptr<float>(),
                                 draft ? draft->data_ptr<float>() : nullptr,
                                 seed.data_ptr<int64_t>(),
                                 offset.data_ptr<int64_t>(),
                                 s.batch,
                                 s.total,
                                 s.vocab,
                                 threshold,
                                 alpha,
                                 accept.data_ptr<int32_t>(),
                                 num.data_ptr<int32_t>(),
                                 next.data_ptr<int64_t>(),
                                 scratch.defined() ? scratch.data_ptr<int64_t>() : nullptr,
                                 records,
                                 records + s.batch};
  SPECDEC_SWITCH3(walk, kWalk, Walk::kRejectionDraft, Walk::kRejection, Walk::kTypical,
                  [&] { walk_ragged_kernel<kWalk><<<s.batch, kThreads, dev::kSharedBytes, stream>>>(args); });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_ragged_errors(op, errors, cu_nodes, s.total, stream);
  return {accept, num, next};
}

RaggedVerdict verify_greedy_ragged_cuda(const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& cu_nodes,
                                        const at::Tensor& target_argmax) {
  constexpr const char* op = "specdec::verify_greedy_ragged";
  const RaggedTreeShape s = check_ragged_tree_args(op, tokens, parents, cu_nodes);
  check_ragged_argmax(op, target_argmax, tokens);
  auto [accept, num, next] = ragged_outputs(s, tokens);
  if (s.batch == 0) return {accept, num, next};
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor errors = device_error_records(2 * s.batch, tokens.options());
  ErrorRecord* records = record_ptr(errors);
  const int threads = 128;
  greedy_ragged_kernel<<<(s.batch + threads - 1) / threads, threads, 0, stream>>>(
      parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), target_argmax.data_ptr<int64_t>(),
      cu_nodes.data_ptr<int32_t>(), s.batch, s.total, accept.data_ptr<int32_t>(), num.data_ptr<int32_t>(),
      next.data_ptr<int64_t>(), records, records + s.batch);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_ragged_errors(op, errors, cu_nodes, s.total, stream);
  return {accept, num, next};
}

RaggedVerdict rejection_sample_ragged_cuda(const at::Tensor& tokens, const at::Tensor& parents,
                                           const at::Tensor& cu_nodes, const std::optional<at::Tensor>& draft_probs,
                                           const at::Tensor& target_probs, const at::Tensor& seed,
                                           const at::Tensor& offset) {
  constexpr const char* op = "specdec::rejection_sample_ragged";
  const RaggedTreeShape s =
      check_rejection_ragged_args(op, tokens, parents, cu_nodes, draft_probs, target_probs, seed, offset);
  return run_walk_ragged(op, draft_probs ? Walk::kRejectionDraft : Walk::kRejection, s, tokens, parents, cu_nodes,
                         target_probs, draft_probs ? &*draft_probs : nullptr, seed, offset, 0.0, 0.0);
}

RaggedVerdict typical_accept_ragged_cuda(const at::Tensor& tokens, const at::Tensor& parents,
                                         const at::Tensor& cu_nodes, const at::Tensor& target_probs,
                                         double posterior_threshold, double posterior_alpha, const at::Tensor& seed,
                                         const at::Tensor& offset) {
  constexpr const char* op = "specdec::typical_accept_ragged";
  const RaggedTreeShape s = check_typical_ragged_args(op, tokens, parents, cu_nodes, target_probs, posterior_threshold,
                                                      posterior_alpha, seed, offset);
  return run_walk_ragged(op, Walk::kTypical, s, tokens, parents, cu_nodes, target_probs, nullptr, seed, offset,
                         posterior_threshold, posterior_alpha);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("verify_greedy", &verify_greedy_cuda);
  m.impl("rejection_sample", &rejection_sample_cuda);
  m.impl("typical_accept", &typical_accept_cuda);
  m.impl("verify_greedy_ragged", &verify_greedy_ragged_cuda);
  m.impl("rejection_sample_ragged", &rejection_sample_ragged_cuda);
  m.impl("typical_accept_ragged", &typical_accept_ragged_cuda);
}

}  // namespace specdec
