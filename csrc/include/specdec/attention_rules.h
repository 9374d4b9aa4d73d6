// Tree attention: index logic shared by the CPU and CUDA kernels (torch-free);
// docs/ops.md, family `attention`, states the rule.
//
// Query i of sequence b sees the prefix slots [0, L) (L = cache_lens[b]) and
// the tree slots L + j whose bit j is set in its mask row; query head h reads
// KV head h / (Hq / Hkv).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "specdec/errors.h"
#include "specdec/macros.h"

namespace specdec::attention {

constexpr int64_t kMaxHeadDim = 256;

// Error codes.  kCacheLen: where = 0, value = cache_lens[b]; kBlock: where = the
// block index, value = the block-table entry.
enum ErrorCode : int32_t { kCacheLen = 1, kBlock = 2 };

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
