// Acceptance sampling ops through the dispatcher (the public C++ API): rule
// properties that any correct implementation has, bad input, and CPU == CUDA.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "ops/acceptance.h"
#include "test_util.h"

namespace {

using specdec::testing::error_of;

using Verdict = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::Tensor longs(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

at::Tensor chain_parents(int64_t batch, int64_t nodes) {
  return at::arange(-1, nodes - 1, at::kInt).repeat({batch, 1});
}

at::Tensor random_probs(int64_t batch, int64_t nodes, int64_t vocab, double scale) {
  return at::softmax(at::randn({batch, nodes, vocab}) * scale, -1).contiguous();
}

TEST(VerifyGreedy, FollowsTheArgmaxChain) {
  // Chain of 4 drafts: tokens 5, 6, 7, 8; the target agrees on the first two.
  at::Tensor tokens = longs({1, 5, 6, 7, 8}).view({1, 5});
  at::Tensor argmax = longs({5, 6, 9, 0, 0}).view({1, 5});
  auto [accept, num, next] = specdec::verify_greedy(tokens, chain_parents(1, 5), argmax);
  EXPECT_EQ(num.item<int>(), 3);
  EXPECT_TRUE(at::equal(accept, at::tensor({0, 1, 2, -1, -1}, at::kInt).view({1, 5})));
  EXPECT_EQ(next.item<int64_t>(), 9);  // the target's correction after node 2
}

TEST(VerifyGreedy, TakesTheFirstMatchingSibling) {
  // Root children 1 (token 3) and 2 (token 4); the target wants 4; node 3 (token 7) is 2's child.
  at::Tensor parents = at::tensor({-1, 0, 0, 2}, at::kInt).view({1, 4});
  at::Tensor tokens = longs({0, 3, 4, 7}).view({1, 4});
  at::Tensor argmax = longs({4, 1, 7, 2}).view({1, 4});
  auto [accept, num, next] = specdec::verify_greedy(tokens, parents, argmax);
  EXPECT_EQ(num.item<int>(), 3);
  EXPECT_TRUE(at::equal(accept, at::tensor({0, 2, 3, -1}, at::kInt).view({1, 4})));
  EXPECT_EQ(next.item<int64_t>(), 2);
}

// With the draft equal to the target, min(1, p/q) = 1: every draft is accepted.
TEST(RejectionSample, DraftEqualToTargetAcceptsEverything) {
  at::manual_seed(11);
  const int64_t B = 32, N = 6, V = 40;
  at::Tensor probs = random_probs(B, N, V, 1.0);
  at::Tensor tokens = at::multinomial(probs.view({B * N, V}), 1).view({B, N});
  at::Tensor seed = at::randint(1, 1 << 30, {B}, at::kLong), offset = at::zeros({B}, at::kLong);
  auto [accept, num, next] = specdec::rejection_sample(tokens, chain_parents(B, N), probs, probs, seed, offset);
  EXPECT_TRUE(at::all(num == N).item<bool>());
  EXPECT_TRUE(at::equal(accept, at::arange(N, at::kInt).repeat({B, 1})));
  EXPECT_TRUE(at::all((next >= 0) & (next < V)).item<bool>());
}

// Deterministic drafts whose token has zero target mass are always rejected,
// and the emitted token is never the rejected one.
TEST(RejectionSample, ZeroMassDraftIsRejectedAndNotEmitted) {
  at::manual_seed(12);
  const int64_t B = 64, N = 3, V = 10;
  at::Tensor target = random_probs(B, N, V, 1.0);
  at::Tensor tokens = at::randint(0, V, {B, N}, at::kLong);
  for (int64_t b = 0; b < B; ++b) target[b][0][tokens[b][1].item<int64_t>()] = 0.0f;
  target = target / target.sum(-1, true);
  at::Tensor seed = at::arange(B, at::kLong) * 7919, offset = at::zeros({B}, at::kLong);
  auto [accept, num, next] = specdec::rejection_sample(tokens, chain_parents(B, N), std::nullopt, target, seed, offset);
  EXPECT_TRUE(at::all(num == 1).item<bool>());
  EXPECT_TRUE(at::all(next != tokens.select(1, 1)).item<bool>());
}

TEST(RejectionSample, SameSeedSameResultOtherOffsetOtherResult) {
  at::manual_seed(13);
  const int64_t B = 64, N = 5, V = 50;
  at::Tensor target = random_probs(B, N, V, 2.0), draft = random_probs(B, N, V, 2.0);
  at::Tensor tokens = at::multinomial(draft.view({B * N, V}), 1).view({B, N});
  at::Tensor seed = at::randint(0, 1 << 30, {B}, at::kLong), offset = at::zeros({B}, at::kLong);
  Verdict a = specdec::rejection_sample(tokens, chain_parents(B, N), draft, target, seed, offset);
  Verdict b = specdec::rejection_sample(tokens, chain_parents(B, N), draft, target, seed, offset);
  Verdict c = specdec::rejection_sample(tokens, chain_parents(B, N), draft, target, seed, offset + 1);
  EXPECT_TRUE(at::equal(std::get<2>(a), std::get<2>(b)));
  EXPECT_TRUE(at::equal(std::get<1>(a), std::get<1>(b)));
  EXPECT_FALSE(at::equal(std::get<2>(a), std::get<2>(c)));
}

TEST(RejectionSample, BrokenTreeRaisesNamingTheEntry) {
  const int64_t V = 8;
  at::Tensor parents = at::tensor({-1, 0, 2}, at::kInt).view({1, 3});  // node 2 is its own parent
  at::Tensor tokens = longs({0, 1, 2}).view({1, 3});
  at::Tensor probs = random_probs(1, 3, V, 1.0);
  at::Tensor seed = at::zeros({1}, at::kLong);
  const std::string e = error_of([&] { specdec::rejection_sample(tokens, parents, std::nullopt, probs, seed, seed); });
  EXPECT_NE(e.find("specdec::rejection_sample: parents[0, 2] = 2"), std::string::npos) << e;
}

TEST(RejectionSample, NanProbabilityRaises) {
  at::Tensor probs = random_probs(1, 2, 6, 1.0);
  probs[0][0][1] = std::numeric_limits<float>::quiet_NaN();  // the drafted token: read by its test
  at::Tensor tokens = longs({0, 1}).view({1, 2});
  at::Tensor seed = at::zeros({1}, at::kLong);
  const std::string e =
      error_of([&] { specdec::rejection_sample(tokens, chain_parents(1, 2), probs, probs, seed, seed); });
  EXPECT_NE(e.find("specdec::rejection_sample: target_probs[0, 0, 1]"), std::string::npos) << e;
}

// The methods of rejection_sample through the C++ API (method, siblings as strings).
TEST(RejectionSampleMethods, DraftEqualToTargetAcceptsEverything) {
  at::manual_seed(15);
  const int64_t B = 16, N = 5, V = 30;
  at::Tensor probs = random_probs(B, N, V, 1.0);
  at::Tensor tokens = at::multinomial(probs.view({B * N, V}), 1).view({B, N});
  at::Tensor seed = at::randint(1, 1 << 30, {B}, at::kLong), offset = at::zeros({B}, at::kLong);
  for (const char* method : {"tokenwise", "block", "traversal"}) {
    for (const char* siblings : {"iid", "without_replacement"}) {
      auto [accept, num, next] =
          specdec::rejection_sample(tokens, chain_parents(B, N), probs, probs, seed, offset, method, siblings);
      EXPECT_TRUE(at::all(num == N).item<bool>()) << method << " " << siblings;
      EXPECT_TRUE(at::equal(accept, at::arange(N, at::kInt).repeat({B, 1})));
    }
  }
}

TEST(RejectionSampleMethods, BlockEqualsTraversalOnChains) {
  at::manual_seed(16);
  const int64_t B = 64, N = 6, V = 20;
  at::Tensor target = random_probs(B, N, V, 2.0), draft = random_probs(B, N, V, 2.0);
  at::Tensor tokens = at::multinomial(draft.view({B * N, V}), 1).view({B, N});
  at::Tensor seed = at::arange(B, at::kLong) * 31, offset = at::full({B}, 5, at::kLong);
  Verdict block = specdec::rejection_sample(tokens, chain_parents(B, N), draft, target, seed, offset, "block");
  Verdict trav = specdec::rejection_sample(tokens, chain_parents(B, N), draft, target, seed, offset, "traversal",
                                           "without_replacement");
  EXPECT_TRUE(at::equal(std::get<0>(block), std::get<0>(trav)));
  EXPECT_TRUE(at::equal(std::get<1>(block), std::get<1>(trav)));
  EXPECT_TRUE(at::equal(std::get<2>(block), std::get<2>(trav)));
  EXPECT_GT(std::get<1>(block).sum().item<int64_t>(), B);  // some drafts are accepted
}

TEST(RejectionSampleMethods, BadNamesAndTreesForBlockRaise) {
  at::Tensor probs = random_probs(1, 3, 6, 1.0);
  at::Tensor tokens = longs({0, 1, 2}).view({1, 3});
  at::Tensor seed = at::zeros({1}, at::kLong);
  const at::Tensor chain = chain_parents(1, 3);
  std::string e = error_of([&] { specdec::rejection_sample(tokens, chain, probs, probs, seed, seed, "greedy"); });
  EXPECT_NE(e.find("specdec::rejection_sample: method must be 'tokenwise', 'block' or 'traversal', got 'greedy'"),
            std::string::npos)
      << e;
  e = error_of([&] { specdec::rejection_sample(tokens, chain, probs, probs, seed, seed, "block", "wor"); });
  EXPECT_NE(e.find("specdec::rejection_sample: siblings must be 'iid' or 'without_replacement', got 'wor'"),
            std::string::npos)
      << e;
  const at::Tensor star = at::tensor({-1, 0, 0}, at::kInt).view({1, 3});
  for (bool with_draft : {true, false}) {
    std::optional<at::Tensor> d = with_draft ? std::optional<at::Tensor>(probs) : std::nullopt;
    e = error_of([&] { specdec::rejection_sample(tokens, star, d, probs, seed, seed, "block"); });
    EXPECT_NE(e.find("specdec::rejection_sample: parents[0, 2] = 0: method='block' verifies chains only"),
              std::string::npos)
        << e;
  }
}

TEST(TypicalAccept, ConfidentChainIsAccepted) {
  // One-hot targets on the drafted tokens have zero entropy: every draft passes.
  const int64_t N = 4, V = 5;
  at::Tensor tokens = longs({0, 1, 2, 3}).view({1, N});
  at::Tensor target = at::zeros({1, N, V});
  for (int64_t i = 0; i + 1 < N; ++i) target[0][i][tokens[0][i + 1].item<int64_t>()] = 1.0f;
  target[0][N - 1][4] = 1.0f;
  at::Tensor seed = at::zeros({1}, at::kLong);
  auto [accept, num, next] = specdec::typical_accept(tokens, chain_parents(1, N), target, 0.09, 0.3, seed, seed);
  EXPECT_EQ(num.item<int>(), N);
  EXPECT_EQ(next.item<int64_t>(), 4);
}

// A ragged batch equals the padded op on each row alone (B = 1, N = N_b).
TEST(RaggedVerifiers, EqualThePaddedOpsRowByRow) {
  at::manual_seed(17);
  const int64_t V = 200;
  at::Tensor cu = at::tensor({0, 1, 5, 8}, at::kInt);
  at::Tensor parents = at::tensor({-1, -1, 0, 1, 2, -1, 0, 0}, at::kInt);
  at::Tensor target = random_probs(1, 8, V, 3.0)[0], draft = random_probs(1, 8, V, 3.0)[0];
  at::Tensor tokens = at::multinomial(draft, 1).view({8});
  at::Tensor argmax = tokens.roll(-1);
  at::Tensor seed = at::tensor({5, -7, 9}, at::kLong), offset = at::tensor({0, 1, 2}, at::kLong);
  const Verdict greedy = specdec::verify_greedy_ragged(tokens, parents, cu, argmax);
  const Verdict rs = specdec::rejection_sample_ragged(tokens, parents, cu, draft, target, seed, offset);
  const Verdict det = specdec::rejection_sample_ragged(tokens, parents, cu, std::nullopt, target, seed, offset);
  const Verdict ta = specdec::typical_accept_ragged(tokens, parents, cu, target, 0.09, 0.3, seed, offset);
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t lo = cu[b].item<int>(), hi = cu[b + 1].item<int>();
    auto row = [&](const at::Tensor& x) { return x.slice(0, lo, hi).unsqueeze(0).contiguous(); };
    auto one = [&](const at::Tensor& x) { return x.slice(0, b, b + 1); };
    const Verdict want[4] = {
        specdec::verify_greedy(row(tokens), row(parents), row(argmax)),
        specdec::rejection_sample(row(tokens), row(parents), row(draft), row(target), one(seed), one(offset)),
        specdec::rejection_sample(row(tokens), row(parents), std::nullopt, row(target), one(seed), one(offset)),
        specdec::typical_accept(row(tokens), row(parents), row(target), 0.09, 0.3, one(seed), one(offset))};
    const Verdict* got[4] = {&greedy, &rs, &det, &ta};
    for (int op = 0; op < 4; ++op) {
      EXPECT_TRUE(at::equal(std::get<0>(*got[op]).slice(0, lo, hi), std::get<0>(want[op])[0])) << op << " row " << b;
      EXPECT_EQ(std::get<1>(*got[op])[b].item<int>(), std::get<1>(want[op])[0].item<int>()) << op << " row " << b;
      EXPECT_EQ(std::get<2>(*got[op])[b].item<int64_t>(), std::get<2>(want[op])[0].item<int64_t>())
          << op << " row " << b;
    }
  }
}

TEST(RaggedVerifiers, BadOffsetsAndLocalParentsRaiseNamingTheEntry) {
  at::Tensor tokens = longs({0, 1, 2, 3}), target = random_probs(1, 4, 6, 1.0)[0];
  at::Tensor seed = at::zeros({2}, at::kLong);
  const std::string e1 = error_of([&] {
    specdec::rejection_sample_ragged(tokens, at::tensor({-1, 0, -1, 0}, at::kInt), at::tensor({0, 2, 2}, at::kInt),
                                     std::nullopt, target, seed, seed);
  });
  EXPECT_NE(e1.find("specdec::rejection_sample_ragged: cu_nodes[2] = 2 is not greater than cu_nodes[1]"),
            std::string::npos)
      << e1;
  const std::string e2 = error_of([&] {
    specdec::rejection_sample_ragged(tokens, at::tensor({-1, 0, -1, 1}, at::kInt), at::tensor({0, 2, 4}, at::kInt),
                                     std::nullopt, target, seed, seed);
  });
  EXPECT_NE(e2.find("parents[3] = 1 is outside [0, 1): node 1 of row 1"), std::string::npos) << e2;
}

// The same seeds give the same tokens on CPU and CUDA.
TEST(AcceptanceCuda, MatchesCpu) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  at::manual_seed(14);
  const int64_t B = 16, N = 9, V = 3000;
  at::Tensor target = random_probs(B, N, V, 3.0), draft = random_probs(B, N, V, 3.0);
  at::Tensor tokens = at::multinomial(draft.view({B * N, V}), 1).view({B, N});
  at::Tensor parents = chain_parents(B, N);
  at::Tensor seed = at::randint(0, 1 << 30, {B}, at::kLong), offset = at::zeros({B}, at::kLong);
  const at::Device cuda(at::kCUDA);
  for (const char* method : {"tokenwise", "block", "traversal"}) {
    for (const char* siblings : {"iid", "without_replacement"}) {
      Verdict cpu = specdec::rejection_sample(tokens, parents, draft, target, seed, offset, method, siblings);
      Verdict gpu = specdec::rejection_sample(tokens.to(cuda), parents.to(cuda), draft.to(cuda), target.to(cuda),
                                              seed.to(cuda), offset.to(cuda), method, siblings);
      EXPECT_TRUE(at::equal(std::get<0>(cpu), std::get<0>(gpu).cpu())) << method << " " << siblings;
      EXPECT_TRUE(at::equal(std::get<1>(cpu), std::get<1>(gpu).cpu())) << method << " " << siblings;
      EXPECT_TRUE(at::equal(std::get<2>(cpu), std::get<2>(gpu).cpu())) << method << " " << siblings;
    }
  }
  for (bool with_draft : {true, false}) {
    std::optional<at::Tensor> d = with_draft ? std::optional<at::Tensor>(draft) : std::nullopt;
    std::optional<at::Tensor> dc = with_draft ? std::optional<at::Tensor>(draft.to(cuda)) : std::nullopt;
    Verdict cpu = specdec::rejection_sample(tokens, parents, d, target, seed, offset);
    Verdict gpu = specdec::rejection_sample(tokens.to(cuda), parents.to(cuda), dc, target.to(cuda), seed.to(cuda),
                                            offset.to(cuda));
    EXPECT_TRUE(at::equal(std::get<0>(cpu), std::get<0>(gpu).cpu()));
    EXPECT_TRUE(at::equal(std::get<1>(cpu), std::get<1>(gpu).cpu()));
    EXPECT_TRUE(at::equal(std::get<2>(cpu), std::get<2>(gpu).cpu()));
    // The same rows as a ragged batch (all of N nodes), on both devices.
    at::Tensor cu = at::arange(0, B * N + 1, N, at::kInt);
    std::optional<at::Tensor> df = with_draft ? std::optional<at::Tensor>(draft.view({B * N, V})) : std::nullopt;
    std::optional<at::Tensor> dfc =
        with_draft ? std::optional<at::Tensor>(draft.view({B * N, V}).to(cuda)) : std::nullopt;
    Verdict rc = specdec::rejection_sample_ragged(tokens.view({B * N}), parents.view({B * N}), cu, df,
                                                  target.view({B * N, V}), seed, offset);
    Verdict rg =
        specdec::rejection_sample_ragged(tokens.view({B * N}).to(cuda), parents.view({B * N}).to(cuda), cu.to(cuda),
                                         dfc, target.view({B * N, V}).to(cuda), seed.to(cuda), offset.to(cuda));
    EXPECT_TRUE(at::equal(std::get<0>(rc), std::get<0>(cpu).view({B * N})));
    EXPECT_TRUE(at::equal(std::get<0>(rc), std::get<0>(rg).cpu()));
    EXPECT_TRUE(at::equal(std::get<1>(rc), std::get<1>(rg).cpu()));
    EXPECT_TRUE(at::equal(std::get<2>(rc), std::get<2>(rg).cpu()));
  }
}

}  // namespace
