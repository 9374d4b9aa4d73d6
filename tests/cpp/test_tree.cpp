// build_tree through the dispatcher.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "ops/tree.h"
#include "test_util.h"

namespace {

using specdec::testing::error_of;

void check_small_tree(const at::Device& device) {
  // 0 -> {1, 2}, 1 -> {3}, 2 -> {4}
  at::Tensor parents = at::tensor({-1, 0, 0, 1, 2}, at::kInt).view({1, 5}).to(device);
  auto [mask, depth] = specdec::build_tree(parents);
  // Row i: bits of i and its ancestors.
  EXPECT_TRUE(at::equal(mask.cpu(), at::tensor({0b1, 0b11, 0b101, 0b1011, 0b10101}, at::kInt).view({1, 5, 1})));
  EXPECT_TRUE(at::equal(depth.cpu(), at::tensor({0, 1, 1, 2, 2}, at::kInt).view({1, 5})));
}

TEST(BuildTreeCpu, SmallTree) { check_small_tree(at::kCPU); }

TEST(BuildTreeCpu, BrokenParentRaises) {
  at::Tensor parents = at::tensor({-1, 0, 3, 1}, at::kInt).view({1, 4});
  const std::string e = error_of([&] { specdec::build_tree(parents); });
  EXPECT_NE(e.find("specdec::build_tree: parents[0, 2] = 3 is outside [0, 2)"), std::string::npos) << e;
}

TEST(BuildTreeCuda, SmallTreeAndCpuAgreement) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_small_tree(at::kCUDA);
  // A 300-node random tree: CPU and CUDA agree word for word.
  at::manual_seed(5);
  at::Tensor parents = at::empty({3, 300}, at::kInt);
  for (int64_t b = 0; b < 3; ++b) {
    parents[b][0] = -1;
    for (int64_t i = 1; i < 300; ++i) parents[b][i] = at::randint(0, i, {1}, at::kInt)[0];
  }
  auto [m_cpu, d_cpu] = specdec::build_tree(parents);
  auto [m_gpu, d_gpu] = specdec::build_tree(parents.to(at::kCUDA));
  EXPECT_TRUE(at::equal(m_cpu, m_gpu.cpu()));
  EXPECT_TRUE(at::equal(d_cpu, d_gpu.cpu()));
}

}  // namespace
