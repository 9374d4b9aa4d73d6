// Block-wide collectives of the one-block-per-row CUDA kernels (acceptance,
// build_tree, sampling_probs), torch-free templates over the context of
// specdec/kernel_ctx.h.  Every thread of the block must call them; results are
// broadcast to all threads.  Sums and scans are in float64.
#pragma once

#include <cstdint>

#include "specdec/kernel_ctx.h"

namespace specdec::block {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;  // consecutive vocabulary entries per thread in a scan tile

constexpr int kWide = 16;  // values per sum_wide

// The block's shared scalars, at the start of dynamic shared memory; the walk
// kernels put their int64 scratch (one per node) after it.
struct Shared {
  double red[kWarps];
  long long idx[kWarps];
  int flag;
  double wide[kWarps * kWide];  // sum_wide's per-warp partial sums
};
constexpr size_t kSharedBytes = (sizeof(Shared) + 15) / 16 * 16;

template <class Ctx>
SPECDEC_HOST_DEVICE SPECDEC_INLINE Shared* shared_scalars(const Ctx& ctx) {
  return reinterpret_cast<Shared*>(ctx.shared());
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE double sum(const Ctx& ctx, double v, double* shm) {
  for (int o = 16; o > 0; o >>= 1) v += ctx.shfl_xor(v, o);
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  ctx.sync();  // shm may still be read by a previous collective
  if (lane == 0) shm[warp] = v;
  ctx.sync();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += shm[w];
  return total;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE int64_t min(const Ctx& ctx, int64_t v, long long* shm) {
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t other = ctx.shfl_xor(v, o);
    v = other < v ? other : v;
  }
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  ctx.sync();
  if (lane == 0) shm[warp] = v;
  ctx.sync();
  int64_t m = shm[0];
  for (int w = 1; w < kWarps; ++w) m = shm[w] < m ? shm[w] : m;
  return m;
}

// N <= kWide sums at once: v[j] becomes the block's sum of v[j], each reduced
// exactly as sum() reduces one value (the same shuffle tree, then the warps in
// order), with two barriers for all N instead of two each.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <int N, class Ctx>
SPECDEC_HOST_DEVICE void sum_wide(const Ctx& ctx, double (&v)[N], double* shm) {
  static_assert(N <= kWide, "sum_wide: at most kWide values");
  for (int j = 0; j < N; ++j) {
    for (int o = 16; o > 0; o >>= 1) v[j] += ctx.shfl_xor(v[j], o);
  }
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  ctx.sync();  // shm may still be read by a previous collective
  if (lane == 0) {
    for (int j = 0; j < N; ++j) shm[warp * N + j] = v[j];
  }
  ctx.sync();
  for (int j = 0; j < N; ++j) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += shm[w * N + j];
    v[j] = total;
  }
}

// Exclusive prefix of v over the block; *total receives the block's sum.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx>
SPECDEC_HOST_DEVICE double exclusive_scan(const Ctx& ctx, double v, double* shm, double* total) {
  const int warp = ctx.thread() / 32, lane = ctx.thread() % 32;
  double incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const double up = ctx.shfl_up(incl, static_cast<unsigned>(o));
    if (lane >= o) incl += up;
  }
  ctx.sync();
  if (lane == 31) shm[warp] = incl;
  ctx.sync();
  double before = 0.0, all = 0.0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += shm[w];
    all += shm[w];
  }
  *total = all;
  return before + incl - v;
}

}  // namespace specdec::block
