// The CUDA tree-attention kernel bodies, run on the host through the CUDA
// emulator (cuda_emulator.h), against a float64 dense-mask softmax:
//   - the tensor-core kernel (specdec/attention_mma_kernels.h), fp16 / bf16;
//   - the SIMT kernel (specdec/attention_simt_kernels.h), fp32 / fp16 / bf16;
//   - the lse merge of split partials both use (merge_row);
// plain attention and with the features of docs/ops.md: the sliding window,
// logit soft-capping, attention sinks (added once: in-kernel with one split,
// in the merge with several) and, in the SIMT kernel, a value head size other
// than the key's.
// These run everywhere (no GPU needed); on a GPU the same source is checked
// through the op by the CUDA cases of test_tree_attention.cpp / .py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cuda_emulator.h"
#include "specdec/attention_mma_kernels.h"
#include "specdec/attention_simt_kernels.h"

namespace {

namespace mma = specdec::attention::mma;
namespace simt = specdec::attention::simt;
namespace kernel = specdec::kernel;
using specdec::testing::EmuCtx;
using specdec::testing::EmulatedGrid;

struct Case {
  int64_t batch, nodes, q_heads, kv_heads, dim;
  std::vector<int32_t> lens;
  int64_t capacity;        // slots per sequence (paged: max_blocks * page_size)
  int64_t page_size = 16;  // paged only
  int64_t target_blocks = 1;
  int tree = 0;  // 0 random, 1 chain, 2 star
  // Features: 0 / 0 / false / 0 disable them (v_dim 0: Dv = dim).
  int64_t window = 0;
  float softcap = 0.0f;
  bool sinks = false;
  int64_t v_dim = 0;
  // With a window: K/V of the prefix slots before every row's window hold NaN
  // (storage only): a kernel that reads one turns it into NaN in the output.
  bool poison_outside_window = false;
};

// Inputs in q's dtype (`kind`), stored as the kernels see them, and their
// float values for the reference.
struct Inputs {
  int kind;
  int64_t B, N, Hq, Hkv, D, Dv, S, words, max_blocks = 0, num_pages = 0;
  std::vector<float> q, k, v;             // logical: q [B,N,Hq,D], k [B,Hkv,S,D], v [B,Hkv,S,Dv]
  std::vector<unsigned char> qs, ks, vs;  // storage (paged: k/v as pages)
  std::vector<int32_t> mask, tables;
  std::vector<float> sinks;  // [Hq] or empty

  size_t elem() const { return kind == simt::kF32 ? 4 : 2; }
  // kernel::store / kernel::load with the kind chosen at run time.
  void put(std::vector<unsigned char>& dst, int64_t i, float x) const {
    if (kind == simt::kF32) {
      kernel::store<simt::kF32>(dst.data(), i, x);
    } else if (kind == simt::kF16) {
      kernel::store<simt::kF16>(dst.data(), i, x);
    } else {
      kernel::store<simt::kBF16>(dst.data(), i, x);
    }
  }
  float get(const std::vector<unsigned char>& src, int64_t i) const {
    return kind == simt::kF32   ? kernel::load<simt::kF32>(src.data(), i)
           : kind == simt::kF16 ? kernel::load<simt::kF16>(src.data(), i)
                                : kernel::load<simt::kBF16>(src.data(), i);
  }
  float round(float x) const {
    std::vector<unsigned char> cell(4);
    put(cell, 0, x);
    return get(cell, 0);
  }
};

Inputs make_inputs(const Case& cs, int kind, bool paged, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Inputs in;
  in.kind = kind;
  in.B = cs.batch;
  in.N = cs.nodes;
  in.Hq = cs.q_heads;
  in.Hkv = cs.kv_heads;
  in.D = cs.dim;
  in.Dv = cs.v_dim > 0 ? cs.v_dim : cs.dim;
  in.S = cs.capacity;
  in.words = (cs.nodes + 31) / 32;
  const int64_t B = in.B, N = in.N, Hkv = in.Hkv, D = in.D, Dv = in.Dv, S = in.S;
  auto fill = [&](std::vector<float>& x, int64_t n) {
    x.resize(n);
    for (auto& e : x) e = in.round(normal(rng));
  };
  fill(in.q, B * N * in.Hq * D);
  fill(in.k, B * Hkv * S * D);
  fill(in.v, B * Hkv * S * Dv);
  in.qs.resize(in.q.size() * in.elem());
  for (size_t i = 0; i < in.q.size(); ++i) in.put(in.qs, i, in.q[i]);
  if (cs.sinks) {  // around the rows' lse (log of ~10 to ~150 keys): the sinks matter
    std::uniform_real_distribution<float> uniform(1.0f, 5.0f);
    for (int64_t h = 0; h < in.Hq; ++h) in.sinks.push_back(uniform(rng));
  }
  // Trees and their ancestor masks.
  std::vector<int32_t> parents(B * N);
  in.mask.assign(B * N * in.words, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      int32_t par = -1;
      if (i > 0) par = cs.tree == 1 ? static_cast<int32_t>(i - 1) : cs.tree == 2 ? 0 : static_cast<int32_t>(rng() % i);
      parents[b * N + i] = par;
      for (int64_t a = i; a >= 0; a = parents[b * N + a])
        in.mask[(b * N + i) * in.words + a / 32] |= int32_t(1u << (a % 32));
    }
  }
  // Storage value of logical element (b, h, s, d) of K (or V): NaN for the
  // prefix slots before every row's window when poisoning (the root, depth 0,
  // has the earliest window: it starts at L - window + 1).
  auto stored = [&](const std::vector<float>& x, int64_t width, int64_t b, int64_t h, int64_t s, int64_t d) {
    if (cs.poison_outside_window && cs.window > 0 && s < cs.lens[b] && s <= cs.lens[b] - cs.window) {
      return std::numeric_limits<float>::quiet_NaN();
    }
    return x[((b * Hkv + h) * S + s) * width + d];
  };
  if (!paged) {
    in.ks.resize(in.k.size() * in.elem());
    in.vs.resize(in.v.size() * in.elem());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t s = 0; s < S; ++s) {
          for (int64_t d = 0; d < D; ++d) in.put(in.ks, ((b * Hkv + h) * S + s) * D + d, stored(in.k, D, b, h, s, d));
          for (int64_t d = 0; d < Dv; ++d) {
            in.put(in.vs, ((b * Hkv + h) * S + s) * Dv + d, stored(in.v, Dv, b, h, s, d));
          }
        }
  } else {
    in.max_blocks = S / cs.page_size;
    in.num_pages = B * in.max_blocks + 3;
    std::vector<int32_t> perm(in.num_pages);
    for (int64_t i = 0; i < in.num_pages; ++i) perm[i] = static_cast<int32_t>(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    in.tables.assign(perm.begin(), perm.begin() + B * in.max_blocks);
    const int64_t rows = in.num_pages * cs.page_size * Hkv;
    in.ks.resize(rows * D * in.elem());
    in.vs.resize(rows * Dv * in.elem());
    for (int64_t i = 0; i < rows * D; ++i) in.put(in.ks, i, 1e4f);  // pages nobody uses: loud values
    for (int64_t i = 0; i < rows * Dv; ++i) in.put(in.vs, i, 1e4f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t page = in.tables[b * in.max_blocks + s / cs.page_size];
          const int64_t token = (page * cs.page_size + s % cs.page_size) * Hkv + h;
          for (int64_t d = 0; d < D; ++d) in.put(in.ks, token * D + d, stored(in.k, D, b, h, s, d));
          for (int64_t d = 0; d < Dv; ++d) in.put(in.vs, token * Dv + d, stored(in.v, Dv, b, h, s, d));
        }
  }
  return in;
}

// What a launch left behind: out (storage of q's dtype) and lse, or split
// partials that merge_row combines the way the CUDA merge kernel does.
struct Outputs {
  std::vector<unsigned char> out;
  std::vector<float> lse, part_out, part_lse;
  std::vector<specdec::ErrorRecord> errors;
  specdec::ErrorRecord sink_error{};
  int64_t splits = 1;
};

Outputs alloc_outputs(const Inputs& in, int64_t splits) {
  const int64_t rows = in.B * in.N * in.Hq;
  Outputs o;
  o.out.assign(rows * in.Dv * in.elem(), 0x7e);  // NaN in every dtype: unwritten elements show
  o.lse.assign(rows, std::numeric_limits<float>::quiet_NaN());
  o.part_out.assign(splits > 1 ? splits * rows * in.Dv : 0, std::nanf(""));
  o.part_lse.assign(splits > 1 ? splits * rows : 0, std::nanf(""));
  o.errors.assign(in.B, specdec::ErrorRecord{});
  o.splits = splits;
  return o;
}

const float* sinks_of(const Inputs& in) { return in.sinks.empty() ? nullptr : in.sinks.data(); }

// The merge kernel of attention_cuda.cu: each row's sink joins here.
template <int kKind>
void merge(const Inputs& in, Outputs& o) {
  if (o.splits == 1) return;
  const int64_t rows = in.B * in.N * in.Hq;
  for (int64_t r = 0; r < rows; ++r) {
    simt::merge_row<kKind>(o.part_out.data(), o.part_lse.data(), o.splits, rows, in.Dv, r, 0, 1, o.out.data(),
                           o.lse.data(), specdec::attention::sink_logit(sinks_of(in), r % in.Hq));
  }
}

template <bool kBf16, bool kPaged, int kD>
Outputs run_mma(const Case& cs, const Inputs& in) {
  const mma::Plan pl = mma::make_plan<kD>(in.B, in.N, in.Hq, in.Hkv, in.D, in.S, cs.target_blocks);
  Outputs o = alloc_outputs(in, pl.splits);
  auto bits = [](const std::vector<unsigned char>& x) { return reinterpret_cast<const uint16_t*>(x.data()); };
  mma::Params p{bits(in.qs),
                bits(in.ks),
                bits(in.vs),
                cs.lens.data(),
                in.mask.data(),
                kPaged ? in.tables.data() : nullptr,
                reinterpret_cast<uint16_t*>(o.out.data()),
                o.lse.data(),
                o.part_out.data(),
                o.part_lse.data(),
                o.errors.data(),
                in.B,
                in.N,
                in.Hq,
                in.Hkv,
                in.D,
                in.words,
                in.S,
                kPaged ? cs.page_size : 0,
                in.max_blocks,
                in.num_pages,
                1.0f / std::sqrt(float(in.D)),
                pl.splits,
                pl.chunk,
                pl.q_tiles,
                pl.warps,
                cs.window,
                cs.softcap,
                sinks_of(in),
                &o.sink_error};
  EmulatedGrid grid(32 * pl.warps, pl.smem);
  grid.launch(pl.splits * pl.q_tiles, in.B * in.Hkv, 1,
              [&](const EmuCtx& ctx) { mma::tree_attention_block<EmuCtx, kBf16, kPaged, kD>(ctx, p); });
  merge<kBf16 ? simt::kBF16 : simt::kF16>(in, o);
  return o;
}

template <int kKind, bool kPaged, int kMaxD>
Outputs run_simt(const Case& cs, const Inputs& in) {
  simt::Params a{in.qs.data(),
                 in.ks.data(),
                 in.vs.data(),
                 cs.lens.data(),
                 in.mask.data(),
                 kPaged ? in.tables.data() : nullptr,
                 nullptr,
                 nullptr,
                 nullptr,
                 nullptr,
                 nullptr,
                 in.B,
                 in.N,
                 in.Hq,
                 in.Hkv,
                 in.D,
                 in.words,
                 in.S,
                 kPaged ? cs.page_size : 0,
                 in.max_blocks,
                 in.num_pages,
                 1.0f / std::sqrt(float(in.D)),
                 1,
                 0,
                 in.Dv,
                 cs.window,
                 cs.softcap,
                 sinks_of(in),
                 nullptr};
  const int64_t q_tiles = (in.N * (in.Hq / in.Hkv) + simt::kRowsPerTile - 1) / simt::kRowsPerTile;
  simt::plan_splits<kMaxD>(a, q_tiles, cs.target_blocks);
  Outputs o = alloc_outputs(in, a.splits);
  a.out = o.out.data();
  a.lse = o.lse.data();
  a.part_out = o.part_out.data();
  a.part_lse = o.part_lse.data();
  a.errors = o.errors.data();
  a.sink_error = &o.sink_error;
  EmulatedGrid grid(simt::kThreads, simt::Tile<kMaxD>::kSmem);
  grid.launch(a.splits, in.B * in.Hkv, q_tiles,
              [&](const EmuCtx& ctx) { simt::tree_attention_block<EmuCtx, kKind, kMaxD, kPaged>(ctx, a); });
  merge<kKind>(in, o);
  return o;
}

// Relative (Frobenius) error of out, worst absolute lse error, and the number
// of outputs left unwritten (NaN), against float64 on the same rounded inputs,
// with the case's window (positions from the mask's depths), softcap and sinks.
struct Result {
  double out_rel, lse_max_abs;
  int64_t unwritten;
};

Result compare(const Case& cs, const Inputs& in, const Outputs& o) {
  const int64_t B = in.B, N = in.N, Hq = in.Hq, Hkv = in.Hkv, D = in.D, Dv = in.Dv, S = in.S, G = Hq / Hkv;
  for (const specdec::ErrorRecord& e : o.errors) EXPECT_EQ(e.code, 0);
  EXPECT_EQ(o.sink_error.code, 0);
  const double scale = 1.0f / std::sqrt(float(D));
  double err2 = 0, ref2 = 0, lse_err = 0;
  int64_t unwritten = 0;
  auto bit = [&](int64_t b, int64_t i, int64_t j) {
    return (static_cast<uint32_t>(in.mask[(b * N + i) * in.words + j / 32]) >> (j % 32)) & 1u;
  };
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = cs.lens[b];
    std::vector<int64_t> depth(N, -1);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) depth[i] += bit(b, i, j);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t qpos = L + depth[i];
      for (int64_t hq = 0; hq < Hq; ++hq) {
        const int64_t h = hq / G, r = (b * N + i) * Hq + hq;
        std::vector<double> sc(L + N, -INFINITY);
        double m = in.sinks.empty() ? -INFINITY : double(in.sinks[hq]);
        for (int64_t s = 0; s < L + N; ++s) {
          const int64_t j = s - L;
          if (s >= L && !bit(b, i, j)) continue;
          const int64_t kpos = s < L ? s : L + depth[j];
          if (cs.window > 0 && qpos - kpos >= cs.window) continue;
          double x = 0;
          for (int64_t d = 0; d < D; ++d) x += double(in.q[r * D + d]) * in.k[((b * Hkv + h) * S + s) * D + d];
          x *= scale;
          if (cs.softcap > 0) x = cs.softcap * std::tanh(x / cs.softcap);
          sc[s] = x;
          m = std::max(m, sc[s]);
        }
        double l = in.sinks.empty() ? 0.0 : std::exp(in.sinks[hq] - m);
        for (double x : sc) l += std::exp(x - m);
        for (int64_t d = 0; d < Dv; ++d) {
          double ref = 0;
          for (int64_t s = 0; s < L + N; ++s) {
            if (sc[s] != -INFINITY) ref += std::exp(sc[s] - m) / l * in.v[((b * Hkv + h) * S + s) * Dv + d];
          }
          const double x = in.get(o.out, r * Dv + d);
          if (!std::isfinite(x)) ++unwritten;
          err2 += (x - ref) * (x - ref);
          ref2 += ref * ref;
        }
        if (!std::isfinite(o.lse[r])) ++unwritten;
        lse_err = std::max(lse_err, std::abs(o.lse[r] - (m + std::log(l))));
      }
    }
  }
  return {std::sqrt(err2 / ref2), lse_err, unwritten};
}

void expect_close(const Result& r, int kind) {
  EXPECT_EQ(r.unwritten, 0);
  // fp32: accumulation order only.  fp16 / bf16: the output rounding (and in
  // the tensor-core kernel P's), ~2^-11 / 2^-8 relative.
  const double tol = kind == simt::kF32 ? 1e-5 : kind == simt::kF16 ? 2e-3 : 1e-2;
  EXPECT_LT(r.out_rel, tol);
  EXPECT_LT(r.lse_max_abs, 1e-4);
}

template <bool kBf16, bool kPaged, int kD>
void check_mma(const Case& cs, uint32_t seed) {
  const int kind = kBf16 ? simt::kBF16 : simt::kF16;
  const Inputs in = make_inputs(cs, kind, kPaged, seed);
  expect_close(compare(cs, in, run_mma<kBf16, kPaged, kD>(cs, in)), kind);
}

template <int kKind, bool kPaged, int kMaxD>
void check_simt(const Case& cs, uint32_t seed) {
  const Inputs in = make_inputs(cs, kKind, kPaged, seed);
  expect_close(compare(cs, in, run_simt<kKind, kPaged, kMaxD>(cs, in)), kKind);
}

Case base() {
  // Hq 8 / Hkv 2: 12 nodes x 4 = 48 rows (tensor cores: three warps in one tile).
  return Case{3, 12, 8, 2, 64, {0, 57, 130}, 144};
}

// ---- tensor-core kernel ----------------------------------------------------

TEST(TreeAttentionMmaEmulated, Fp16Contiguous) { check_mma<false, false, 64>(base(), 1); }
TEST(TreeAttentionMmaEmulated, Bf16Contiguous) { check_mma<true, false, 64>(base(), 2); }
TEST(TreeAttentionMmaEmulated, Fp16PagedShuffled) { check_mma<false, true, 64>(base(), 3); }

TEST(TreeAttentionMmaEmulated, SplitsMergeByLse) {
  Case cs = base();
  cs.target_blocks = 1000;  // as many splits as the 144-slot capacity allows (2 key tiles each)
  ASSERT_GT(mma::make_plan<64>(cs.batch, cs.nodes, cs.q_heads, cs.kv_heads, cs.dim, cs.capacity, 1000).splits, 1);
  check_mma<false, false, 64>(cs, 4);
  check_mma<true, true, 64>(cs, 5);
}

TEST(TreeAttentionMmaEmulated, SeveralQueryTiles) {
  // 40 nodes x 8 (MQA, Hkv 1): 320 rows -> 8 warps x 16 rows, 3 tiles, the last partial.
  Case cs{1, 40, 8, 1, 64, {77}, 128};
  const mma::Plan pl = mma::make_plan<64>(1, 40, 8, 1, 64, 128, 1);
  ASSERT_EQ(pl.warps, 8);
  ASSERT_EQ(pl.q_tiles, 3);
  cs.tree = 1;  // a chain: the deepest node sees 40 tree slots across a tile boundary
  check_mma<false, false, 64>(cs, 6);
}

TEST(TreeAttentionMmaEmulated, HeadDim128And256AndUnevenDim) {
  Case cs{1, 5, 4, 4, 128, {70}, 80};  // GQA ratio 1, one warp
  check_mma<false, false, 128>(cs, 7);
  cs.dim = 256;
  cs.tree = 2;
  check_mma<true, false, 256>(cs, 8);
  cs.dim = 96;  // runs in the 128 bucket, columns past 96 zero
  check_mma<false, false, 128>(cs, 9);
}

TEST(TreeAttentionMmaEmulated, EmptyPrefixLargeTreeAndPageSizeOne) {
  Case cs{2, 33, 2, 1, 64, {0, 3}, 48, 1};  // 33 nodes: two mask words
  cs.target_blocks = 4;
  check_mma<true, true, 64>(cs, 10);
}

// ---- SIMT kernel -------------------------------------------------------------

TEST(TreeAttentionSimtEmulated, Fp32ContiguousAndPaged) {
  check_simt<simt::kF32, false, 64>(base(), 21);
  check_simt<simt::kF32, true, 64>(base(), 22);
}

TEST(TreeAttentionSimtEmulated, HalfTypesOddHeadDim) {
  Case cs = base();
  cs.dim = 36;  // what the tensor-core kernel cannot take
  check_simt<simt::kF16, false, 64>(cs, 23);
  check_simt<simt::kBF16, true, 64>(cs, 24);
}

TEST(TreeAttentionSimtEmulated, SplitsSeveralTilesAndWideHeads) {
  Case cs{2, 40, 8, 2, 64, {0, 300}, 352, 16, 1000};  // 160 rows: 10 tiles of 16; splits
  check_simt<simt::kF32, true, 64>(cs, 25);
  Case wide{1, 5, 4, 2, 256, {40}, 48, 16, 1000, 1};  // D 256: 8-key tiles, splits
  check_simt<simt::kF32, false, 256>(wide, 26);
  wide.dim = 100;
  check_simt<simt::kF32, false, 128>(wide, 27);
}

// ---- features: window, softcap, sinks, Dv != Dk ------------------------------

// base() with a window, softcap 1 (scores are about N(0, 1): capping changes
// them markedly), sinks, and NaN in the prefix slots before every row's window.
Case featured(int64_t window, int tree) {
  Case cs = base();
  cs.window = window;
  cs.softcap = 1.0f;
  cs.sinks = true;
  cs.poison_outside_window = true;
  cs.tree = tree;
  return cs;
}

int64_t mma_splits(const Case& cs) {
  return mma::make_plan<64>(cs.batch, cs.nodes, cs.q_heads, cs.kv_heads, cs.dim, cs.capacity, cs.target_blocks).splits;
}

TEST(TreeAttentionMmaEmulated, WindowSoftcapSinksOneSplit) {
  // Window 7 on a chain of 12: deep nodes see no prefix, only their last ancestors.
  Case cs = featured(7, 1);
  ASSERT_EQ(mma_splits(cs), 1);
  check_mma<false, false, 64>(cs, 41);
  cs = featured(3, 0);  // window 3, random tree, paged, no softcap
  cs.softcap = 0.0f;
  check_mma<true, true, 64>(cs, 42);
}

TEST(TreeAttentionMmaEmulated, WindowSoftcapSinksSplits) {
  // Many splits: most lie before the window (no keys: lse -inf partials); the
  // sinks join once, in the merge.
  Case cs = featured(20, 0);
  cs.batch = 2;
  cs.lens = {40, 370};
  cs.capacity = 384;  // three splits of 128 keys: the second row's window (from 351) lies in the last
  cs.target_blocks = 1000;
  ASSERT_EQ(mma_splits(cs), 3);
  check_mma<false, true, 64>(cs, 43);
  cs = featured(20, 0);
  cs.target_blocks = 1000;
  ASSERT_EQ(mma_splits(cs), 2);
  check_mma<true, false, 64>(cs, 46);
  cs = featured(1, 1);  // window 1: every row sees only itself
  cs.target_blocks = 1000;
  check_mma<true, false, 64>(cs, 44);
  cs = featured(0, 0);  // no window, softcap and sinks only
  cs.poison_outside_window = false;
  cs.target_blocks = 1000;
  check_mma<false, false, 64>(cs, 45);
}

TEST(TreeAttentionSimtEmulated, WindowSoftcapSinksOneSplitAndSplits) {
  Case cs = featured(7, 0);
  check_simt<simt::kF32, false, 64>(cs, 51);
  cs = featured(20, 1);
  cs.batch = 2;
  cs.lens = {40, 500};
  cs.capacity = 528;  // splits of 192 keys (at least 4 tiles of 64): the second row's window is in the last
  cs.target_blocks = 1000;
  simt::Params plan{};
  plan.batch = cs.batch;
  plan.nodes = cs.nodes;
  plan.q_heads = cs.q_heads;
  plan.kv_heads = cs.kv_heads;
  plan.capacity = cs.capacity;
  plan.v_dim = cs.dim;
  simt::plan_splits<64>(plan, 3, cs.target_blocks);
  ASSERT_EQ(plan.splits, 3);
  check_simt<simt::kF32, true, 64>(cs, 52);
  cs = featured(1000, 2);  // a window longer than every sequence: plain attention (with softcap, sinks)
  cs.dim = 36;
  check_simt<simt::kBF16, false, 64>(cs, 53);
}

TEST(TreeAttentionSimtEmulated, ValueHeadSizeDiffers) {
  // Dk 24, Dv 16 (bucket 64); Dk 192, Dv 128 (bucket 256, 8-key tiles); Dk 32,
  // Dv 100 (bucket 128: the V tile is the wider one).  One split and splits.
  Case cs{2, 6, 4, 2, 24, {0, 37}, 48, 16, 1, 0};
  cs.v_dim = 16;
  check_simt<simt::kF16, false, 64>(cs, 61);
  cs.target_blocks = 1000;
  cs.window = 9;
  cs.sinks = true;
  check_simt<simt::kBF16, true, 64>(cs, 62);
  Case wide{1, 5, 4, 2, 192, {40}, 48, 16, 1, 0};
  wide.v_dim = 128;
  check_simt<simt::kF32, false, 256>(wide, 63);
  wide.target_blocks = 1000;
  wide.softcap = 2.0f;
  wide.sinks = true;
  check_simt<simt::kF32, true, 256>(wide, 64);
  Case tall{1, 5, 4, 1, 32, {20}, 32, 16, 1000, 1};
  tall.v_dim = 100;
  tall.window = 4;
  check_simt<simt::kF32, false, 128>(tall, 65);
}

// A non-finite sink is recorded (the launcher raises it in eager mode); the
// outputs stay finite (under graph capture the row runs as without a sink).
TEST(TreeAttentionEmulated, NonFiniteSinkIsRecorded) {
  for (const float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    Case cs = base();
    cs.sinks = true;
    Inputs in = make_inputs(cs, simt::kF16, false, 71);
    in.sinks[5] = bad;
    for (int kernel_kind = 0; kernel_kind < 2; ++kernel_kind) {
      const Outputs o = kernel_kind == 0 ? run_mma<false, false, 64>(cs, in) : run_simt<simt::kF16, false, 64>(cs, in);
      EXPECT_EQ(o.sink_error.code, specdec::attention::kSink);
      EXPECT_EQ(o.sink_error.where, 5);
      const double got = specdec::bits_double(o.sink_error.value);
      EXPECT_TRUE(std::isnan(bad) ? std::isnan(got) : got == bad) << got;
      for (size_t i = 0; i < o.lse.size(); ++i) ASSERT_TRUE(std::isfinite(o.lse[i])) << i;
      for (size_t i = 0; i < o.lse.size() * in.Dv; ++i) ASSERT_TRUE(std::isfinite(in.get(o.out, i))) << i;
    }
  }
}

// ---- conversions ---------------------------------------------------------------

TEST(KernelConversions, RoundToNearestEven) {
  // fp16: 1 + 2^-11 is a tie between 1 and 1 + 2^-10 -> even (1); 65520 -> inf; subnormals.
  EXPECT_EQ(kernel::from_float<false>(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(kernel::from_float<false>(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(kernel::from_float<false>(65504.0f), 0x7bff);
  EXPECT_EQ(kernel::from_float<false>(65520.0f), 0x7c00);
  EXPECT_EQ(kernel::from_float<false>(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(kernel::from_float<false>(-std::ldexp(3.0f, -25)), 0x8002);  // 1.5 ulp -> 2 (even)
  EXPECT_EQ(kernel::to_float<false>(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(kernel::to_float<false>(0xc000), -2.0f);
  EXPECT_TRUE(std::isinf(kernel::to_float<false>(0x7c00)));
  // bf16: 1 + 2^-8 ties to 1; 1 + 3 * 2^-8 to 1 + 2^-6.
  EXPECT_EQ(kernel::from_float<true>(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(kernel::from_float<true>(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(kernel::to_float<true>(0x3f82), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(kernel::to_float<true>(kernel::from_float<true>(std::nanf("")))));
  for (float x : {0.1f, -3.75f, 1234.5f, 6e-5f}) {
    EXPECT_NEAR(kernel::to_float<false>(kernel::from_float<false>(x)), x, std::abs(x) * 1e-3);
    EXPECT_NEAR(kernel::to_float<true>(kernel::from_float<true>(x)), x, std::abs(x) * 8e-3);
  }
}

}  // namespace
