// KV rollback, CUDA launches.  The kernel bodies (validate_and_advance, then
// copy_accepted, on the current stream with no host synchronisation between
// them) live in specdec/kv_compact_kernels.h, where the C++ tests also run them
// on the host CUDA emulator.  In eager mode the host then reads the status
// record (cuda/device_errors.h) to raise the same exception the CPU kernel
// raises; under CUDA graph capture bad rows still write nothing.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <limits>

#include "cuda/device_errors.h"
#include "cuda/static_switch.h"
#include "ops/kv_compact.h"
#include "specdec/kv_compact_kernels.h"

namespace specdec {
namespace {

namespace dev = kv::device;
using dev::kMaxTensors;
using dev::kThreads;
using kernel::DeviceCtx;

__global__ void validate_and_advance(dev::ValidateArgs a) { dev::validate_and_advance(DeviceCtx{}, a); }

template <typename Vec, bool kPaged>
__global__ void copy_accepted(dev::TensorPtrs ptrs, int64_t num_tensors, dev::RowArgs args) {
  dev::copy_accepted<DeviceCtx, Vec, kPaged>(DeviceCtx{}, ptrs, num_tensors, args);
}

// The type one thread copies per access, by width in bytes.
template <int kBytes>
struct VectorOf {
  using type = uint16_t;
};
template <>
struct VectorOf<16> {
  using type = uint4;
};
template <>
struct VectorOf<8> {
  using type = uint2;
};
template <>
struct VectorOf<4> {
  using type = uint32_t;
};

// The widest vector (16, 8, 4 or 2 bytes) that divides the row and every base.
int vector_bytes(const KvCompactPlan& plan) {
  for (int w : {16, 8, 4}) {
    bool ok = plan.row_bytes % w == 0;
    for (const at::Tensor& t : plan.tensors) {
      ok = ok && reinterpret_cast<uintptr_t>(t.data_ptr()) % w == 0;
    }
    if (ok) return w;
  }
  return 2;
}

template <bool kPaged>
void launch_copies(const KvCompactPlan& plan, const dev::RowArgs& args, cudaStream_t stream) {
  const int vec = vector_bytes(plan);
  const int64_t num_tensors = static_cast<int64_t>(plan.tensors.size());
  for (int64_t first = 0; first < num_tensors; first += kMaxTensors) {
    const int64_t count = std::min<int64_t>(kMaxTensors, num_tensors - first);
    dev::TensorPtrs ptrs{};
    for (int64_t t = 0; t < count; ++t) {
      ptrs.ptr[t] = static_cast<char*>(plan.tensors[first + t].data_ptr());
    }
    const int64_t items = count * plan.batch * plan.rows_per_seq * (plan.row_bytes / vec);
    if (items == 0) continue;
    const int64_t blocks = std::min<int64_t>((items + kThreads - 1) / kThreads, 65535LL * 16);
    SPECDEC_SWITCH4(vec, kBytes, 16, 8, 4, 2, [&] {
      copy_accepted<typename VectorOf<kBytes>::type, kPaged><<<blocks, kThreads, 0, stream>>>(ptrs, count, args);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <bool kPaged>
void run(const char* op, const KvCompactPlan& plan, const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
         const at::Tensor& num_accepted, const at::Tensor* block_tables) {
  if (plan.batch == 0) return;
  const c10::cuda::CUDAGuard guard(cache_lens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = cache_lens.options();
  at::Tensor status = device_error_records(1, opts);
  at::Tensor base_lens = at::empty({plan.batch}, opts);
  const bool has_tensors = !plan.tensors.empty();
  const int64_t capacity = has_tensors ? plan.capacity : std::numeric_limits<int32_t>::max();
  const int32_t* tables = kPaged ? block_tables->data_ptr<int32_t>() : nullptr;
  const dev::ValidateArgs va{cache_lens.data_ptr<int32_t>(),
                             accept_nodes.data_ptr<int32_t>(),
                             num_accepted.data_ptr<int32_t>(),
                             tables,
                             plan.batch,
                             plan.width,
                             capacity,
                             kPaged,
                             has_tensors,
                             plan.page_size,
                             plan.num_pages,
                             plan.max_blocks,
                             base_lens.data_ptr<int32_t>(),
                             record_ptr(status)};
  validate_and_advance<<<1, kThreads, dev::kValidateSmem, stream>>>(va);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (has_tensors && plan.row_bytes > 0) {
    const dev::RowArgs args{accept_nodes.data_ptr<int32_t>(),
                            num_accepted.data_ptr<int32_t>(),
                            base_lens.data_ptr<int32_t>(),
                            record_ptr(status),
                            plan.batch,
                            plan.width,
                            plan.rows_per_seq,
                            plan.row_bytes,
                            plan.slots,
                            tables,
                            plan.max_blocks,
                            plan.page_size};
    launch_copies<kPaged>(plan, args, stream);
  }
  raise_device_errors(status, stream, [&](const ErrorRecord& e) { raise_kv_compact_error(op, plan, e); });
}

void kv_compact_cuda(at::TensorList caches, const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                     const at::Tensor& num_accepted) {
  constexpr const char* op = "specdec::kv_compact_";
  const KvCompactPlan plan = check_kv_compact(op, caches, cache_lens, accept_nodes, num_accepted);
  run<false>(op, plan, cache_lens, accept_nodes, num_accepted, nullptr);
}

void kv_compact_paged_cuda(at::TensorList k_pages, at::TensorList v_pages, const at::Tensor& block_tables,
                           const at::Tensor& cache_lens, const at::Tensor& accept_nodes,
                           const at::Tensor& num_accepted) {
  constexpr const char* op = "specdec::kv_compact_paged_";
  const KvCompactPlan plan =
      check_kv_compact_paged(op, k_pages, v_pages, block_tables, cache_lens, accept_nodes, num_accepted);
  run<true>(op, plan, cache_lens, accept_nodes, num_accepted, &block_tables);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("kv_compact_", &kv_compact_cuda);
  m.impl("kv_compact_paged_", &kv_compact_paged_cuda);
}

}  // namespace specdec
