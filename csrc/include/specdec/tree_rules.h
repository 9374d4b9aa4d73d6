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
