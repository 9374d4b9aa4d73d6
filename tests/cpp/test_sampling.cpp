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

// min-p keeps {exp(z - max z) >= min_p}: here exp(-1) >= 0.3 > exp(-2).
TEST(SamplingProbs, MinPKeepsTokensNearTheMaximum) {
  at::Tensor logits = at::tensor({3.0f, 2.0f, 1.0f, 3.0f, -5.0f}).view({1, 5});
  at::Tensor one = at::ones({1}), zero_k = at::zeros({1}, at::kInt);
  at::Tensor p = specdec::sampling_probs(logits, one, zero_k, one, at::tensor({0.3f}));
  EXPECT_TRUE(at::equal((p > 0).to(at::kInt), at::tensor({1, 1, 0, 1, 0}, at::kInt).view({1, 5})));
  EXPECT_NEAR(p.sum().item<float>(), 1.0f, 1e-6);
  // Default (no min_p) and min_p = 0 are the same call.
  EXPECT_TRUE(at::equal(specdec::sampling_probs(logits, one, zero_k, one),
                        specdec::sampling_probs(logits, one, zero_k, one, at::zeros({1}))));
  const std::string e = error_of([&] { specdec::sampling_probs(logits, one, zero_k, one, at::tensor({1.5f})); });
  EXPECT_NE(e.find("specdec::sampling_probs: min_p[0] = 1.5 must be in [0, 1]"), std::string::npos) << e;
}

// Row b's slice of the ragged logits equals sampling_probs on that row alone.
TEST(SamplingProbsRagged, EqualsThePaddedOpRowByRow) {
  at::manual_seed(16);
  const int64_t V = 300;
  at::Tensor cu = at::tensor({0, 2, 3, 7}, at::kInt);
  at::Tensor logits = at::randn({7, V}) * 3;
  at::Tensor t = at::tensor({0.7f, 0.0f, 1.3f}), k = at::tensor({0, 0, 20}, at::kInt);
  at::Tensor p = at::tensor({0.9f, 1.0f, 0.8f}), m = at::tensor({0.0f, 0.0f, 0.01f});
  at::Tensor got = specdec::sampling_probs_ragged(logits, cu, t, k, p, m);
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t lo = cu[b].item<int>(), hi = cu[b + 1].item<int>();
    at::Tensor row = specdec::sampling_probs(logits.slice(0, lo, hi).unsqueeze(0).contiguous(), t.slice(0, b, b + 1),
                                             k.slice(0, b, b + 1), p.slice(0, b, b + 1), m.slice(0, b, b + 1));
    EXPECT_TRUE(at::equal(got.slice(0, lo, hi), row[0])) << "row " << b;
  }
  const std::string e =
      error_of([&] { specdec::sampling_probs_ragged(logits, at::tensor({0, 4, 3, 7}, at::kInt), t, k, p, m); });
  EXPECT_NE(e.find("specdec::sampling_probs_ragged: cu_nodes[2] = 3 is not greater than cu_nodes[1]"),
            std::string::npos)
      << e;
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
  at::Tensor m = at::tensor({0.0f, 0.05f, 0.01f, 0.5f});
  EXPECT_TRUE(at::allclose(
      specdec::sampling_probs(logits, t, k, p, m),
      specdec::sampling_probs(logits.to(cuda), t.to(cuda), k.to(cuda), p.to(cuda), m.to(cuda)).cpu(), 1e-5, 1e-7));
  at::Tensor cu = at::tensor({0, 5, 6, 9, 12}, at::kInt), flat = logits.view({12, V});
  EXPECT_TRUE(at::allclose(
      specdec::sampling_probs_ragged(flat, cu, t, k, p, m),
      specdec::sampling_probs_ragged(flat.to(cuda), cu.to(cuda), t.to(cuda), k.to(cuda), p.to(cuda), m.to(cuda)).cpu(),
      1e-5, 1e-7));
}

}  // namespace
