// KV rollback: the index logic shared by the CPU and CUDA kernels.
//
// No torch here: raw pointers and integers only, so both backends validate and
// address the cache with the very same code.
//
// Semantics (docs/ops.md, family `kv_compact`): for a row b with n = num_accepted[b] and
// L = cache_lens[b], slot L + j receives the old slot L + accept_nodes[b, j]
// for j < n (in that order), then cache_lens[b] = L + n.
//
// Because accept_nodes is strictly increasing and non-negative, accept[j] >= j:
// every source slot lies at or after its destination, and no destination is
// the source of a LATER j.  So copying in ascending j (or gathering all sources
// first) equals the sequential definition; a parallel kernel only has to keep
// the j-loop of one (row, column) in one thread, in ascending order.
#pragma once

#include <cstdint>

#include "specdec/errors.h"
#include "specdec/macros.h"

namespace specdec::kv {

// Why a row failed validation; the record's `where` is the column of the
// offending entry (accept_nodes or block_tables), `value` the entry.
enum ErrorCode : int32_t {
  kCacheLenOutOfRange = 1,     // cache_lens[b] < 0 or > capacity
  kNumAcceptedOutOfRange = 2,  // num_accepted[b] < 0 or > accept_nodes.size(1)
  kAcceptNodeNegative = 3,     // accept_nodes[b, j] < 0
  kAcceptNotIncreasing = 4,    // accept_nodes[b, j] <= accept_nodes[b, j-1]
  kSlotBeyondCache = 5,        // cache_lens[b] + accept_nodes[b, j] >= capacity
  kBlockOutOfRange = 6,        // block_tables[b, j] outside [0, num_pages)
  kBlockRepeated = 7,          // block_tables[b, j] repeats an earlier touched block
  kLengthOverflow = 8,         // cache_lens[b] + num_accepted[b] beyond int32 (value: the sum)
  kPageShared = 9,             // block_tables[b, j] is also touched by an earlier row
};

// Validate one row of a contiguous or paged compaction.  `capacity` is the
// number of slots one sequence can address (S, or max_blocks * page_size).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_row(int64_t row, int64_t cache_len, int64_t num_accepted,
                                                         const int32_t* accept, int64_t width, int64_t capacity) {
  if (cache_len < 0 || cache_len > capacity) return make_error(kCacheLenOutOfRange, row, 0, cache_len);
  if (num_accepted < 0 || num_accepted > width) return make_error(kNumAcceptedOutOfRange, row, 0, num_accepted);
  // cache_lens is int32: the advanced length must stay representable (capacity
  // alone does not bound it: a zero-size or paged cache can claim more slots).
  if (cache_len + num_accepted > 2147483647) return make_error(kLengthOverflow, row, 0, cache_len + num_accepted);
  int64_t prev = -1;
  for (int64_t j = 0; j < num_accepted; ++j) {
    const int64_t a = accept[j];
    if (a < 0) return make_error(kAcceptNodeNegative, row, j, a);
    if (a <= prev) return make_error(kAcceptNotIncreasing, row, j, a);
    if (cache_len + a >= capacity) return make_error(kSlotBeyondCache, row, j, a);
    prev = a;
  }
  return no_error(row);
}

// The block-table part of a paged row: every block holding a slot the row reads
// or writes, [cache_len, cache_len + accept[n-1]], must be a valid page, and
// those pages must be distinct (two logical blocks on one page would alias).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_blocks(int64_t row, const int32_t* table, int64_t cache_len,
                                                            int64_t last_source, int64_t page_size, int64_t num_pages) {
  const int64_t first = cache_len / page_size;
  const int64_t last = (cache_len + last_source) / page_size;
  for (int64_t blk = first; blk <= last; ++blk) {
    const int64_t page = table[blk];
    if (page < 0 || page >= num_pages) return make_error(kBlockOutOfRange, row, blk, page);
    for (int64_t other = first; other < blk; ++other) {
      if (table[other] == page) return make_error(kBlockRepeated, row, blk, page);
    }
  }
  return no_error(row);
}

// The blocks a paged row touches (reads or writes): [first, last], or false when
// the row touches none or its index values are out of range (its own check
// reports that).
SPECDEC_HOST_DEVICE SPECDEC_INLINE bool touched_blocks(int64_t cache_len, int64_t num, const int32_t* accept,
                                                       int64_t width, int64_t capacity, int64_t page_size,
                                                       int64_t* first, int64_t* last) {
  if (num <= 0 || num > width || cache_len < 0) return false;
  const int64_t last_source = accept[num - 1];
  if (last_source < 0 || cache_len + last_source >= capacity) return false;
  *first = cache_len / page_size;
  *last = (cache_len + last_source) / page_size;
  return true;
}

// No two rows may touch one page: a page both rows write would take whichever
// copy ran last.  Row `row`'s touched pages against every earlier row's (the
// first row of a clash reports nothing, the later one the clash).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_pages_private(int64_t row, const int32_t* tables,
                                                                   const int32_t* lens, const int32_t* accept,
                                                                   const int32_t* num, int64_t width,
                                                                   int64_t max_blocks, int64_t capacity,
                                                                   int64_t page_size) {
  int64_t f0, l0;
  if (!touched_blocks(lens[row], num[row], accept + row * width, width, capacity, page_size, &f0, &l0)) {
    return no_error(row);
  }
  const int32_t* mine = tables + row * max_blocks;
  for (int64_t other = 0; other < row; ++other) {
    int64_t f1, l1;
    if (!touched_blocks(lens[other], num[other], accept + other * width, width, capacity, page_size, &f1, &l1)) {
      continue;
    }
    const int32_t* theirs = tables + other * max_blocks;
    for (int64_t a = f0; a <= l0; ++a) {
      for (int64_t c = f1; c <= l1; ++c) {
        if (mine[a] == theirs[c]) return make_error(kPageShared, row, a, mine[a]);
      }
    }
  }
  return no_error(row);
}

// Byte offset of slot `slot` of sequence row `table` in a paged tensor
// [num_pages, page_size, H, D] whose token rows are `token_bytes` long.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t paged_offset(const int32_t* table, int64_t slot, int64_t page_size,
                                                        int64_t token_bytes) {
  const int64_t page = table[slot / page_size];
  return (page * page_size + slot % page_size) * token_bytes;
}

}  // namespace specdec::kv
