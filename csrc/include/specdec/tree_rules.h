// Trees: the parent-array check and build_tree's rule, shared by the CPU and
// CUDA kernels (torch-free).  docs/ops.md, family `tree`, states them.
//
// A tree of N nodes is a parent array: parents[0] = -1 (node 0 is the root) and
// 0 <= parents[i] < i.  build_tree gives each node a packed ancestor mask (bit
// j % 32 of word j / 32 is set iff node j is the node itself or an ancestor)
// and a depth (the root's is 0).
#pragma once

#include <cstdint>

#include "specdec/errors.h"
#include "specdec/macros.h"

namespace specdec::tree {

// Error codes of a parent array (the acceptance family continues from 3).
enum ErrorCode : int32_t {
  kParentRoot = 1,   // parents[b, 0] != -1; where = 0, value = the entry
  kParentRange = 2,  // parents[b, i] outside [0, i); where = i, value = the entry
};

// Validate row `row`'s parent array.
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_parents(const int32_t* parents, int64_t nodes, int64_t row) {
  for (int64_t i = 0; i < nodes; ++i) {
    const int64_t p = parents[i];
    if (i == 0 ? p != -1 : (p < 0 || p >= i)) return make_error(i == 0 ? kParentRoot : kParentRange, row, i, p);
  }
  return no_error(row);
}

// Ragged batches (the *_ragged ops): B rows of nodes stored end to end, row b
// holding the T entries cu_nodes[b] .. cu_nodes[b + 1] - 1, so cu_nodes [B + 1]
// must start at 0, increase strictly (every row holds at least its root) and
// end at T.  Codes of a bad cu_nodes (shared by every family with ragged ops);
// `where` is the entry j of cu_nodes, `value` its value, `row` the row it
// closes (j - 1; 0 for j = 0).
enum RaggedCode : int32_t {
  kCuFirst = 20,     // cu_nodes[0] != 0
  kCuEmptyRow = 21,  // cu_nodes[j] <= cu_nodes[j - 1]: row j - 1 empty (or negative)
  kCuLast = 22,      // cu_nodes[B] != T
};

// The first bad entry of cu_nodes, in this order: cu_nodes[0], then
// cu_nodes[1..B] in index order, then cu_nodes[B] against T.
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_cu_nodes(const int32_t* cu, int64_t batch, int64_t total) {
  if (cu[0] != 0) return make_error(kCuFirst, 0, 0, cu[0]);
  for (int64_t j = 1; j <= batch; ++j) {
    if (cu[j] <= cu[j - 1]) return make_error(kCuEmptyRow, j - 1, j, cu[j]);
  }
  if (cu[batch] != total) return make_error(kCuLast, batch - 1, batch, cu[batch]);
  return no_error(0);
}

// Row b's share of check_cu_nodes, for kernels that run one row each: the
// checks of cu_nodes[0] (row 0), of cu_nodes[b + 1] against cu_nodes[b] and
// of cu_nodes[B] against T (row B - 1).  The lowest row that fails reports
// exactly check_cu_nodes' first bad entry (rows before it pass all their own
// checks), so the lowest failing row's record equals the sequential check's.
// *safe tells whether the row's entries [cu[b], cu[b + 1]) lie inside [0, T)
// (rows that pass can still be unsafe when a later entry is bad; they are
// skipped and the later row reports).
SPECDEC_HOST_DEVICE SPECDEC_INLINE ErrorRecord check_cu_row(const int32_t* cu, int64_t batch, int64_t total, int64_t b,
                                                            bool* safe) {
  ErrorRecord e = no_error(b);
  if (b == 0 && cu[0] != 0) {
    e = make_error(kCuFirst, 0, 0, cu[0]);
  } else if (cu[b + 1] <= cu[b]) {
    e = make_error(kCuEmptyRow, b, b + 1, cu[b + 1]);
  } else if (b == batch - 1 && cu[batch] != total) {
    e = make_error(kCuLast, b, batch, cu[batch]);
  }
  *safe = e.code == kOk && cu[b] >= 0 && cu[b + 1] <= total;
  return e;
}

// The row holding entry t of a valid ragged batch (the b with cu[b] <= t <
// cu[b + 1]); on an invalid cu_nodes some row in [0, B), never outside.
SPECDEC_HOST_DEVICE SPECDEC_INLINE int64_t ragged_row_of(const int32_t* cu, int64_t batch, int64_t t) {
  int64_t lo = 0, hi = batch;  // the answer is the last b in [0, B) with cu[b] <= t
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cu[mid] <= t) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// build_tree, one word column of one row: mask[i][w] = mask[parent(i)][w], plus
// bit i % 32 when w == i / 32.  Rows are filled in index order, so a parent's
// word is ready before its children read it; each word column depends only on
// itself.
SPECDEC_HOST_DEVICE SPECDEC_INLINE void mask_column(const int32_t* parents, int64_t nodes, int64_t words, int64_t w,
                                                    int32_t* mask) {
  for (int64_t i = 0; i < nodes; ++i) {
    const int64_t p = parents[i];
    uint32_t word = p >= 0 ? static_cast<uint32_t>(mask[p * words + w]) : 0u;
    if (i / 32 == w) word |= 1u << (i % 32);
    mask[i * words + w] = static_cast<int32_t>(word);
  }
}

// build_tree depths: the root has depth 0.
SPECDEC_HOST_DEVICE SPECDEC_INLINE void depths(const int32_t* parents, int64_t nodes, int32_t* depth) {
  for (int64_t i = 0; i < nodes; ++i) depth[i] = parents[i] >= 0 ? depth[parents[i]] + 1 : 0;
}

}  // namespace specdec::tree
