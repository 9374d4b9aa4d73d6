// Tree attention: index logic shared by the CPU and CUDA kernels (torch-free);
// docs/ops.md, family `attention`, states the rule.
//
// Query i of sequence b sees the prefix slots [0, L) (L = cache_lens[b]) and
// the tree slots L + j whose bit j is set in its mask row; query head h reads
// KV head h / (Hq / Hkv).  Optional features (docs/ops.md): a sliding window
// over positions (prefix slot s: position s; tree node j: L + depth_j with
// depth_j = popcount(mask row j) - 1), logit soft-capping, and one sink logit
// per query head in the softmax denominator.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "specdec/errors.h"
#include "specdec/macros.h"

namespace specdec::attention {

constexpr int64_t kMaxHeadDim = 256;

// Error codes.  kCacheLen: where = 0, value = cache_lens[b]; kBlock: where = the
// block index, value = the block-table entry; kSink (one record per call, not
// per sequence): where = the head h, value = double_bits(sinks[h]).
enum ErrorCode : int32_t { kCacheLen = 1, kBlock = 2, kSink = 3 };

// The head-dimension bucket a kernel is compiled for (64, 128 or 256): the one
// place D is rounded up, for both CUDA kernels.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t head_dim_bucket(int64_t dim) {
  return dim <= 64 ? 64 : dim <= 128 ? 128 : 256;
}

// Row `row`: 0 <= L, L + nodes <= capacity, and (paged, table != nullptr) every
// block holding a slot in [0, L + nodes) is a page in [0, num_pages).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_row(int64_t row, int64_t length, int64_t nodes, int64_t capacity,
                                                         const int32_t* table, int64_t page_size, int64_t num_pages) {
  if (length < 0 || length + nodes > capacity) return make_error(kCacheLen, row, 0, length);
  if (table != nullptr) {
    const int64_t blocks = (length + nodes + page_size - 1) / page_size;
    for (int64_t k = 0; k < blocks; ++k) {
      if (table[k] < 0 || table[k] >= num_pages) return make_error(kBlock, row, k, table[k]);
    }
  }
  return no_error(row);
}

// check_row for sequence b; a failure goes to errors[b] when `report` (one
// block per sequence reports).  Returns whether the row is valid.
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool check_and_record(int64_t b, int64_t length, int64_t nodes, int64_t capacity,
                                                         const int32_t* table, int64_t page_size, int64_t num_pages,
                                                         bool report, ErrorRecord* errors) {
  const ErrorRecord e = check_row(b, length, nodes, capacity, table, page_size, num_pages);
  if (e.code != kOk && report) errors[b] = e;
  return e.code == kOk;
}

// Whether query `node` sees slot `slot` (mask row: `words` int32 words).
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool visible(int64_t slot, int64_t length, const int32_t* mask_row) {
  if (slot < length) return true;
  const int64_t j = slot - length;
  return (static_cast<uint32_t>(mask_row[j >> 5]) >> (j & 31)) & 1u;
}

SPECDEC_HOST_DEVICE SPECDEC_INLINE int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// A tree node's depth: the bits of its mask row below `nodes` (itself and its
// ancestors) minus one.  Bits past N in the last word name no node and do not
// count; a row with no bit set has depth -1.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t node_depth(const int32_t* mask_row, int64_t words, int64_t nodes) {
  int64_t bits = 0;
  for (int64_t w = 0; w < words; ++w) {
    uint32_t x = static_cast<uint32_t>(mask_row[w]);
    const int64_t valid = nodes - 32 * w;  // bits of this word that name nodes
    if (valid < 32) x &= (1u << valid) - 1u;
    bits += popcount32(x);
  }
  return bits - 1;
}

// The position of slot `slot` of a sequence with prefix length `length`: the
// slot itself in the prefix, length + depth of node slot - length in the tree.
// `mask_seq`: the sequence's mask, N rows of `words` words.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t key_position(int64_t slot, int64_t length, const int32_t* mask_seq,
                                                        int64_t words, int64_t nodes) {
  return slot < length ? slot : length + node_depth(mask_seq + (slot - length) * words, words, nodes);
}

// The sliding window: a query at position `query_pos` sees a key at `key_pos`
// iff query_pos - key_pos < window (the last `window` positions, itself
// included); window 0 disables it.
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool in_window(int64_t query_pos, int64_t key_pos, int64_t window) {
  return window <= 0 || query_pos - key_pos < window;
}

// visible() and the window together: whether the query with mask row
// `mask_row` and position `query_pos` sees slot `slot`.
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool sees(int64_t slot, int64_t length, const int32_t* mask_row,
                                             const int32_t* mask_seq, int64_t words, int64_t nodes, int64_t query_pos,
                                             int64_t window) {
  if (!visible(slot, length, mask_row)) return false;
  return window <= 0 || in_window(query_pos, key_position(slot, length, mask_seq, words, nodes), window);
}

// The first slot any query node in [node_begin, node_end) of the sequence can
// see under the window: every prefix slot before it is outside all their
// windows, so kernels start their key loop there.  Never past the prefix (tree
// slots are always looked at); 0 without a window.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t window_first_slot(int64_t length, const int32_t* mask_seq, int64_t words,
                                                             int64_t nodes, int64_t node_begin, int64_t node_end,
                                                             int64_t window) {
  if (window <= 0 || node_begin >= node_end) return 0;
  int64_t min_depth = nodes;
  for (int64_t i = node_begin; i < node_end; ++i) {
    const int64_t d = node_depth(mask_seq + i * words, words, nodes);
    min_depth = d < min_depth ? d : min_depth;
  }
  const int64_t first = length + min_depth - window + 1;  // P - p < window  <=>  p >= P - window + 1
  return first < 0 ? 0 : first > length ? length : first;
}

// Logit soft-capping (Gemma 2): cap * tanh(s / cap); cap 0 disables it.
SPECDEC_HOST_DEVICE SPECDEC_INLINE float soft_cap(float score, float cap) {
  return cap > 0.0f ? cap * tanhf(score / cap) : score;
}

SPECDEC_HOST_DEVICE SPECDEC_INLINE bool finite_float(float x) { return fabsf(x) <= 3.402823466e38f; }

// A sink logit as the kernels use it: -inf (no sink) for a missing or
// non-finite one (the latter is reported, kSink; under CUDA graph capture the
// row then runs as if it had no sink).
SPECDEC_HOST_DEVICE SPECDEC_INLINE float sink_logit(const float* sinks, int64_t head) {
  if (sinks == nullptr) return -INFINITY;
  const float x = sinks[head];
  return finite_float(x) ? x : -INFINITY;
}

// The first non-finite sink, as a kSink record (row 0), or no_error(0).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_sinks(const float* sinks, int64_t heads) {
  if (sinks != nullptr) {
    for (int64_t h = 0; h < heads; ++h) {
      const float x = sinks[h];
      if (!finite_float(x)) return make_error(kSink, 0, h, double_bits(static_cast<double>(x)));
    }
  }
  return no_error(0);
}

// The end of a row's online softmax (natural-log units): running max m, sum l
// of exp(s - m) over the seen keys, and the sink logit (-inf for none), which
// joins the denominator only.  `inv` multiplies the accumulated sum of
// exp(s - m) v; lse = log(sum exp(s) + exp(sink)).  Without a sink this is
// exactly 1 / l and m + log(l); a row that saw nothing gets inv 0 and
// lse = sink (-inf without one).
struct RowFinish {
  float inv, lse;
};

SPECDEC_HOST_DEVICE SPECDEC_INLINE RowFinish finish_row(float m, float l, float sink) {
  if (sink == -INFINITY) return l > 0.0f ? RowFinish{1.0f / l, m + logf(l)} : RowFinish{0.0f, -INFINITY};
  if (!(l > 0.0f)) return RowFinish{0.0f, sink};
  const float top = m > sink ? m : sink;
  const float a = expf(m - top), denom = l * a + expf(sink - top);
  return RowFinish{a / denom, top + logf(denom)};
}

// finish_row for a running max in log2 units (m2 = m * log2(e), the tensor-core
// kernel's exp2 softmax); the sink and lse stay in natural-log units.
SPECDEC_HOST_DEVICE SPECDEC_INLINE RowFinish finish_row_log2(float m2, float l, float sink) {
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  if (sink == -INFINITY) {
    return l > 0.0f ? RowFinish{1.0f / l, (m2 + log2f(l)) * kLn2} : RowFinish{0.0f, -INFINITY};
  }
  if (!(l > 0.0f)) return RowFinish{0.0f, sink};
  const float sink2 = sink * kLog2e, top = m2 > sink2 ? m2 : sink2;
  const float a = exp2f(m2 - top), denom = l * a + exp2f(sink2 - top);
  return RowFinish{a / denom, (top + log2f(denom)) * kLn2};
}

// How the CUDA kernels split a sequence's key range [0, capacity) across
// blocks: enough splits for about `target_blocks` blocks given `base` blocks
// per split, each split at least `min_tiles` tiles of `keys` keys, at most 64
// splits, and the fp32 partials ([splits, rows_total, dim]) within 256 MiB.
// Chunks are whole tiles; capacity 0 gives one empty split.
struct KeySplit {
  int64_t splits, chunk;
};

inline KeySplit split_keys(int64_t capacity, int64_t keys, int64_t min_tiles, int64_t base, int64_t target_blocks,
                           int64_t rows_total, int64_t dim) {
  const int64_t by_work = (capacity + min_tiles * keys - 1) / (min_tiles * keys);
  const int64_t by_memory = (int64_t{256} << 20) / (rows_total * dim * 4 + 1);
  int64_t splits = (target_blocks + base - 1) / base;
  for (const int64_t cap : {by_work, by_memory, int64_t{64}}) splits = splits < cap ? splits : cap;
  splits = splits < 1 ? 1 : splits;
  int64_t chunk = (capacity + splits - 1) / splits;
  chunk = (chunk + keys - 1) / keys * keys;
  chunk = chunk < keys ? keys : chunk;
  return {capacity > 0 ? (capacity + chunk - 1) / chunk : 1, chunk};
}

}  // namespace specdec::attention
