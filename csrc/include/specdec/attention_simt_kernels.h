// Tree attention, SIMT kernel body (fp32, and the fp16 / bf16 calls the
// tensor-core kernel cannot take), and the lse merge of split partials that
// both kernels use.  Torch-free, a template over the context of
// specdec/kernel_ctx.h: csrc/cuda/attention_cuda.cu runs it on the GPU, the C++ tests on the
// host emulator (tests/cpp/cuda_emulator.h).
//
// Block (split, b * Hkv + h, query tile): 16 query rows of KV head h's GQA
// group (row r = node * G + g) against the split's key range, K/V tiles staged
// in shared memory once for all 16 rows; 8 threads per row share its scores,
// softmax statistics and kMaxD / 8 output columns.  fp32 throughout.  With one
// split the block writes the result; otherwise normalised partials and their
// lse go to a workspace that merge_row combines.
//
// Features (docs/ops.md): kMaxD is the bucket of max(Dk, Dv), so the value
// head size may differ from the key's; the window starts the key loop at the
// first slot any of the block's rows can see (window_first_slot: earlier
// tiles are never loaded) and tests every score (sees); softcap caps the
// scores (soft_cap); the sink joins the denominator in finish_row, in the
// block with one split, in merge_row with several (exactly once either way).
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "specdec/attention_rules.h"
#include "specdec/kernel_ctx.h"

namespace specdec::attention::simt {

using kernel::kBF16;
using kernel::kF16;
using kernel::kF32;
using kernel::load;
using kernel::store;

constexpr int kThreads = 128;
constexpr int kRowsPerTile = 16;
constexpr int kThreadsPerRow = kThreads / kRowsPerTile;  // 8

template <int kMaxD>
struct Tile {
  static constexpr int kKeys = kMaxD >= 256 ? 8 : 4096 / kMaxD;  // keys per shared tile
  static constexpr int kStride = kMaxD + 1;                      // padded shared row
  static constexpr int kCols = kMaxD / kThreadsPerRow;           // output columns per thread
  static constexpr size_t kHeader = 16;                          // the block's `ok` flag
  static constexpr size_t kSmem =
      kHeader + sizeof(float) * ((kRowsPerTile + 2 * kKeys) * kStride + kRowsPerTile * kKeys);
};

struct Params {
  const void *q, *k, *v;  // q's dtype; layouts as in attention_mma_kernels.h (v: last dim v_dim)
  const int32_t *lens, *mask, *tables;
  void* out;  // [B, N, Hq, v_dim]
  float *lse, *part_out, *part_lse;
  ErrorRecord* errors;  // [B], zeroed
  int64_t batch, nodes, q_heads, kv_heads, dim, words, capacity;
  int64_t page_size, max_blocks, num_pages;
  float scale;
  int64_t splits, chunk;
  int64_t v_dim = 0;                  // Dv (set it: the value head size, dim or another)
  int64_t window = 0;                 // 0: no sliding window
  float softcap = 0.0f;               // 0: no soft-capping
  const float* sinks = nullptr;       // [Hq] or nullptr
  ErrorRecord* sink_error = nullptr;  // one record, zeroed: the first non-finite sink
};

// Keys split so that about `target_blocks` blocks run (at least 4 key tiles
// per split, at most 64 splits, fp32 partials bounded to 256 MiB).
template <int kMaxD>
inline void plan_splits(Params& a, int64_t q_tiles, int64_t target_blocks) {
  const KeySplit ks = split_keys(a.capacity, Tile<kMaxD>::kKeys, 4, a.batch * a.kv_heads * q_tiles, target_blocks,
                                 a.batch * a.nodes * a.q_heads, a.v_dim);
  a.splits = ks.splits;
  a.chunk = ks.chunk;
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, int kKind, int kMaxD, bool kPaged>
SPECDEC_HOST_DEVICE void tree_attention_block(const Ctx& ctx, const Params& a) {
  using T = Tile<kMaxD>;
  unsigned char* smem = ctx.shared();
  int* ok = reinterpret_cast<int*>(smem);
  int64_t* first_slot = reinterpret_cast<int64_t*>(smem + 8);  // the window's start for this block
  float* sQ = reinterpret_cast<float*>(smem + T::kHeader);
  float* sK = sQ + kRowsPerTile * T::kStride;
  float* sV = sK + T::kKeys * T::kStride;
  float* sP = sV + T::kKeys * T::kStride;

  const int tid = ctx.thread();
  const int64_t split = ctx.block_x();
  const int64_t b = ctx.block_y() / a.kv_heads, h = ctx.block_y() % a.kv_heads, tile = ctx.block_z();
  const int64_t G = a.q_heads / a.kv_heads, rows = a.nodes * G, D = a.dim, Dv = a.v_dim;
  const int rr = tid / kThreadsPerRow, lane = tid % kThreadsPerRow;
  const int64_t r = tile * kRowsPerTile + rr;
  const bool row_valid = r < rows;
  const int64_t node = row_valid ? r / G : 0, head = h * G + (row_valid ? r % G : 0);
  const int64_t length = a.lens[b];
  const int32_t* table = kPaged ? a.tables + b * a.max_blocks : nullptr;

  const int32_t* mseq = a.mask + b * a.nodes * a.words;
  if (tid == 0) {
    *ok = check_and_record(b, length, a.nodes, a.capacity, table, a.page_size, a.num_pages,
                           split == 0 && h == 0 && tile == 0, a.errors);
    const int64_t r_end = rows < (tile + 1) * kRowsPerTile ? rows : (tile + 1) * kRowsPerTile;
    *first_slot =
        window_first_slot(length, mseq, a.words, a.nodes, tile * kRowsPerTile / G, (r_end - 1) / G + 1, a.window);
    if (a.sink_error != nullptr && split == 0 && ctx.block_y() == 0 && tile == 0) {
      const ErrorRecord e = check_sinks(a.sinks, a.q_heads);
      if (e.code != kOk) *a.sink_error = e;
    }
  }
  for (int64_t idx = tid; idx < kRowsPerTile * kMaxD; idx += kThreads) {
    const int64_t qr = idx / kMaxD, d = idx % kMaxD, rq = tile * kRowsPerTile + qr;
    float val = 0.0f;
    if (rq < rows && d < D)
      val = load<kKind>(a.q, ((b * a.nodes + rq / G) * a.q_heads + h * G + rq % G) * D + d) * a.scale;
    sQ[qr * T::kStride + d] = val;
  }
  ctx.sync();

  const int64_t total = *ok ? length + a.nodes : 0;
  const int64_t split_begin = split * a.chunk, end = total < split_begin + a.chunk ? total : split_begin + a.chunk;
  const int64_t begin = split_begin > *first_slot ? split_begin : *first_slot;
  const int32_t* mrow = mseq + node * a.words;
  const int64_t query_pos = a.window > 0 ? length + node_depth(mrow, a.words, a.nodes) : 0;
  float acc[T::kCols];
  SPECDEC_UNROLL
  for (int e = 0; e < T::kCols; ++e) acc[e] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;

  for (int64_t t0 = begin; t0 < end; t0 += T::kKeys) {
    for (int64_t idx = tid; idx < T::kKeys * kMaxD; idx += kThreads) {
      const int64_t kk = idx / kMaxD, d = idx % kMaxD, slot = t0 + kk;
      float kv = 0.0f, vv = 0.0f;
      if (slot < end && (d < D || d < Dv)) {
        int64_t token;  // the slot's row of KV head h, in rows of the cache
        if constexpr (kPaged) {
          const int64_t page = table[slot / a.page_size];
          token = (page * a.page_size + slot % a.page_size) * a.kv_heads + h;
        } else {
          token = (b * a.kv_heads + h) * a.capacity + slot;
        }
        if (d < D) kv = load<kKind>(a.k, token * D + d);
        if (d < Dv) vv = load<kKind>(a.v, token * Dv + d);
      }
      sK[kk * T::kStride + d] = kv;
      sV[kk * T::kStride + d] = vv;
    }
    ctx.sync();
    constexpr int kPer = (T::kKeys + kThreadsPerRow - 1) / kThreadsPerRow;
    float sc[kPer];
    float tile_max = -INFINITY;
    SPECDEC_UNROLL
    for (int j = 0; j < kPer; ++j) {
      const int kk = lane + j * kThreadsPerRow;
      const int64_t slot = t0 + kk;
      float x = -INFINITY;
      if (kk < T::kKeys && row_valid && slot < end &&
          sees(slot, length, mrow, mseq, a.words, a.nodes, query_pos, a.window)) {
        x = 0.0f;
        for (int64_t d = 0; d < D; ++d) x += sQ[rr * T::kStride + d] * sK[kk * T::kStride + d];
        x = soft_cap(x, a.softcap);
      }
      sc[j] = x;
      tile_max = fmaxf(tile_max, x);
    }
    for (int o = kThreadsPerRow / 2; o > 0; o >>= 1) tile_max = fmaxf(tile_max, ctx.shfl_xor(tile_max, o));
    const float m_new = fmaxf(m_run, tile_max);
    float alpha = 1.0f, psum = 0.0f;
    if (m_new != -INFINITY) {
      alpha = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
      SPECDEC_UNROLL
      for (int j = 0; j < kPer; ++j) {
        sc[j] = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - m_new);
        psum += sc[j];
      }
    } else {
      SPECDEC_UNROLL
      for (int j = 0; j < kPer; ++j) sc[j] = 0.0f;
    }
    for (int o = kThreadsPerRow / 2; o > 0; o >>= 1) psum += ctx.shfl_xor(psum, o);
    l_run = l_run * alpha + psum;
    m_run = m_new;
    SPECDEC_UNROLL
    for (int j = 0; j < kPer; ++j) {
      const int kk = lane + j * kThreadsPerRow;
      if (kk < T::kKeys) sP[rr * T::kKeys + kk] = sc[j];
    }
    ctx.sync();
    SPECDEC_UNROLL
    for (int e = 0; e < T::kCols; ++e) {
      const int d = lane * T::kCols + e;
      float x = acc[e] * alpha;
      for (int kk = 0; kk < T::kKeys; ++kk) x += sP[rr * T::kKeys + kk] * sV[kk * T::kStride + d];
      acc[e] = x;
    }
    ctx.sync();
  }

  if (!row_valid) return;  // after the last barrier
  const int64_t out_row = (b * a.nodes + node) * a.q_heads + head;
  // One split: the sink joins here; several: in merge_row.
  const RowFinish f = finish_row(m_run, l_run, a.splits == 1 ? sink_logit(a.sinks, head) : -INFINITY);
  if (a.splits == 1) {
    SPECDEC_UNROLL
    for (int e = 0; e < T::kCols; ++e) {
      const int64_t d = lane * T::kCols + e;
      if (d < Dv) store<kKind>(a.out, out_row * Dv + d, acc[e] * f.inv);
    }
    if (lane == 0) a.lse[out_row] = f.lse;
  } else {
    const int64_t part_row = split * a.batch * a.nodes * a.q_heads + out_row;
    SPECDEC_UNROLL
    for (int e = 0; e < T::kCols; ++e) {
      const int64_t d = lane * T::kCols + e;
      if (d < Dv) a.part_out[part_row * Dv + d] = acc[e] * f.inv;
    }
    if (lane == 0) a.part_lse[part_row] = f.lse;
  }
}

// One row of the merge: out = sum_s exp(lse_s - lse) * out_s,
// lse = log(sum_s exp(lse_s) + exp(sink)) (sink: the row's sink logit, -inf for
// none; the partials hold none, so it joins exactly once, here); columns d0,
// d0 + step, ... of the row (`dim`: the value head size).
template <int kKind>
SPECDEC_HOST_DEVICE void merge_row(const float* part_out, const float* part_lse, int64_t splits, int64_t rows,
                                   int64_t dim, int64_t row, int64_t d0, int64_t step, void* out, float* lse,
                                   float sink = -INFINITY) {
  float m = sink;
  for (int64_t s = 0; s < splits; ++s) m = fmaxf(m, part_lse[s * rows + row]);
  float weight_sum = sink == -INFINITY ? 0.0f : expf(sink - m);
  for (int64_t s = 0; s < splits; ++s) {
    const float ls = part_lse[s * rows + row];
    weight_sum += ls == -INFINITY ? 0.0f : expf(ls - m);
  }
  for (int64_t d = d0; d < dim; d += step) {
    float x = 0.0f;
    if (m != -INFINITY) {
      for (int64_t s = 0; s < splits; ++s) {
        const float ls = part_lse[s * rows + row];
        if (ls != -INFINITY) x += expf(ls - m) * part_out[(s * rows + row) * dim + d];
      }
      x /= weight_sum;
    }
    store<kKind>(out, row * dim + d, x);
  }
  if (d0 == 0) lse[row] = m == -INFINITY ? -INFINITY : m + logf(weight_sum);
}

}  // namespace specdec::attention::simt
