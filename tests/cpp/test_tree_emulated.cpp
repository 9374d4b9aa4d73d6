// The CUDA build_tree kernel body (specdec/tree_kernels.h), run on the host
// through the CUDA emulator (cuda_emulator.h) against masks and depths walked
// from the parent arrays.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "cuda_emulator.h"
#include "specdec/tree_kernels.h"

namespace {

using specdec::ErrorRecord;
using specdec::testing::EmuCtx;
using specdec::testing::EmulatedGrid;

TEST(BuildTreeEmulated, MasksAndDepthsOfRandomTreesAndABrokenOne) {
  std::mt19937 rng(7);
  const int64_t B = 3, N = 70, W = (N + 31) / 32;  // three mask words
  std::vector<int32_t> parents(B * N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) parents[b * N + i] = i == 0 ? -1 : static_cast<int32_t>(rng() % i);
  parents[2 * N + 40] = 40;  // row 2: a node that is its own parent
  std::vector<int32_t> mask(B * N * W, 0x5a5a5a5a), depth(B * N, -9);
  std::vector<ErrorRecord> errors(B, ErrorRecord{});
  const int threads = static_cast<int>(std::min<int64_t>(128, (W + 31) / 32 * 32));  // as the launcher
  EmulatedGrid grid(threads, specdec::block::kSharedBytes);
  grid.launch(B, 1, 1, [&](const EmuCtx& ctx) {
    specdec::tree::device::build_tree_block(ctx, parents.data(), N, W, mask.data(), depth.data(), errors.data());
  });
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      std::vector<int32_t> want(W, 0);
      int32_t d = -1;
      for (int64_t a = i; a >= 0; a = parents[b * N + a], ++d) want[a / 32] |= int32_t(1u << (a % 32));
      for (int64_t w = 0; w < W; ++w) EXPECT_EQ(mask[(b * N + i) * W + w], want[w]) << b << " " << i;
      EXPECT_EQ(depth[b * N + i], d);
    }
    EXPECT_EQ(errors[b].code, 0);
  }
  EXPECT_EQ(errors[2].code, specdec::tree::kParentRange);
  EXPECT_EQ(errors[2].row, 2);
  EXPECT_EQ(errors[2].where, 40);
  EXPECT_EQ(errors[2].value, 40);
  for (int64_t i = 0; i < N * W; ++i) EXPECT_EQ(mask[2 * N * W + i], 0);
  for (int64_t i = 0; i < N; ++i) EXPECT_EQ(depth[2 * N + i], 0);
}

}  // namespace
