#include <gtest/gtest.h>

#include <algorithm>

#include "ops/build_info.h"

namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(BuildInfo, VersionAndTorchAreRecorded) {
  const auto& info = specdec::build_info();
  EXPECT_FALSE(info.version.empty());
  EXPECT_FALSE(info.torch_version.empty());
}

TEST(BuildInfo, KvOpsAreRegistered) {
  const auto names = specdec::op_names();
  EXPECT_TRUE(contains(names, "kv_compact_"));
  EXPECT_TRUE(contains(names, "kv_compact_paged_"));
}

// Every op has a CPU kernel; in a CUDA build every op also has a CUDA kernel,
// and in a CPU build none claims one.
TEST(BuildInfo, EveryOpHasCpuAndCudaKernelsInACudaBuild) {
  const auto& info = specdec::build_info();
  for (const auto& op : specdec::op_names()) {
    const auto backends = specdec::op_backends(op);
    EXPECT_TRUE(contains(backends, "CPU")) << op;
    EXPECT_EQ(contains(backends, "CUDA"), info.cuda_compiled) << op;
  }
  EXPECT_EQ(info.cuda_compiled, SPECDEC_WITH_CUDA != 0);
  EXPECT_EQ(info.cuda_archs.empty(), !info.cuda_compiled);
}

}  // namespace
