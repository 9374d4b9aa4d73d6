// Acceptance sampling and sampling_probs, CUDA kernels.
//
// One thread block per row.  Every thread runs the shared walk of
// specdec/acceptance.h in lock-step on identical scalars; the vocabulary-wide
// collectives (sum, search) are block reductions and a tiled block scan, in
// float64.  Invalid input (broken trees, out-of-range tokens, NaN/negative
// probabilities, bad sampling parameters) is recorded per row in an error
// tensor; in eager mode the host reads it back (one synchronisation) and
// raises the same exception as the CPU kernel.  During CUDA graph capture the
// read is skipped and the outputs stay in range (tokens in [0, V)).
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
#include "specdec/philox.h"
#include "specdec/sampling.h"

namespace specdec {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;  // consecutive vocabulary entries per thread in a scan tile

// ---------------------------------------------------------------------------
// Block collectives (every thread must call them; results are broadcast).
// ---------------------------------------------------------------------------

__device__ double block_sum(double v, double* shm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shm may still be read by a previous collective
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += shm[w];
  return total;
}

__device__ int64_t block_min(int64_t v, long long* shm) {
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other < v ? other : v;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  int64_t m = shm[0];
  for (int w = 1; w < kWarps; ++w) m = shm[w] < m ? shm[w] : m;
  return m;
}

// Exclusive prefix of v over the block; *total receives the block's sum.
__device__ double block_exclusive_scan(double v, double* shm, double* total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const double up = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += up;
  }
  __syncthreads();
  if (lane == 31) shm[warp] = incl;
  __syncthreads();
  double before = 0.0, all = 0.0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += shm[w];
    all += shm[w];
  }
  *total = all;
  return before + incl - v;
}

struct Shared {
  double red[kWarps];
  long long idx[kWarps];
};

// ---------------------------------------------------------------------------
// The row policy of specdec/acceptance.h on a thread block.
// ---------------------------------------------------------------------------

// The CUDA row policy: collectives over the whole thread block.
class CudaRow : public accept::RowView {
 public:
  __device__ CudaRow(const accept::RowView& view, int64_t* scratch, Shared* shm,
                     unsigned long long* error)
      : accept::RowView(view), scratch_(scratch), shm_(shm), error_(error) {}

  __device__ int64_t get(int64_t i) const { return scratch_[i]; }
  __device__ void set(int64_t i, int64_t v) {
    __syncthreads();  // everyone has read the old value
    if (threadIdx.x == 0) scratch_[i] = v;
    __syncthreads();
  }
  __device__ void bad(int32_t code, int64_t node, int64_t x) {
    // error_ = {code, where, value}; the first reporter wins.
    if (atomicCAS(error_, 0ull, static_cast<unsigned long long>(code)) == 0ull) {
      error_[1] = static_cast<unsigned long long>(node);
      error_[2] = static_cast<unsigned long long>(x);
    }
  }
  __device__ void out(int64_t j, int64_t node) {
    if (threadIdx.x == 0) accept_[j] = static_cast<int32_t>(node);
  }
  __device__ void finish(int64_t length, int64_t next) {
    for (int64_t j = length + threadIdx.x; j < nodes; j += blockDim.x) accept_[j] = -1;
    if (threadIdx.x == 0) {
      *num_ = static_cast<int32_t>(length);
      *next_ = next < 0 || next >= vocab ? 0 : next;
    }
  }
  template <class F>
  __device__ double sum(F f) {
    double s = 0.0;
    for (int64_t x = threadIdx.x; x < vocab; x += blockDim.x) s += f(x);
    return block_sum(s, shm_->red);
  }
  template <class F>
  __device__ int64_t search(F f, double target) {
    double carry = 0.0;
    const int64_t tile = static_cast<int64_t>(blockDim.x) * kItems;
    for (int64_t base = 0; base < vocab; base += tile) {
      const int64_t first = base + threadIdx.x * kItems;
      double v[kItems];
      double mine = 0.0;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        v[k] = first + k < vocab ? f(first + k) : 0.0;
        mine += v[k];
      }
      double total;
      const double before = block_exclusive_scan(mine, shm_->red, &total);
      if (carry + total > target) {
        int64_t hit = INT64_MAX;
        double run = carry + before;
#pragma unroll
        for (int k = 0; k < kItems; ++k) {
          run += v[k];
          if (hit == INT64_MAX && first + k < vocab && run > target) hit = first + k;
        }
        const int64_t x = block_min(hit, shm_->idx);
        if (x != INT64_MAX) return x;
      }
      carry += total;
    }
    return -1;
  }

 private:
  int64_t* scratch_;
  Shared* shm_;
  unsigned long long* error_;
};

// Thread 0 validates the tree; everyone learns the verdict.
__device__ bool tree_ok(const int32_t* parents, const int64_t* tokens, int64_t nodes, int64_t vocab,
                        unsigned long long* error) {
  __shared__ int ok;
  if (threadIdx.x == 0) {
    int64_t where = 0, value = 0;
    const int32_t code = accept::check_tree(parents, tokens, nodes, vocab, &where, &value);
    ok = code == accept::kOk;
    if (!ok) {
      error[0] = static_cast<unsigned long long>(code);
      error[1] = static_cast<unsigned long long>(where);
      error[2] = static_cast<unsigned long long>(value);
    }
  }
  __syncthreads();
  return ok != 0;
}

// Outputs of a row that failed validation: a valid, empty verdict.
__device__ void fail_row(int32_t* accept, int32_t* num, int64_t* next, int64_t nodes) {
  for (int64_t j = threadIdx.x; j < nodes; j += blockDim.x) accept[j] = j == 0 ? 0 : -1;
  if (threadIdx.x == 0) {
    *num = 1;
    *next = 0;
  }
}

enum class Walk { kRejectionDraft, kRejection, kTypical };

template <Walk kWalk>
__global__ void __launch_bounds__(kThreads)
    walk_kernel(const int32_t* parents, const int64_t* tokens, const float* target,
                const float* draft, const int64_t* seed, const int64_t* offset, int64_t nodes,
                int64_t vocab, double threshold, double alpha, int32_t* accept, int32_t* num,
                int64_t* next, unsigned long long* errors) {
  extern __shared__ int64_t scratch[];
  __shared__ Shared shm;
  const int64_t b = blockIdx.x;
  const int64_t o = b * nodes;
  unsigned long long* error = errors + 3 * b;
  if (!tree_ok(parents + o, tokens + o, nodes, vocab, error)) {
    fail_row(accept + o, num + b, next + b, nodes);
    return;
  }
  const accept::RowView view(nodes, vocab, parents + o, tokens + o, target + o * vocab,
                             draft ? draft + o * vocab : nullptr, static_cast<uint64_t>(seed[b]),
                             static_cast<uint64_t>(offset[b]), accept + o, num + b, next + b);
  CudaRow row(view, scratch, &shm, error);
  if constexpr (kWalk == Walk::kRejectionDraft) {
    accept::rejection_walk<true>(row);
  } else if constexpr (kWalk == Walk::kRejection) {
    accept::rejection_walk<false>(row);
  } else {
    accept::typical_walk(row, threshold, alpha);
  }
}

__global__ void greedy_kernel(const int32_t* parents, const int64_t* tokens, const int64_t* argmax,
                              int64_t batch, int64_t nodes, int32_t* accept, int32_t* num,
                              int64_t* next, unsigned long long* errors) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const int64_t o = b * nodes;
  unsigned long long* error = errors + 3 * b;
  int64_t where = 0, value = 0;
  int32_t code = accept::check_tree(parents + o, tokens + o, nodes, 0, &where, &value);
  for (int64_t i = 0; code == accept::kOk && i < nodes; ++i) {
    if (argmax[o + i] < 0) {
      code = accept::kArgmaxRange;
      where = i;
      value = argmax[o + i];
    }
  }
  if (code != accept::kOk) {
    error[0] = static_cast<unsigned long long>(code);
    error[1] = static_cast<unsigned long long>(where);
    error[2] = static_cast<unsigned long long>(value);
    for (int64_t j = 0; j < nodes; ++j) accept[o + j] = j == 0 ? 0 : -1;
    num[b] = 1;
    next[b] = 0;
    return;
  }
  num[b] = static_cast<int32_t>(accept::greedy_walk(parents + o, tokens + o, argmax + o, nodes,
                                                    accept + o, next + b));
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
  auto* err = reinterpret_cast<unsigned long long*>(errors.data_ptr<int64_t>());
  const float* dp = draft ? draft->data_ptr<float>() : nullptr;
  auto launch = [&](auto kernel) {
    kernel<<<s.batch, kThreads, scratch, stream>>>(
        parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(), target.data_ptr<float>(), dp,
        seed.data_ptr<int64_t>(), offset.data_ptr<int64_t>(), s.nodes, s.vocab, threshold, alpha,
        accept.data_ptr<int32_t>(), num.data_ptr<int32_t>(), next.data_ptr<int64_t>(), err);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (walk) {
    case Walk::kRejectionDraft: launch(walk_kernel<Walk::kRejectionDraft>); break;
    case Walk::kRejection: launch(walk_kernel<Walk::kRejection>); break;
    case Walk::kTypical: launch(walk_kernel<Walk::kTypical>); break;
  }
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

// ---------------------------------------------------------------------------
// sampling_probs: one block per row of logits.
// ---------------------------------------------------------------------------

template <typename T>
__device__ float load(const T* x, int64_t i) {
  return static_cast<float>(x[i]);
}

// The largest key t with measure(t) >= need, where measure is non-increasing in t.
template <class Measure>
__device__ uint32_t largest_key(Measure measure, double need) {
  uint32_t t = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = t | (1u << bit);
    if (measure(cand) >= need) t = cand;
  }
  return t;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sampling_probs_kernel(const T* logits, const float* temperature, const int32_t* top_k,
                          const float* top_p, int64_t rows, int64_t vocab, float* out,
                          long long* errors) {
  __shared__ Shared shm;
  __shared__ int verdict;
  const int64_t r = blockIdx.x;
  const int64_t b = r / rows;
  const T* x = logits + r * vocab;
  float* y = out + r * vocab;
  const float temp = temperature[b];
  const int32_t k = top_k[b];
  const float tp = top_p[b];
  // Pass 1: validity, maximum, first maximum.
  float best = -INFINITY;
  int64_t best_i = INT64_MAX;
  int invalid = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = load(x, i);
    if (isnan(v) || v == INFINITY) invalid = 1;
    if (v > best || (v == best && i < best_i)) {
      best = v;
      best_i = i;
    }
  }
  // Max by key, then the lowest index holding it.
  const uint32_t best_key = static_cast<uint32_t>(
      -block_min(-static_cast<int64_t>(sampling::order_key(best)), shm.idx));
  const int64_t first_max = block_min(sampling::order_key(best) == best_key ? best_i : INT64_MAX, shm.idx);
  const double any_invalid = block_sum(invalid, shm.red);
  if (threadIdx.x == 0) {
    int32_t code = sampling::check_params(temp, k, tp);
    if (code == sampling::kOk && any_invalid > 0) code = sampling::kLogitInvalid;
    if (code == sampling::kOk && best_key == sampling::order_key(-INFINITY)) code = sampling::kAllMasked;
    verdict = code;
    if (code != sampling::kOk) {
      const double value = code == sampling::kTemperature ? temp : code == sampling::kTopK ? k : tp;
      errors[2 * r] = code;
      errors[2 * r + 1] = __double_as_longlong(value);
    }
  }
  __syncthreads();
  if (verdict != sampling::kOk || temp == 0.0f) {
    // Greedy (or an invalid row, which gets a harmless one-hot too).
    const int64_t hot = first_max == INT64_MAX ? 0 : first_max;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) y[i] = i == hot ? 1.0f : 0.0f;
    return;
  }
  const double t = temp;
  const double zmax = static_cast<double>(load(x, first_max)) / t;
  // top-k: the k-th largest key (ties kept).
  uint32_t keep = 0;
  if (sampling::top_k_active(k, vocab)) {
    keep = largest_key([&](uint32_t cand) {
      double c = 0.0;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) c += sampling::order_key(load(x, i)) >= cand;
      return block_sum(c, shm.red);
    }, static_cast<double>(k));
  }
  auto weight = [&](int64_t i, uint32_t from) -> double {
    const float v = load(x, i);
    return sampling::order_key(v) >= from ? exp(static_cast<double>(v) / t - zmax) : 0.0;
  };
  auto mass = [&](uint32_t from) {
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) s += weight(i, from);
    return block_sum(s, shm.red);
  };
  const double total = mass(keep);
  if (tp < 1.0f) {
    // top-p on the kept set: the largest key whose upper set holds mass >= top_p.
    const uint32_t cut = largest_key([&](uint32_t cand) { return mass(cand > keep ? cand : keep) / total; },
                                     static_cast<double>(tp));
    keep = cut > keep ? cut : keep;
  }
  const double kept = keep == 0 ? total : mass(keep);
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const double p = weight(i, keep) / total;
    y[i] = p > 0.0 ? static_cast<float>(p / (kept / total)) : 0.0f;
  }
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
  auto* err = reinterpret_cast<long long*>(errors.data_ptr<int64_t>());
  const float* tp = temperature.data_ptr<float>();
  const int32_t* kp = top_k.data_ptr<int32_t>();
  const float* pp = top_p.data_ptr<float>();
  float* o = out.data_ptr<float>();
  switch (logits.scalar_type()) {
    case at::kFloat:
      sampling_probs_kernel<float><<<batch * rows, kThreads, 0, stream>>>(
          logits.data_ptr<float>(), tp, kp, pp, rows, vocab, o, err);
      break;
    case at::kHalf:
      sampling_probs_kernel<at::Half><<<batch * rows, kThreads, 0, stream>>>(
          logits.data_ptr<at::Half>(), tp, kp, pp, rows, vocab, o, err);
      break;
    default:
      sampling_probs_kernel<at::BFloat16><<<batch * rows, kThreads, 0, stream>>>(
          logits.data_ptr<at::BFloat16>(), tp, kp, pp, rows, vocab, o, err);
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
