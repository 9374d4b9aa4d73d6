// sampling_probs through the dispatcher.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "ops/sampling.h"
#include "test_util.h"

namespace {

using specdec::testing::error_of;

TEST(SamplingProbs, GreedyTopKAndNormalisation) {
  at::Tensor logits = at::tensor({1.0f, 3.0f, 3.0f, -2.0f, 0.5f}).view({1, 5}).repeat({3, 1});
  at::Tensor temperature = at::tensor({0.0f, 1.0f, 0.5f});
  at::Tensor top_k = at::tensor({0, 2, 0}, at::kInt);
  at::Tensor top_p = at::tensor({1.0f, 1.0f, 1.0f});
  at::Tensor p = specdec::sampling_probs(logits, temperature, top_k, top_p);
  EXPECT_TRUE(at::equal(p[0], at::tensor({0.0f, 1.0f, 0.0f, 0.0f, 0.0f})));     // first maximum
  EXPECT_TRUE(at::allclose(p[1], at::tensor({0.0f, 0.5f, 0.5f, 0.0f, 0.0f})));  // ties kept
  EXPECT_NEAR(p[2].sum().item<float>(), 1.0f, 1e-6);
  const std::string e =
      error_of([&] { specdec::sampling_probs(logits, at::tensor({-1.0f, 1.0f, 1.0f}), top_k, top_p); });
  EXPECT_NE(e.find("specdec::sampling_probs: temperature[0] = -1"), std::string::npos) << e;
}

// The same parameters give the same probabilities on CPU and CUDA.
TEST(SamplingCuda, MatchesCpu) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  at::manual_seed(15);
  const int64_t V = 3000;
  const at::Device cuda(at::kCUDA);
  at::Tensor logits = at::randn({4, 3, V}) * 3;
  at::Tensor t = at::tensor({0.0f, 0.7f, 1.0f, 1.3f}), k = at::tensor({0, 20, 0, 100}, at::kInt);
  at::Tensor p = at::tensor({1.0f, 0.9f, 0.5f, 1.0f});
  EXPECT_TRUE(at::allclose(specdec::sampling_probs(logits, t, k, p),
                           specdec::sampling_probs(logits.to(cuda), t.to(cuda), k.to(cuda), p.to(cuda)).cpu(), 1e-5,
                           1e-7));
}

}  // namespace
