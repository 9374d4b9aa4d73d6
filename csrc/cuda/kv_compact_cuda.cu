// KV rollback, CUDA kernels.
//
// Two launches on the current stream, no host synchronisation between them:
//  1. validate_and_advance (one block): checks every row with the same code as
//     the CPU kernel (specdec/kv_compact.h).  If all rows are valid it snapshots
//     the old cache_lens and advances cache_lens; otherwise it records the first
//     failing row in `status` and changes nothing.
//  2. copy_accepted: one launch for all tensors (pointers passed by value, in
//     chunks of kMaxTensors).  Each thread owns one vector-sized column of one
//     (tensor, sequence, row) and copies the accepted slots in ascending order,
//     which equals the sequential definition.  It does nothing if status != 0.
// In eager mode the host then reads `status` (cuda/eager_check.cuh) to raise
// the same exception the CPU kernel raises; under CUDA graph capture bad rows
// still write nothing.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <limits>

#include "cuda/eager_check.cuh"
#include "ops/kv_compact.h"

namespace specdec {
namespace {

constexpr int kMaxTensors = 128;  // 1 KiB of pointers in the kernel parameters
constexpr int kThreads = 256;

struct TensorPtrs {
  char* ptr[kMaxTensors];
};

struct RowArgs {
  const int32_t* accept;
  const int32_t* num;
  const int32_t* base_lens;  // cache_lens before this step (written by kernel 1)
  const int64_t* status;
  int64_t batch, width, rows_per_seq, row_bytes, slots;
  // paged
  const int32_t* tables;
  int64_t max_blocks, page_size;
};

__global__ void validate_and_advance(int32_t* lens, const int32_t* accept, const int32_t* num,
                                     const int32_t* tables, int64_t batch, int64_t width,
                                     int64_t capacity, bool paged, bool check_slots,
                                     int64_t page_size, int64_t num_pages, int64_t max_blocks,
                                     int32_t* base_lens, int64_t* status) {
  __shared__ long long first_bad;
  if (threadIdx.x == 0) first_bad = batch;
  __syncthreads();
  auto check = [&](int64_t b) {
    kv::RowCheck c = kv::check_row(lens[b], num[b], accept + b * width, width, capacity);
    if (c.code == kv::kOk && paged && check_slots && num[b] > 0) {
      c = kv::check_blocks(tables + b * max_blocks, lens[b], accept[b * width + num[b] - 1],
                           page_size, num_pages);
    }
    return c;
  };
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    if (check(b).code != kv::kOk) atomicMin(&first_bad, static_cast<long long>(b));
  }
  __syncthreads();
  const int64_t bad = first_bad;
  if (bad < batch) {
    if (threadIdx.x == 0) {
      const kv::RowCheck c = check(bad);
      status[0] = c.code;
      status[1] = bad;
      status[2] = c.j;
      status[3] = c.value;
    }
    return;
  }
  if (threadIdx.x == 0) status[0] = kv::kOk;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    base_lens[b] = lens[b];
    lens[b] += num[b];
  }
}

template <typename Vec, bool kPaged>
__global__ void copy_accepted(TensorPtrs ptrs, int64_t num_tensors, RowArgs args) {
  if (args.status[0] != kv::kOk) return;
  const int64_t vecs = args.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const int64_t items = num_tensors * args.batch * args.rows_per_seq * vecs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = i % vecs;
    int64_t rest = i / vecs;
    const int64_t row = rest % args.rows_per_seq;
    rest /= args.rows_per_seq;
    const int64_t b = rest % args.batch;
    const int64_t t = rest / args.batch;
    const int64_t n = args.num[b];
    const int64_t len = args.base_lens[b];
    const int32_t* a = args.accept + b * args.width;
    char* base = ptrs.ptr[t] + col * static_cast<int64_t>(sizeof(Vec));
    auto offset = [&](int64_t slot) -> int64_t {
      if constexpr (kPaged) {
        return kv::paged_offset(args.tables + b * args.max_blocks, slot, args.page_size,
                                args.row_bytes);
      } else {
        return ((b * args.rows_per_seq + row) * args.slots + slot) * args.row_bytes;
      }
    };
    // Groups of 4: all loads of a group are issued before its stores.  Safe
    // because sources are never earlier destinations (accept[j] >= j).
    for (int64_t j0 = 0; j0 < n; j0 += 4) {
      Vec v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t j = j0 + k;
        if (j < n && a[j] != j) v[k] = *reinterpret_cast<const Vec*>(base + offset(len + a[j]));
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t j = j0 + k;
        if (j < n && a[j] != j) *reinterpret_cast<Vec*>(base + offset(len + j)) = v[k];
      }
    }
  }
}

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
void launch_copies(const KvCompactPlan& plan, RowArgs args, cudaStream_t stream) {
  const int vec = vector_bytes(plan);
  const int64_t num_tensors = static_cast<int64_t>(plan.tensors.size());
  for (int64_t first = 0; first < num_tensors; first += kMaxTensors) {
    const int64_t count = std::min<int64_t>(kMaxTensors, num_tensors - first);
    TensorPtrs ptrs{};
    for (int64_t t = 0; t < count; ++t) {
      ptrs.ptr[t] = static_cast<char*>(plan.tensors[first + t].data_ptr());
    }
    const int64_t items = count * plan.batch * plan.rows_per_seq * (plan.row_bytes / vec);
    if (items == 0) continue;
    const int64_t blocks = std::min<int64_t>((items + kThreads - 1) / kThreads, 65535LL * 16);
    switch (vec) {
      case 16: copy_accepted<uint4, kPaged><<<blocks, kThreads, 0, stream>>>(ptrs, count, args); break;
      case 8: copy_accepted<uint2, kPaged><<<blocks, kThreads, 0, stream>>>(ptrs, count, args); break;
      case 4: copy_accepted<uint32_t, kPaged><<<blocks, kThreads, 0, stream>>>(ptrs, count, args); break;
      default: copy_accepted<uint16_t, kPaged><<<blocks, kThreads, 0, stream>>>(ptrs, count, args); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <bool kPaged>
void run(const char* op, const KvCompactPlan& plan, const at::Tensor& cache_lens,
         const at::Tensor& accept_nodes, const at::Tensor& num_accepted,
         const at::Tensor* block_tables) {
  if (plan.batch == 0) return;
  const c10::cuda::CUDAGuard guard(cache_lens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = cache_lens.options();
  at::Tensor status = at::empty({4}, opts.dtype(at::kLong));
  at::Tensor base_lens = at::empty({plan.batch}, opts);
  const bool has_tensors = !plan.tensors.empty();
  const int64_t capacity = has_tensors ? plan.capacity : std::numeric_limits<int32_t>::max();
  const int32_t* tables = kPaged ? block_tables->data_ptr<int32_t>() : nullptr;
  validate_and_advance<<<1, kThreads, 0, stream>>>(
      cache_lens.data_ptr<int32_t>(), accept_nodes.data_ptr<int32_t>(),
      num_accepted.data_ptr<int32_t>(), tables, plan.batch, plan.width, capacity, kPaged,
      has_tensors, plan.page_size, plan.num_pages, plan.max_blocks,
      base_lens.data_ptr<int32_t>(), status.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (has_tensors && plan.row_bytes > 0) {
    RowArgs args{accept_nodes.data_ptr<int32_t>(), num_accepted.data_ptr<int32_t>(),
                 base_lens.data_ptr<int32_t>(), status.data_ptr<int64_t>(),
                 plan.batch, plan.width, plan.rows_per_seq, plan.row_bytes, plan.slots,
                 tables, plan.max_blocks, plan.page_size};
    launch_copies<kPaged>(plan, args, stream);
  }
  if (const auto host = eager_errors(status, stream)) {
    const int64_t* e = host->data_ptr<int64_t>();
    if (e[0] != kv::kOk) {
      throw_row_error(op, plan, e[1],
                      kv::RowCheck{static_cast<int32_t>(e[0]), static_cast<int32_t>(e[2]), e[3]});
    }
  }
}

void kv_compact_cuda(at::TensorList caches, const at::Tensor& cache_lens,
                     const at::Tensor& accept_nodes, const at::Tensor& num_accepted) {
  constexpr const char* op = "specdec::kv_compact_";
  const KvCompactPlan plan = check_kv_compact(op, caches, cache_lens, accept_nodes, num_accepted);
  run<false>(op, plan, cache_lens, accept_nodes, num_accepted, nullptr);
}

void kv_compact_paged_cuda(at::TensorList k_pages, at::TensorList v_pages,
                           const at::Tensor& block_tables, const at::Tensor& cache_lens,
                           const at::Tensor& accept_nodes, const at::Tensor& num_accepted) {
  constexpr const char* op = "specdec::kv_compact_paged_";
  const KvCompactPlan plan = check_kv_compact_paged(op, k_pages, v_pages, block_tables, cache_lens,
                                                    accept_nodes, num_accepted);
  run<true>(op, plan, cache_lens, accept_nodes, num_accepted, &block_tables);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("kv_compact_", &kv_compact_cuda);
  m.impl("kv_compact_paged_", &kv_compact_paged_cuda);
}

}  // namespace specdec
