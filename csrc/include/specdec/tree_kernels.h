// build_tree, the CUDA kernel body, torch-free: a template over the context of
// specdec/kernel_ctx.h, so csrc/cuda/tree_cuda.cu runs it on the GPU and the C++
// tests on the host CUDA emulator (tests/cpp/cuda_emulator.h).
#pragma once

#include <cstdint>

#include "specdec/block_collectives.h"
#include "specdec/errors.h"
#include "specdec/kernel_ctx.h"
#include "specdec/tree_rules.h"

namespace specdec::tree::device {

// One block per tree.  Thread 0 validates the parent array; then each thread
// owns word columns of the mask: row i's word w reads only the parent's word w,
// written earlier by the same thread, so no barrier is needed between rows.
// An invalid tree gets zero masks and depths and its error record.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE void build_tree_block(const Ctx& ctx, const int32_t* parents, int64_t nodes, int64_t words,
                                          int32_t* mask, int32_t* depth, ErrorRecord* errors) {
  block::Shared* shm = block::shared_scalars(ctx);
  const int64_t b = ctx.block_x();
  const int tid = ctx.thread(), threads = ctx.block_dim();
  const int32_t* row = parents + b * nodes;
  int32_t* m = mask + b * nodes * words;
  if (tid == 0) {
    const ErrorRecord e = check_parents(row, nodes, b);
    shm->flag = e.code == kOk;
    if (e.code != kOk) errors[b] = e;
  }
  ctx.sync();
  if (!shm->flag) {
    for (int64_t i = tid; i < nodes * words; i += threads) m[i] = 0;
    for (int64_t i = tid; i < nodes; i += threads) depth[b * nodes + i] = 0;
    return;
  }
  for (int64_t w = tid; w < words; w += threads) mask_column(row, nodes, words, w, m);
  if (tid == 0) depths(row, nodes, depth + b * nodes);
}

}  // namespace specdec::tree::device
