// Tree attention on tensor cores (fp16 / bf16): the kernel body, torch-free.
//
// One block = one KV head h of one sequence b, one split of its key range
// [0, L + N) and one tile of up to 16 * warps query rows of h's GQA group (row
// r = node * G + g, all G query heads of a node side by side).  With N * G <=
// 128 every query of the group is in one tile, so each K/V element of the
// prefix is read from global memory once per KV head (once per split chunk).
// K/V tiles are staged in shared memory and shared by all warps; warp w owns
// rows [16 w, 16 w + 16) of the tile and computes, per key tile,
//
//   S = Q K^T   (mma.m16n8k16, fp32 accumulate)   -> mask, online softmax
//   O += P V    (P rounded to the input type, fp32 accumulate)
//
// with the row statistics of rows g and g + 8 (g = lane / 4) kept in the
// four lanes that hold them (the accumulator layout), reduced by shuffles.
//
// Features (docs/ops.md): the value head size must equal the key's here (the
// launcher routes Dv != Dk to the SIMT kernel); the window starts the key loop
// at the first slot any of the block's rows can see (window_first_slot: earlier
// tiles are never copied) and tests every score (sees); softcap caps the
// scores (soft_cap) before the log2 scaling; the sink joins the denominator in
// finish_row_log2 with one split, in merge_row with several (exactly once).
//
// The body is a template over a context `Ctx` that supplies the thread and
// block indices, shared memory, __syncthreads, __shfl_xor_sync and the mma
// instruction.  csrc/cuda/attention_cuda.cu instantiates it with the device context of specdec/kernel_ctx.h;
// tests/cpp/cuda_emulator.h runs the same code on the host, one std::thread per
// CUDA thread, with an mma built from the PTX ISA's fragment tables.  Nothing
// in this file may diverge inside a warp around ctx.shfl_xor / ctx.mma, or
// inside the block around ctx.sync: the emulator deadlocks (and reports) if it
// does, as the hardware would misbehave.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "specdec/attention_rules.h"
#include "specdec/kernel_ctx.h"
#include "specdec/macros.h"

namespace specdec::attention::mma {

using kernel::Chunk16;
using kernel::pack2;

// Everything a block needs; pointers are raw bit patterns of fp16 / bf16.
struct Params {
  const uint16_t* q;  // [B, N, Hq, D]
  const uint16_t* k;  // [B, Hkv, S, D] or pages [P, page_size, Hkv, D]
  const uint16_t* v;
  const int32_t* lens;    // [B]
  const int32_t* mask;    // [B, N, words]
  const int32_t* tables;  // [B, max_blocks] (paged) or nullptr
  uint16_t* out;          // [B, N, Hq, D]
  float* lse;             // [B, N, Hq]
  float* part_out;        // [splits, B * N * Hq, D] when splits > 1
  float* part_lse;        // [splits, B * N * Hq]
  ErrorRecord* errors;    // [B], zeroed
  int64_t batch, nodes, q_heads, kv_heads, dim, words, capacity;
  int64_t page_size, max_blocks, num_pages;
  float scale;
  int64_t splits, chunk, q_tiles;
  int warps;                          // blockDim.x / 32, 1..kMaxWarps
  int64_t window = 0;                 // 0: no sliding window
  float softcap = 0.0f;               // 0: no soft-capping
  const float* sinks = nullptr;       // [Hq] or nullptr
  ErrorRecord* sink_error = nullptr;  // one record, zeroed: the first non-finite sink
};

constexpr int kMaxWarps = 8;

// Keys per shared tile and the padded shared row (in 16-bit elements: 8 extra
// keep the fragment loads of 8 rows x 4 words on 32 distinct banks).
template <int kD>
struct Tile {
  static_assert(kD == 64 || kD == 128 || kD == 256, "head dim bucket");
  static constexpr int kKeys = kD <= 128 ? 64 : 32;
  static constexpr int kStride = kD + 8;
  static constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  static constexpr size_t kHeader = 16;   // the block's `ok` flag
  // Q tile, then two stages of (K tile, V tile): the next tile's copies are
  // in flight while the current one is used.
  static constexpr size_t smem_bytes(int warps) {
    return kHeader + sizeof(uint16_t) * static_cast<size_t>(16 * warps + 4 * kKeys) * kStride;
  }
};

// The launch: warps per block, query tiles and the split of the key range.
// Splits come from the cache capacity (the lengths stay on the device) so that
// about `target_blocks` blocks run, each split at least two key tiles long,
// the fp32 partials bounded to 256 MiB.
struct Plan {
  int warps = 1;
  int64_t q_tiles = 1, splits = 1, chunk = 0;
  size_t smem = 0;
};

template <int kD>
inline Plan make_plan(int64_t batch, int64_t nodes, int64_t q_heads, int64_t kv_heads, int64_t dim, int64_t capacity,
                      int64_t target_blocks) {
  using T = Tile<kD>;
  Plan pl;
  const int64_t rows = nodes * (q_heads / kv_heads);
  const int64_t warps = (rows + 15) / 16;
  pl.warps = static_cast<int>(warps < 1 ? 1 : warps > kMaxWarps ? kMaxWarps : warps);
  pl.q_tiles = (rows + 16 * pl.warps - 1) / (16 * pl.warps);
  const KeySplit ks =
      split_keys(capacity, T::kKeys, 2, batch * kv_heads * pl.q_tiles, target_blocks, batch * nodes * q_heads, dim);
  pl.splits = ks.splits;
  pl.chunk = ks.chunk;
  pl.smem = T::smem_bytes(pl.warps);
  return pl;
}

// Fetches 16 bytes of K or V: row `slot` of the block's sequence and KV head,
// 8 elements from column 8 * ch.
template <bool kPaged>
SPECDEC_HOST_DEVICE SPECDEC_INLINE const uint16_t* kv_row(const Params& p, const uint16_t* base, const int32_t* table,
                                                          int64_t b, int64_t h, int64_t slot) {
  if constexpr (kPaged) {  // 32-bit division: the launcher keeps the capacity below 2^31
    const int32_t s32 = static_cast<int32_t>(slot), ps = static_cast<int32_t>(p.page_size);
    const int64_t page = table[s32 / ps];
    return base + ((page * p.page_size + s32 % ps) * p.kv_heads + h) * p.dim;
  } else {
    return base + ((b * p.kv_heads + h) * p.capacity + slot) * p.dim;
  }
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Ctx, bool kBf16, bool kPaged, int kD>
SPECDEC_HOST_DEVICE void tree_attention_block(const Ctx& ctx, const Params& p) {
  using T = Tile<kD>;
  constexpr int kKeys = T::kKeys, kStride = T::kStride, kW = kStride / 2;  // kW: 32-bit words per row
  constexpr int kDTiles = kD / 8, kKTiles = kKeys / 8;
  constexpr float kLog2e = 1.4426950408889634f;

  unsigned char* smem = ctx.shared();
  int* ok = reinterpret_cast<int*>(smem);
  int64_t* first_slot = reinterpret_cast<int64_t*>(smem + 8);  // the window's start for this block
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem + T::kHeader);
  uint16_t* sKV = sQ + 16 * p.warps * kStride;  // stage s: K at sKV + 2s * kKeys * kStride, then V
  const uint32_t* sQw = reinterpret_cast<const uint32_t*>(sQ);

  const int tid = ctx.thread(), threads = 32 * p.warps;
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
  const int64_t tile = ctx.block_x() % p.q_tiles, split = ctx.block_x() / p.q_tiles;
  const int64_t b = ctx.block_y() / p.kv_heads, h = ctx.block_y() % p.kv_heads;
  const int64_t G = p.q_heads / p.kv_heads, rows = p.nodes * G, D = p.dim;
  const int64_t row0 = tile * 16 * p.warps;  // first query row of the tile
  const int64_t length = p.lens[b];
  const int32_t* table = kPaged ? p.tables + b * p.max_blocks : nullptr;

  const int32_t* mseq = p.mask + b * p.nodes * p.words;
  if (tid == 0) {
    *ok = check_and_record(b, length, p.nodes, p.capacity, table, p.page_size, p.num_pages,
                           split == 0 && h == 0 && tile == 0, p.errors);
    const int64_t r_end = rows < row0 + 16 * p.warps ? rows : row0 + 16 * p.warps;
    *first_slot = window_first_slot(length, mseq, p.words, p.nodes, row0 / G, (r_end - 1) / G + 1, p.window);
    if (p.sink_error != nullptr && split == 0 && ctx.block_y() == 0 && tile == 0) {
      const ErrorRecord e = check_sinks(p.sinks, p.q_heads);
      if (e.code != kOk) *p.sink_error = e;
    }
  }
  // Q tile: rows past N * G and columns past D are zero.
  for (int idx = tid; idx < 16 * p.warps * T::kChunks; idx += threads) {
    const int r = idx / T::kChunks, ch = idx % T::kChunks;
    const int64_t rq = row0 + r;
    Chunk16 val{{0u, 0u, 0u, 0u}};
    if (rq < rows && 8 * ch < D) {
      val = *reinterpret_cast<const Chunk16*>(p.q + ((b * p.nodes + rq / G) * p.q_heads + h * G + rq % G) * D + 8 * ch);
    }
    *reinterpret_cast<Chunk16*>(sQ + r * kStride + 8 * ch) = val;
  }
  ctx.sync();

  const int64_t total = *ok ? length + p.nodes : 0;
  const int64_t split_begin = split * p.chunk, end = total < split_begin + p.chunk ? total : split_begin + p.chunk;
  const int64_t begin = split_begin > *first_slot ? split_begin : *first_slot;
  // This thread's two rows (g and g + 8 of its warp's 16), their mask rows and
  // (with a window) their query positions.
  int64_t row[2], query_pos[2];
  const int32_t* mrow[2];
  SPECDEC_UNROLL
  for (int i = 0; i < 2; ++i) {
    row[i] = row0 + 16 * warp + g + 8 * i;
    mrow[i] = mseq + (row[i] < rows ? row[i] / G : 0) * p.words;
    query_pos[i] = p.window > 0 ? length + node_depth(mrow[i], p.words, p.nodes) : 0;
  }
  const float scale2 = p.scale * kLog2e;  // scores in log2 units: exp2 below
  float o[kDTiles][4];
  SPECDEC_UNROLL
  for (int t = 0; t < kDTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};  // l_run: this lane's part

  // Copies the K and V tile of keys [t0, t0 + kKeys) into `stage`; keys past
  // `end` and columns past D become zeros (finite: they meet P = 0).
  auto issue = [&](int64_t t0, int stage) {
    uint16_t* dK = sKV + 2 * stage * kKeys * kStride;
    uint16_t* dV = dK + kKeys * kStride;
    for (int idx = tid; idx < kKeys * T::kChunks; idx += threads) {
      const int kk = idx / T::kChunks, ch = idx % T::kChunks;
      const int64_t slot = t0 + kk;
      const bool valid = slot < end && 8 * ch < D;
      const uint16_t* srcK = valid ? kv_row<kPaged>(p, p.k, table, b, h, slot) + 8 * ch : p.k;
      const uint16_t* srcV = valid ? kv_row<kPaged>(p, p.v, table, b, h, slot) + 8 * ch : p.v;
      ctx.cp_async16(dK + kk * kStride + 8 * ch, srcK, valid);
      ctx.cp_async16(dV + kk * kStride + 8 * ch, srcV, valid);
    }
    ctx.cp_async_commit();
  };
  if (begin < end) issue(begin, 0);
  int stage = 0;
  for (int64_t t0 = begin; t0 < end; t0 += kKeys, stage ^= 1) {
    // Start the next tile (its stage was last read before the previous
    // iteration's closing barrier), then wait for this one.
    if (t0 + kKeys < end) {
      issue(t0 + kKeys, stage ^ 1);
    } else {
      ctx.cp_async_commit();  // an empty group keeps the count uniform
    }
    ctx.template cp_async_wait<1>();
    ctx.sync();
    const uint32_t* sKw = reinterpret_cast<const uint32_t*>(sKV + 2 * stage * kKeys * kStride);
    const uint16_t* sV = sKV + (2 * stage + 1) * kKeys * kStride;

    // S = Q K^T for this warp's 16 rows x kKeys keys.
    float s[kKTiles][4];
    SPECDEC_UNROLL
    for (int t = 0; t < kKTiles; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
    const int qr = 16 * warp + g;
    SPECDEC_UNROLL
    for (int kc = 0; kc < kD / 16; ++kc) {
      // A (16 x 16, row major): {row g, cols 2c..2c+1}, {row g+8, same}, then cols + 8.
      const uint32_t a[4] = {sQw[qr * kW + 8 * kc + c], sQw[(qr + 8) * kW + 8 * kc + c], sQw[qr * kW + 8 * kc + 4 + c],
                             sQw[(qr + 8) * kW + 8 * kc + 4 + c]};
      SPECDEC_UNROLL
      for (int t = 0; t < kKTiles; ++t) {
        // B (16 x 8, column n = key 8t + g): rows 2c..2c+1 and 2c+8..2c+9 = head-dim columns.
        const uint32_t bf[2] = {sKw[(8 * t + g) * kW + 8 * kc + c], sKw[(8 * t + g) * kW + 8 * kc + 4 + c]};
        ctx.template mma<kBf16>(s[t], a, bf);
      }
    }

    // Mask, online softmax.  s[t][0..1]: row g, keys 8t + 2c + {0,1}; s[t][2..3]: row g + 8.
    float tile_max[2] = {-INFINITY, -INFINITY};
    SPECDEC_UNROLL
    for (int t = 0; t < kKTiles; ++t) {
      SPECDEC_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2;
        const int64_t slot = t0 + 8 * t + 2 * c + (e & 1);
        const bool seen =
            row[i] < rows && slot < end && sees(slot, length, mrow[i], mseq, p.words, p.nodes, query_pos[i], p.window);
        if (!seen) {
          s[t][e] = -INFINITY;
        } else if (p.softcap > 0.0f) {
          s[t][e] = soft_cap(s[t][e] * p.scale, p.softcap) * kLog2e;
        } else {
          s[t][e] *= scale2;
        }
        tile_max[i] = fmaxf(tile_max[i], s[t][e]);
      }
    }
    float alpha[2];
    SPECDEC_UNROLL
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = fmaxf(tile_max[i], ctx.shfl_xor(tile_max[i], 1));
      tile_max[i] = fmaxf(tile_max[i], ctx.shfl_xor(tile_max[i], 2));
      const float m_new = fmaxf(m_run[i], tile_max[i]);
      // Nothing seen yet (m_new = -inf): keep the zeros, alpha 1.
      alpha[i] = m_new == -INFINITY ? 1.0f : exp2f(m_run[i] - m_new);
      m_run[i] = m_new;
      l_run[i] *= alpha[i];
    }
    SPECDEC_UNROLL
    for (int t = 0; t < kKTiles; ++t) {
      SPECDEC_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2;
        s[t][e] = s[t][e] == -INFINITY ? 0.0f : exp2f(s[t][e] - m_run[i]);
        l_run[i] += s[t][e];
      }
    }
    SPECDEC_UNROLL
    for (int t = 0; t < kDTiles; ++t) {
      o[t][0] *= alpha[0];
      o[t][1] *= alpha[0];
      o[t][2] *= alpha[1];
      o[t][3] *= alpha[1];
    }

    // O += P V.  P's accumulator layout for key tiles 2kc and 2kc + 1 is
    // exactly the A layout of a 16-key slice.
    SPECDEC_UNROLL
    for (int kc = 0; kc < kKeys / 16; ++kc) {
      const uint32_t a[4] = {pack2<kBf16>(s[2 * kc][0], s[2 * kc][1]), pack2<kBf16>(s[2 * kc][2], s[2 * kc][3]),
                             pack2<kBf16>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                             pack2<kBf16>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
      const uint16_t* v0 = sV + (16 * kc + 2 * c) * kStride + g;  // B row 2c = key 16kc + 2c, column g
      SPECDEC_UNROLL
      for (int t = 0; t < kDTiles; ++t) {
        const uint16_t* vt = v0 + 8 * t;
        const uint32_t bf[2] = {static_cast<uint32_t>(vt[0]) | static_cast<uint32_t>(vt[kStride]) << 16,
                                static_cast<uint32_t>(vt[8 * kStride]) | static_cast<uint32_t>(vt[9 * kStride]) << 16};
        ctx.template mma<kBf16>(o[t], a, bf);
      }
    }
    ctx.sync();  // the next iteration refills this stage
  }

  // Finish: the row sums are spread over the four lanes of a row.
  SPECDEC_UNROLL
  for (int i = 0; i < 2; ++i) {
    l_run[i] += ctx.shfl_xor(l_run[i], 1);
    l_run[i] += ctx.shfl_xor(l_run[i], 2);
  }
  SPECDEC_UNROLL
  for (int i = 0; i < 2; ++i) {
    if (row[i] >= rows) continue;
    const int64_t head = h * G + row[i] % G, out_row = (b * p.nodes + row[i] / G) * p.q_heads + head;
    // One split: the sink joins here; several: in merge_row.
    const RowFinish f = finish_row_log2(m_run[i], l_run[i], p.splits == 1 ? sink_logit(p.sinks, head) : -INFINITY);
    const float inv = f.inv, row_lse = f.lse;
    if (p.splits == 1) {
      SPECDEC_UNROLL
      for (int t = 0; t < kDTiles; ++t) {
        const int64_t d = 8 * t + 2 * c;
        if (d < D) {
          const uint32_t packed = pack2<kBf16>(o[t][2 * i] * inv, o[t][2 * i + 1] * inv);
          *reinterpret_cast<uint32_t*>(p.out + out_row * D + d) = packed;
        }
      }
      if (c == 0) p.lse[out_row] = row_lse;
    } else {
      const int64_t part_row = split * p.batch * p.nodes * p.q_heads + out_row;
      SPECDEC_UNROLL
      for (int t = 0; t < kDTiles; ++t) {
        const int64_t d = 8 * t + 2 * c;
        if (d < D) {
          p.part_out[part_row * D + d] = o[t][2 * i] * inv;
          p.part_out[part_row * D + d + 1] = o[t][2 * i + 1] * inv;
        }
      }
      if (c == 0) p.part_lse[part_row] = row_lse;
    }
  }
}

}  // namespace specdec::attention::mma
