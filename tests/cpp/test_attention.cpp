// tree_attention / tree_attention_paged through the dispatcher, against a
// dense-mask softmax computed here with ATen in float64.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "ops/attention.h"
#include "ops/tree.h"
#include "test_util.h"

namespace {

using specdec::testing::error_of;

// Dense reference for one batch: [B, N, Hq, D] out and [B, N, Hq] lse, float64.
std::tuple<at::Tensor, at::Tensor> dense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& lens, const at::Tensor& parents, double scale) {
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), Hkv = k.size(1), G = Hq / Hkv;
  at::Tensor out = at::zeros(q.sizes(), at::kDouble), lse = at::zeros({B, N, Hq}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lens[b].item<int>();
    at::Tensor vis = at::zeros({N, L + N}, at::kBool);
    vis.narrow(1, 0, L).fill_(true);
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t a = i; a >= 0; a = parents[b][a].item<int>()) vis[i][L + a] = true;
    }
    at::Tensor keys = k[b].narrow(1, 0, L + N).to(at::kDouble).repeat_interleave(G, 0);
    at::Tensor vals = v[b].narrow(1, 0, L + N).to(at::kDouble).repeat_interleave(G, 0);
    at::Tensor s = at::einsum("nhd,hsd->nhs", {q[b].to(at::kDouble), keys}) * scale;
    s = s.masked_fill(vis.logical_not().unsqueeze(1), -INFINITY);
    at::Tensor l = at::logsumexp(s, -1);
    out[b] = at::einsum("nhs,hsd->nhd", {at::exp(s - l.unsqueeze(-1)), vals});
    lse[b] = l;
  }
  return {out, lse};
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b).norm() / b.norm()).item<double>();
}

void check(const at::Device& device, at::ScalarType dtype, int64_t head_dim, double tol) {
  at::manual_seed(31);
  const int64_t B = 3, N = 12, Hq = 8, Hkv = 2, S = 200;
  at::Tensor parents = at::tensor({-1, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7}, at::kInt).repeat({B, 1});
  at::Tensor q = at::randn({B, N, Hq, head_dim}).to(dtype), k = at::randn({B, Hkv, S, head_dim}).to(dtype);
  at::Tensor v = at::randn({B, Hkv, S, head_dim}).to(dtype);
  at::Tensor lens = at::tensor({0, 57, 188}, at::kInt);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  auto [mask, depth] = specdec::build_tree(parents.to(device));
  auto [out, lse] = specdec::tree_attention(q.to(device), k.to(device), v.to(device), lens.to(device), mask, scale);
  auto [ref_out, ref_lse] = dense(q, k, v, lens, parents, scale);
  EXPECT_LT(rel(out.cpu(), ref_out), tol);
  EXPECT_LT(rel(lse.cpu(), ref_lse), 1e-5);
  // Paged: the same cache cut into shuffled pages of 16.
  const int64_t ps = 16, blocks = (S + ps - 1) / ps;
  at::Tensor perm = at::randperm(B * blocks, at::kInt).view({B, blocks});
  at::Tensor kp = at::zeros({B * blocks, ps, Hkv, head_dim}, dtype), vp = at::zeros_like(kp);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t page = perm[b][s / ps].item<int>();
      kp[page][s % ps] = k[b].select(1, s);
      vp[page][s % ps] = v[b].select(1, s);
    }
  }
  auto [pout, plse] = specdec::tree_attention_paged(q.to(device), kp.to(device), vp.to(device), perm.to(device),
                                                    lens.to(device), mask, scale);
  EXPECT_LT(rel(pout.cpu(), ref_out), tol);
  EXPECT_LT(rel(plse.cpu(), ref_lse), 1e-5);
}

TEST(TreeAttentionCpu, MatchesDenseFp32) { check(at::kCPU, at::kFloat, 64, 1e-5); }
TEST(TreeAttentionCpu, MatchesDenseBf16HeadDim128) { check(at::kCPU, at::kBFloat16, 128, 2e-2); }

TEST(TreeAttentionCpu, PrefixBeyondCacheRaises) {
  at::Tensor q = at::randn({1, 4, 2, 8}), k = at::randn({1, 1, 10, 8});
  at::Tensor mask = std::get<0>(specdec::build_tree(at::tensor({-1, 0, 1, 2}, at::kInt).view({1, 4})));
  const std::string e = error_of([&] { specdec::tree_attention(q, k, k, at::tensor({7}, at::kInt), mask, 0.3); });
  EXPECT_NE(e.find("specdec::tree_attention: cache_lens[0] = 7"), std::string::npos) << e;
}

TEST(TreeAttentionCuda, MatchesDense) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check(at::kCUDA, at::kFloat, 64, 1e-5);
  check(at::kCUDA, at::kHalf, 128, 2e-2);
  check(at::kCUDA, at::kBFloat16, 256, 2e-2);
}

}  // namespace
