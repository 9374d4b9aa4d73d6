// kv_compact_ and kv_compact_paged_ through the dispatcher (the public C++
// API), against a sequential reference written here in the plainest way.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "ops/kv_compact.h"
#include "test_util.h"

namespace {

using specdec::testing::error_of;

struct Case {
  at::Tensor lens, accept, num;  // int32 [B], [B, M], [B]
};

// Random trees of `nodes` nodes; each row accepts the root-to-node path of a
// random node (strictly increasing node indices starting at 0), or nothing.
Case random_case(std::mt19937& rng, int64_t batch, int64_t nodes, int64_t slots) {
  Case c;
  c.lens = at::empty({batch}, at::kInt);
  c.accept = at::full({batch, nodes}, -1, at::kInt);
  c.num = at::empty({batch}, at::kInt);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int> parent(nodes, -1);
    for (int64_t i = 1; i < nodes; ++i) parent[i] = std::uniform_int_distribution<int>(0, i - 1)(rng);
    std::vector<int> path;
    if (std::uniform_int_distribution<int>(0, 9)(rng) > 0) {  // 1 row in 10 accepts nothing
      for (int v = std::uniform_int_distribution<int>(0, nodes - 1)(rng); v >= 0; v = parent[v]) {
        path.insert(path.begin(), v);
      }
    }
    for (size_t j = 0; j < path.size(); ++j) c.accept[b][j] = path[j];
    c.num[b] = static_cast<int>(path.size());
    c.lens[b] = std::uniform_int_distribution<int>(0, slots - nodes)(rng);
  }
  return c;
}

void reference_contiguous(std::vector<at::Tensor>& caches, const Case& c) {
  for (auto& t : caches) {
    for (int64_t b = 0; b < c.lens.size(0); ++b) {
      const int64_t len = c.lens[b].item<int>();
      for (int64_t j = 0; j < c.num[b].item<int>(); ++j) {
        const int64_t src = len + c.accept[b][j].item<int>();
        t.select(0, b).select(1, len + j).copy_(t.select(0, b).select(1, src).clone());
      }
    }
  }
}

void reference_paged(std::vector<at::Tensor>& pages, const at::Tensor& tables, const Case& c) {
  for (auto& t : pages) {
    const int64_t ps = t.size(1);
    auto slot = [&](int64_t b, int64_t s) { return t.select(0, tables[b][s / ps].item<int>()).select(0, s % ps); };
    for (int64_t b = 0; b < c.lens.size(0); ++b) {
      const int64_t len = c.lens[b].item<int>();
      for (int64_t j = 0; j < c.num[b].item<int>(); ++j) {
        slot(b, len + j).copy_(slot(b, len + c.accept[b][j].item<int>()).clone());
      }
    }
  }
}

// `.to(kCPU)` of a CPU tensor is the same tensor: always copy instead.
at::Tensor on(const at::Tensor& t, const at::Device& d) { return t.clone().to(d); }

std::vector<at::Tensor> clone_all(const std::vector<at::Tensor>& v) {
  std::vector<at::Tensor> out;
  for (const auto& t : v) out.push_back(t.clone());
  return out;
}

std::vector<at::Tensor> to_device(const std::vector<at::Tensor>& v, const at::Device& d) {
  std::vector<at::Tensor> out;
  for (const auto& t : v) out.push_back(on(t, d));
  return out;
}

void expect_equal(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].cpu(), b[i].cpu())) << "tensor " << i;
}

void check_contiguous(const at::Device& device, at::ScalarType dtype, int64_t head_dim) {
  std::mt19937 rng(1234 + head_dim);
  at::manual_seed(99);
  const int64_t B = 5, H = 3, S = 80, N = 17, layers = 4;
  std::vector<at::Tensor> caches;
  for (int l = 0; l < layers; ++l) caches.push_back(at::randn({B, H, S, head_dim}).to(dtype));
  Case c = random_case(rng, B, N, S);
  auto expected = clone_all(caches);
  reference_contiguous(expected, c);
  auto got = to_device(caches, device);
  at::Tensor lens = on(c.lens, device);
  specdec::kv_compact_(got, lens, on(c.accept, device), on(c.num, device));
  expect_equal(got, expected);
  EXPECT_TRUE(at::equal(lens.cpu(), c.lens + c.num));
}

void check_paged(const at::Device& device, int64_t page_size) {
  std::mt19937 rng(77 + page_size);
  at::manual_seed(7);
  const int64_t B = 4, H = 2, D = 64, N = 24, layers = 3;
  const int64_t max_blocks = (96 + page_size - 1) / page_size;
  const int64_t P = B * max_blocks + 3;
  // Every row gets distinct pages, in shuffled order.
  at::Tensor perm = at::randperm(P, at::kInt);
  at::Tensor tables = perm.narrow(0, 0, B * max_blocks).view({B, max_blocks}).contiguous();
  std::vector<at::Tensor> k, v;
  for (int l = 0; l < layers; ++l) {
    k.push_back(at::randn({P, page_size, H, D}).to(at::kHalf));
    v.push_back(at::randn({P, page_size, H, D}).to(at::kHalf));
  }
  Case c = random_case(rng, B, N, max_blocks * page_size);
  auto ek = clone_all(k), ev = clone_all(v);
  reference_paged(ek, tables, c);
  reference_paged(ev, tables, c);
  auto gk = to_device(k, device), gv = to_device(v, device);
  at::Tensor lens = on(c.lens, device);
  specdec::kv_compact_paged_(gk, gv, on(tables, device), lens, on(c.accept, device), on(c.num, device));
  expect_equal(gk, ek);
  expect_equal(gv, ev);
  EXPECT_TRUE(at::equal(lens.cpu(), c.lens + c.num));
}

// Node 2 moves to slot 1 while node 3 moves to slot 2: reading must precede writing.
void check_overlap(const at::Device& device) {
  at::Tensor cache = at::arange(1 * 1 * 8 * 2, at::kFloat).view({1, 1, 8, 2});
  std::vector<at::Tensor> caches{on(cache, device)};
  at::Tensor lens = at::tensor({1}, at::kInt).to(device);
  at::Tensor accept = at::tensor({0, 2, 3, -1}, at::kInt).view({1, 4}).to(device);
  at::Tensor num = at::tensor({3}, at::kInt).to(device);
  specdec::kv_compact_(caches, lens, accept, num);
  // slots 1..3 now hold old slots 1, 3, 4 (values 2k, 2k+1 for old slot k).
  at::Tensor expected = cache.clone();
  expected[0][0][2] = cache[0][0][3];
  expected[0][0][3] = cache[0][0][4];
  EXPECT_TRUE(at::equal(caches[0].cpu(), expected));
  EXPECT_EQ(lens.cpu()[0].item<int>(), 4);
}

void check_bad_input(const at::Device& device) {
  const int64_t B = 2, H = 2, S = 16, D = 8;
  std::vector<at::Tensor> caches{at::randn({B, H, S, D}).to(device), at::randn({B, H, S, D}).to(device)};
  const auto before = clone_all(caches);
  at::Tensor lens = at::tensor({3, 4}, at::kInt).to(device);
  at::Tensor num = at::tensor({2, 3}, at::kInt).to(device);
  auto run = [&](const at::Tensor& accept) {
    return error_of([&] { specdec::kv_compact_(caches, lens, on(accept, device), num); });
  };
  auto accept = [](std::vector<int> v) { return at::tensor(v, at::kInt).view({2, 3}); };
  // Row 1 not strictly increasing; row 0 fine: nothing at all may be written.
  std::string e = run(accept({0, 1, -1, 0, 2, 2}));
  EXPECT_NE(e.find("specdec::kv_compact_"), std::string::npos) << e;
  EXPECT_NE(e.find("accept_nodes[1, 2]"), std::string::npos) << e;
  e = run(accept({0, 20, -1, 0, 1, 2}));  // slot 3 + 20 beyond 16
  EXPECT_NE(e.find("beyond the cache"), std::string::npos) << e;
  e = run(accept({-3, 1, -1, 0, 1, 2}));
  EXPECT_NE(e.find("is negative"), std::string::npos) << e;
  e = error_of([&] {
    specdec::kv_compact_(caches, lens, accept({0, 1, -1, 0, 1, 2}).to(device), at::tensor({2, 4}, at::kInt).to(device));
  });
  EXPECT_NE(e.find("num_accepted[1] = 4"), std::string::npos) << e;
  e = error_of([&] { specdec::kv_compact_(caches, lens, accept({0, 1, -1, 0, 1, 2}).to(device).to(at::kLong), num); });
  EXPECT_NE(e.find("accept_nodes must have dtype int32"), std::string::npos) << e;
  e = error_of([&] {
    std::vector<at::Tensor> wrong{caches[0], at::randn({B, H, S + 1, D}).to(device)};
    specdec::kv_compact_(wrong, lens, accept({0, 1, -1, 0, 1, 2}).to(device), num);
  });
  EXPECT_NE(e.find("caches[1] must have the shape"), std::string::npos) << e;
  expect_equal(caches, before);
  EXPECT_TRUE(at::equal(lens.cpu(), at::tensor({3, 4}, at::kInt)));
}

void check_empty_batch(const at::Device& device) {
  std::vector<at::Tensor> caches{at::randn({0, 2, 8, 4}).to(device)};
  at::Tensor lens = at::empty({0}, at::kInt).to(device);
  specdec::kv_compact_(caches, lens, at::empty({0, 3}, at::kInt).to(device), at::empty({0}, at::kInt).to(device));
  EXPECT_EQ(lens.numel(), 0);
}

TEST(KvCompactCpu, MatchesReferenceFp32) { check_contiguous(at::kCPU, at::kFloat, 64); }
TEST(KvCompactCpu, MatchesReferenceFp16) { check_contiguous(at::kCPU, at::kHalf, 128); }
TEST(KvCompactCpu, MatchesReferenceBf16HeadDim256) { check_contiguous(at::kCPU, at::kBFloat16, 256); }
TEST(KvCompactCpu, OddHeadDim) { check_contiguous(at::kCPU, at::kHalf, 5); }
TEST(KvCompactCpu, OverlappingSourcesAndDestinations) { check_overlap(at::kCPU); }
TEST(KvCompactCpu, BadInputRaisesAndWritesNothing) { check_bad_input(at::kCPU); }
TEST(KvCompactCpu, EmptyBatch) { check_empty_batch(at::kCPU); }
TEST(KvCompactPagedCpu, MatchesReferencePageSize1) { check_paged(at::kCPU, 1); }
TEST(KvCompactPagedCpu, MatchesReferencePageSize16) { check_paged(at::kCPU, 16); }

TEST(KvCompactPagedCpu, BlockTableOutOfRangeRaises) {
  std::vector<at::Tensor> k{at::randn({4, 4, 1, 8})}, v{at::randn({4, 4, 1, 8})};
  at::Tensor tables = at::tensor({0, 9}, at::kInt).view({1, 2});
  at::Tensor lens = at::tensor({3}, at::kInt);
  const std::string e = error_of([&] {
    specdec::kv_compact_paged_(k, v, tables, lens, at::tensor({0, 2}, at::kInt).view({1, 2}),
                               at::tensor({2}, at::kInt));
  });
  EXPECT_NE(e.find("specdec::kv_compact_paged_: block_tables[0, 1] = 9"), std::string::npos) << e;
  EXPECT_EQ(lens[0].item<int>(), 3);
}

TEST(KvCompactCuda, MatchesReferenceFp16) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_contiguous(at::kCUDA, at::kHalf, 128);
}
TEST(KvCompactCuda, MatchesReferenceFp32OddHeadDim) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_contiguous(at::kCUDA, at::kFloat, 5);
}
TEST(KvCompactCuda, MatchesReferenceBf16HeadDim256) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_contiguous(at::kCUDA, at::kBFloat16, 256);
}
TEST(KvCompactCuda, OverlappingSourcesAndDestinations) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_overlap(at::kCUDA);
}
TEST(KvCompactCuda, BadInputRaisesAndWritesNothing) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_bad_input(at::kCUDA);
}
TEST(KvCompactCuda, EmptyBatch) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_empty_batch(at::kCUDA);
}
TEST(KvCompactPagedCuda, MatchesReferencePageSize16) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_paged(at::kCUDA, 16);
}
TEST(KvCompactPagedCuda, MatchesReferencePageSize1) {
  SPECDEC_SKIP_WITHOUT_CUDA();
  check_paged(at::kCUDA, 1);
}

}  // namespace
