// KV rollback, the CUDA kernel bodies, torch-free: templates over the context
// of specdec/kernel_ctx.h, so csrc/cuda/kv_compact_cuda.cu runs them on the GPU and the
// C++ tests on the host CUDA emulator (tests/cpp/cuda_emulator.h).
//
//  1. validate_and_advance (one block): checks every row with the same code as
//     the CPU kernel (specdec/kv_compact_rules.h).  If all rows are valid it snapshots
//     the old cache_lens and advances cache_lens; otherwise it records the first
//     failing row in `status` and changes nothing.
//  2. copy_accepted (grid-stride): each thread owns one vector-sized column of
//     one (tensor, sequence, row) and copies the accepted slots in ascending
//     order, which equals the sequential definition.  Nothing if status is not kOk.
#pragma once

#include <cstdint>

#include "specdec/errors.h"
#include "specdec/kernel_ctx.h"
#include "specdec/kv_compact_rules.h"

namespace specdec::kv::device {

constexpr int kMaxTensors = 128;  // 1 KiB of pointers in the kernel parameters
constexpr int kThreads = 256;
constexpr size_t kValidateSmem = 16;  // the first failing row

struct TensorPtrs {
  char* ptr[kMaxTensors];
};

struct ValidateArgs {
  int32_t* lens;
  const int32_t *accept, *num, *tables;
  int64_t batch, width, capacity;
  bool paged, check_slots;
  int64_t page_size, num_pages, max_blocks;
  int32_t* base_lens;   // out: cache_lens before this step
  ErrorRecord* status;  // out: the first failing row's record, or code kOk
};

struct RowArgs {
  const int32_t* accept;
  const int32_t* num;
  const int32_t* base_lens;  // cache_lens before this step (written by validate_and_advance)
  const ErrorRecord* status;
  int64_t batch, width, rows_per_seq, row_bytes, slots;
  // paged
  const int32_t* tables;
  int64_t max_blocks, page_size;
};

SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_one(const ValidateArgs& a, int64_t b) {
  ErrorRecord c = check_row(b, a.lens[b], a.num[b], a.accept + b * a.width, a.width, a.capacity);
  if (c.code == kOk && a.paged && a.check_slots && a.num[b] > 0) {
    c = check_blocks(b, a.tables + b * a.max_blocks, a.lens[b], a.accept[b * a.width + a.num[b] - 1], a.page_size,
                     a.num_pages);
    if (c.code == kOk) {
      c = check_pages_private(b, a.tables, a.lens, a.accept, a.num, a.width, a.max_blocks, a.capacity, a.page_size);
    }
  }
  return c;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE void validate_and_advance(const Ctx& ctx, const ValidateArgs& a) {
  long long* first_bad = reinterpret_cast<long long*>(ctx.shared());
  const int tid = ctx.thread(), threads = ctx.block_dim();
  if (tid == 0) *first_bad = a.batch;
  ctx.sync();
  for (int64_t b = tid; b < a.batch; b += threads) {
    if (check_one(a, b).code != kOk) ctx.atomic_min(first_bad, static_cast<long long>(b));
  }
  ctx.sync();
  const int64_t bad = *first_bad;
  if (bad < a.batch) {
    if (tid == 0) *a.status = check_one(a, bad);
    return;
  }
  if (tid == 0) *a.status = no_error(0);
  for (int64_t b = tid; b < a.batch; b += threads) {
    a.base_lens[b] = a.lens[b];
    a.lens[b] += a.num[b];
  }
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, typename Vec, bool kPaged>
SPECDEC_HOST_DEVICE void copy_accepted(const Ctx& ctx, const TensorPtrs& ptrs, int64_t num_tensors,
                                       const RowArgs& args) {
  if (args.status->code != kOk) return;
  const int64_t vecs = args.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const int64_t items = num_tensors * args.batch * args.rows_per_seq * vecs;
  const int64_t stride = ctx.grid_dim_x() * ctx.block_dim();
  for (int64_t i = ctx.block_x() * ctx.block_dim() + ctx.thread(); i < items; i += stride) {
    const int64_t col = i % vecs;
    int64_t rest = i / vecs;
    const int64_t row = rest % args.rows_per_seq;
    rest /= args.rows_per_seq;
    const int64_t b = rest % args.batch;
    const int64_t t = rest / args.batch;
    const int64_t n = args.num[b];
    const int64_t len = args.base_lens[b];
    const int32_t* acc = args.accept + b * args.width;
    char* base = ptrs.ptr[t] + col * static_cast<int64_t>(sizeof(Vec));
    auto offset = [&](int64_t slot) -> int64_t {
      if constexpr (kPaged) {
        return paged_offset(args.tables + b * args.max_blocks, slot, args.page_size, args.row_bytes);
      } else {
        return ((b * args.rows_per_seq + row) * args.slots + slot) * args.row_bytes;
      }
    };
    // Groups of 4: all loads of a group are issued before its stores.  Safe
    // because sources are never earlier destinations (accept[j] >= j).
    for (int64_t j0 = 0; j0 < n; j0 += 4) {
      Vec v[4];
      SPECDEC_UNROLL
      for (int k = 0; k < 4; ++k) {
        const int64_t j = j0 + k;
        if (j < n && acc[j] != j) v[k] = *reinterpret_cast<const Vec*>(base + offset(len + acc[j]));
      }
      SPECDEC_UNROLL
      for (int k = 0; k < 4; ++k) {
        const int64_t j = j0 + k;
        if (j < n && acc[j] != j) *reinterpret_cast<Vec*>(base + offset(len + j)) = v[k];
      }
    }
  }
}

}  // namespace specdec::kv::device
