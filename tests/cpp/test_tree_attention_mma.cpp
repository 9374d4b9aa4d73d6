// The tensor-core tree-attention kernel body (specdec/attention_mma.h), run on
// the host through the SIMT + mma emulator, against a float64 dense-mask
// softmax.  These run everywhere (no GPU needed); on a GPU the same kernel is
// checked through the op by the CUDA cases of test_tree_attention.cpp / .py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "mma_emulator.h"
#include "specdec/attention_mma.h"

namespace {

namespace mma = specdec::attention::mma;
using specdec::testing::EmuCtx;
using specdec::testing::EmulatedGrid;

struct Case {
  int64_t batch, nodes, q_heads, kv_heads, dim;
  std::vector<int32_t> lens;
  int64_t capacity;        // contiguous slots per sequence (paged: max_blocks * page_size)
  int64_t page_size = 16;  // paged only
  int64_t target_blocks = 1;
  int tree = 0;  // 0 random, 1 chain, 2 star
};

struct Result {
  double out_rel, lse_max_abs;
  int64_t unwritten;
};

template <bool kBf16, bool kPaged, int kD>
Result run_case(const Case& cs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t B = cs.batch, N = cs.nodes, Hq = cs.q_heads, Hkv = cs.kv_heads, D = cs.dim, G = Hq / Hkv;
  const int64_t words = (N + 31) / 32, S = cs.capacity;
  auto fill = [&](std::vector<uint16_t>& x) {
    for (auto& e : x) e = mma::from_float<kBf16>(normal(rng));
  };
  std::vector<uint16_t> q(B * N * Hq * D);
  fill(q);
  // Logical caches [B, Hkv, S, D]; paged copies them into shuffled pages.
  std::vector<uint16_t> k(B * Hkv * S * D), v(k.size());
  fill(k);
  fill(v);
  const int64_t max_blocks = kPaged ? S / cs.page_size : 0, num_pages = B * max_blocks + 3;
  std::vector<int32_t> tables(B * max_blocks);
  std::vector<uint16_t> kp, vp;
  if (kPaged) {
    std::vector<int32_t> perm(num_pages);
    for (int64_t i = 0; i < num_pages; ++i) perm[i] = static_cast<int32_t>(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::copy(perm.begin(), perm.begin() + B * max_blocks, tables.begin());
    kp.assign(num_pages * cs.page_size * Hkv * D, mma::from_float<kBf16>(1e4f));  // unused pages: loud
    vp = kp;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t d = 0; d < D; ++d) {
            const int64_t page = tables[b * max_blocks + s / cs.page_size];
            const int64_t dst = ((page * cs.page_size + s % cs.page_size) * Hkv + h) * D + d;
            kp[dst] = k[((b * Hkv + h) * S + s) * D + d];
            vp[dst] = v[((b * Hkv + h) * S + s) * D + d];
          }
  }
  // Trees and their ancestor masks.
  std::vector<int32_t> parents(B * N), mask(B * N * words, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      int32_t par = -1;
      if (i > 0) par = cs.tree == 1 ? static_cast<int32_t>(i - 1) : cs.tree == 2 ? 0 : static_cast<int32_t>(rng() % i);
      parents[b * N + i] = par;
      for (int64_t a = i; a >= 0; a = parents[b * N + a]) mask[(b * N + i) * words + a / 32] |= int32_t(1u << (a % 32));
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const mma::Plan pl = mma::make_plan<kD>(B, N, Hq, Hkv, D, S, cs.target_blocks);
  const int64_t rows_total = B * N * Hq;
  std::vector<uint16_t> out(rows_total * D, 0x7e7e);  // NaN: unwritten elements show
  std::vector<float> lse(rows_total, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> part_out(pl.splits > 1 ? pl.splits * rows_total * D : 0, std::nanf(""));
  std::vector<float> part_lse(pl.splits > 1 ? pl.splits * rows_total : 0, std::nanf(""));
  std::vector<int64_t> errors(B * 3, 0);
  mma::Params p{q.data(), kPaged ? kp.data() : k.data(), kPaged ? vp.data() : v.data(), cs.lens.data(),
                mask.data(), kPaged ? tables.data() : nullptr, out.data(), lse.data(), part_out.data(),
                part_lse.data(), errors.data(), B, N, Hq, Hkv, D, words, S,
                kPaged ? cs.page_size : 0, max_blocks, kPaged ? num_pages : 0, scale,
                pl.splits, pl.chunk, pl.q_tiles, pl.warps};
  EmulatedGrid grid(32 * pl.warps, pl.smem);
  grid.launch(pl.splits * pl.q_tiles, B * Hkv, [&](const EmuCtx& ctx) {
    mma::tree_attention_block<EmuCtx, kBf16, kPaged, kD>(ctx, p);
  });
  for (int64_t e : errors) EXPECT_EQ(e, 0);
  // Splits: the lse-weighted merge the CUDA merge kernel does.
  std::vector<double> got(rows_total * D), got_lse(rows_total);
  for (int64_t r = 0; r < rows_total; ++r) {
    if (pl.splits == 1) {
      for (int64_t d = 0; d < D; ++d) got[r * D + d] = mma::to_float<kBf16>(out[r * D + d]);
      got_lse[r] = lse[r];
      continue;
    }
    double m = -INFINITY;
    for (int64_t s = 0; s < pl.splits; ++s) m = std::max<double>(m, part_lse[s * rows_total + r]);
    double wsum = 0;
    for (int64_t s = 0; s < pl.splits; ++s) wsum += std::exp(part_lse[s * rows_total + r] - m);
    for (int64_t d = 0; d < D; ++d) {
      double x = 0;
      for (int64_t s = 0; s < pl.splits; ++s) {
        const double w = std::exp(part_lse[s * rows_total + r] - m) / wsum;
        if (w > 0) x += w * part_out[(s * rows_total + r) * D + d];
      }
      got[r * D + d] = x;
    }
    got_lse[r] = m + std::log(wsum);
  }
  // float64 reference.
  double err2 = 0, ref2 = 0, lse_err = 0;
  int64_t unwritten = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = cs.lens[b];
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t hq = 0; hq < Hq; ++hq) {
        const int64_t h = hq / G, r = (b * N + i) * Hq + hq;
        std::vector<double> sc(L + N, -INFINITY);
        double m = -INFINITY;
        for (int64_t s = 0; s < L + N; ++s) {
          const int64_t j = s - L;
          if (s >= L && !((static_cast<uint32_t>(mask[(b * N + i) * words + j / 32]) >> (j % 32)) & 1u)) continue;
          double x = 0;
          for (int64_t d = 0; d < D; ++d)
            x += double(mma::to_float<kBf16>(q[r * D + d])) * mma::to_float<kBf16>(k[((b * Hkv + h) * S + s) * D + d]);
          sc[s] = x * scale;
          m = std::max(m, sc[s]);
        }
        double l = 0;
        for (double x : sc) l += std::exp(x - m);
        for (int64_t d = 0; d < D; ++d) {
          double ref = 0;
          for (int64_t s = 0; s < L + N; ++s)
            ref += std::exp(sc[s] - m) / l * mma::to_float<kBf16>(v[((b * Hkv + h) * S + s) * D + d]);
          const double x = got[r * D + d];
          if (!std::isfinite(x)) ++unwritten;
          err2 += (x - ref) * (x - ref);
          ref2 += ref * ref;
        }
        if (!std::isfinite(got_lse[r])) ++unwritten;
        lse_err = std::max(lse_err, std::abs(got_lse[r] - (m + std::log(l))));
      }
    }
  }
  return {std::sqrt(err2 / ref2), lse_err, unwritten};
}

template <bool kBf16, bool kPaged, int kD>
void expect_close(const Case& cs, uint32_t seed) {
  const Result r = run_case<kBf16, kPaged, kD>(cs, seed);
  EXPECT_EQ(r.unwritten, 0);
  // P and the output are rounded to the input type: ~2^-11 (fp16), 2^-8 (bf16).
  EXPECT_LT(r.out_rel, kBf16 ? 1e-2 : 2e-3);
  EXPECT_LT(r.lse_max_abs, 1e-4);
}

Case base() {
  // Hq 8 / Hkv 2: 12 nodes x 4 = 48 rows, three warps in one tile.
  return Case{3, 12, 8, 2, 64, {0, 57, 130}, 144};
}

TEST(TreeAttentionMmaEmulated, Fp16Contiguous) { expect_close<false, false, 64>(base(), 1); }
TEST(TreeAttentionMmaEmulated, Bf16Contiguous) { expect_close<true, false, 64>(base(), 2); }
TEST(TreeAttentionMmaEmulated, Fp16PagedShuffled) { expect_close<false, true, 64>(base(), 3); }

TEST(TreeAttentionMmaEmulated, SplitsMergeByLse) {
  Case cs = base();
  cs.target_blocks = 1000;  // as many splits as the 144-slot capacity allows (2 key tiles each)
  ASSERT_GT(mma::make_plan<64>(cs.batch, cs.nodes, cs.q_heads, cs.kv_heads, cs.dim, cs.capacity, 1000).splits, 1);
  expect_close<false, false, 64>(cs, 4);
  expect_close<true, true, 64>(cs, 5);
}

TEST(TreeAttentionMmaEmulated, SeveralQueryTiles) {
  // 40 nodes x 8 (MQA, Hkv 1): 320 rows -> 8 warps x 16 rows, 3 tiles, the last partial.
  Case cs{1, 40, 8, 1, 64, {77}, 128};
  const mma::Plan pl = mma::make_plan<64>(1, 40, 8, 1, 64, 128, 1);
  ASSERT_EQ(pl.warps, 8);
  ASSERT_EQ(pl.q_tiles, 3);
  cs.tree = 1;  // a chain: the deepest node sees 40 tree slots across a tile boundary
  expect_close<false, false, 64>(cs, 6);
}

TEST(TreeAttentionMmaEmulated, HeadDim128And256AndUnevenDim) {
  Case cs{1, 5, 4, 4, 128, {70}, 80};  // GQA ratio 1, one warp
  expect_close<false, false, 128>(cs, 7);
  cs.dim = 256;
  cs.tree = 2;
  expect_close<true, false, 256>(cs, 8);
  cs.dim = 96;  // runs in the 128 bucket, columns past 96 zero
  expect_close<false, false, 128>(cs, 9);
}

TEST(TreeAttentionMmaEmulated, EmptyPrefixLargeTreeAndPageSizeOne) {
  Case cs{2, 33, 2, 1, 64, {0, 3}, 48, 1};  // 33 nodes: two mask words
  cs.target_blocks = 4;
  expect_close<true, true, 64>(cs, 10);
}

TEST(TreeAttentionMmaEmulated, ConversionsRoundToNearestEven) {
  // fp16: 1 + 2^-11 is a tie between 1 and 1 + 2^-10 -> even (1); 65520 -> inf; subnormals.
  EXPECT_EQ(mma::from_float<false>(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(mma::from_float<false>(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(mma::from_float<false>(65504.0f), 0x7bff);
  EXPECT_EQ(mma::from_float<false>(65520.0f), 0x7c00);
  EXPECT_EQ(mma::from_float<false>(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(mma::from_float<false>(-std::ldexp(3.0f, -25)), 0x8002);  // 1.5 ulp -> 2 (even)
  EXPECT_EQ(mma::to_float<false>(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(mma::to_float<false>(0xc000), -2.0f);
  EXPECT_TRUE(std::isinf(mma::to_float<false>(0x7c00)));
  // bf16: 1 + 2^-8 ties to 1; 1 + 3 * 2^-8 to 1 + 2^-6.
  EXPECT_EQ(mma::from_float<true>(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(mma::from_float<true>(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(mma::to_float<true>(0x3f82), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(mma::to_float<true>(mma::from_float<true>(std::nanf("")))));
  for (float x : {0.1f, -3.75f, 1234.5f, 6e-5f}) {
    EXPECT_NEAR(mma::to_float<false>(mma::from_float<false>(x)), x, std::abs(x) * 1e-3);
    EXPECT_NEAR(mma::to_float<true>(mma::from_float<true>(x)), x, std::abs(x) * 8e-3);
  }
}

}  // namespace
