// tree_attention / tree_attention_paged through the dispatcher, against a
// dense-mask softmax computed here with ATen in float64.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/tree.h"
#include "test_util.h"

namespace {

using specdec::testing::error_of;

// Dense reference for one batch: [B, N, Hq, Dv] out and [B, N, Hq] lse, float64;
// optionally with a sliding window (positions from the tree depths), softcap and
// sinks [Hq] (docs/ops.md).
std::tuple<at::Tensor, at::Tensor> dense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& lens, const at::Tensor& parents, double scale,
                                         int64_t window = 0, double softcap = 0.0, const at::Tensor& sinks = {}) {
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), Hkv = k.size(1), G = Hq / Hkv;
  at::Tensor out = at::zeros({B, N, Hq, v.size(3)}, at::kDouble), lse = at::zeros({B, N, Hq}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lens[b].item<int>();
    std::vector<int64_t> depth(N, 0);
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t a = parents[b][i].item<int>(); a >= 0; a = parents[b][a].item<int>()) ++depth[i];
    }
    at::Tensor vis = at::zeros({N, L + N}, at::kBool);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t qpos = L + depth[i];
      for (int64_t s = 0; s < L; ++s) vis[i][s] = window == 0 || qpos - s < window;
      for (int64_t a = i; a >= 0; a = parents[b][a].item<int>()) {
        vis[i][L + a] = window == 0 || qpos - (L + depth[a]) < window;
      }
    }
    at::Tensor keys = k[b].narrow(1, 0, L + N).to(at::kDouble).repeat_interleave(G, 0);
    at::Tensor vals = v[b].narrow(1, 0, L + N).to(at::kDouble).repeat_interleave(G, 0);
    at::Tensor s = at::einsum("nhd,hsd->nhs", {q[b].to(at::kDouble), keys}) * scale;
    if (softcap > 0) s = at::tanh(s / softcap) * softcap;
    s = s.masked_fill(vis.logical_not().unsqueeze(1), -INFINITY);
    if (sinks.defined()) s = at::cat({s, sinks.to(at::kDouble).view({1, Hq, 1}).expand({N, Hq, 1})}, -1);
    at::Tensor l = at::logsumexp(s, -1);
    at::Tensor p = at::exp(s - l.unsqueeze(-1));
    if (sinks.defined()) p = p.narrow(-1, 0, L + N);  // the sink has no value row
    out[b] = at::einsum("nhs,hsd->nhd", {p, vals});
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

// The C++ API with the keyword arguments of the schema: window, softcap, sinks,
// and a value head size (40) other than the key's (64).
TEST(TreeAttentionCpu, FeaturesThroughTheCppApi) {
  at::manual_seed(32);
  const int64_t B = 2, N = 12, Hq = 8, Hkv = 2, S = 120, D = 64, Dv = 40;
  at::Tensor parents = at::tensor({-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 10}, at::kInt).repeat({B, 1});
  at::Tensor q = at::randn({B, N, Hq, D}), k = at::randn({B, Hkv, S, D}), v = at::randn({B, Hkv, S, Dv});
  at::Tensor lens = at::tensor({5, 100}, at::kInt), sinks = at::rand({Hq}) * 4;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto [mask, depth] = specdec::build_tree(parents);
  auto [out, lse] = specdec::tree_attention(q, k, v, lens, mask, scale, 6, 1.5, sinks);
  auto [ref_out, ref_lse] = dense(q, k, v, lens, parents, scale, 6, 1.5, sinks);
  ASSERT_EQ(out.sizes(), ref_out.sizes());
  EXPECT_LT(rel(out, ref_out), 1e-5);
  EXPECT_LT(rel(lse, ref_lse), 1e-5);
  auto [plain_out, plain_lse] = dense(q, k, v, lens, parents, scale);
  EXPECT_GT(rel(out, plain_out), 1e-2);  // the features matter here
  // Paged: one page per 8 slots, in order.
  const int64_t ps = 8, blocks = S / ps;
  at::Tensor tables = at::arange(B * blocks, at::kInt).view({B, blocks});
  at::Tensor kp = k.permute({0, 2, 1, 3}).reshape({B * blocks, ps, Hkv, D});
  at::Tensor vp = v.permute({0, 2, 1, 3}).reshape({B * blocks, ps, Hkv, Dv});
  auto [pout, plse] = specdec::tree_attention_paged(q, kp, vp, tables, lens, mask, scale, 6, 1.5, sinks);
  EXPECT_LT(rel(pout, ref_out), 1e-5);
  EXPECT_LT(rel(plse, ref_lse), 1e-5);
  const std::string e = error_of([&] { specdec::tree_attention(q, k, v, lens, mask, scale, -2); });
  EXPECT_NE(e.find("specdec::tree_attention: window must be >= 0 (0 disables it), got -2"), std::string::npos) << e;
}

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
