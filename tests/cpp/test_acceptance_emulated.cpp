// The CUDA acceptance, build_tree and sampling_probs kernel bodies
// (specdec/acceptance_device.h), run on the host through the CUDA emulator
// (cuda_emulator.h).  The walks are shared code, so what is under test is the
// block policy: its float64 block sum, tiled block scan + min search, the
// leader-write scratch and the first-reporter error; it must give exactly the
// verdicts of the CPU kernel's sequential policy (accept::SequentialRow) on the
// same rows and Philox streams.
// sampling_probs is checked against a sort-based float64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_emulator.h"
#include "specdec/acceptance_device.h"

namespace {

namespace accept = specdec::accept;
namespace dev = specdec::accept::device;
namespace kernel = specdec::kernel;
namespace sampling = specdec::sampling;
using specdec::testing::EmuCtx;
using specdec::testing::EmulatedGrid;

struct Batch {
  int64_t B, N, V;
  std::vector<int32_t> parents;
  std::vector<int64_t> tokens, seed, offset;
  std::vector<float> target, draft;
};

std::vector<float> random_dist(std::mt19937& rng, int64_t V, double sharp) {
  std::vector<float> p(V);
  std::exponential_distribution<double> e(1.0);
  double s = 0;
  std::vector<double> w(V);
  for (auto& x : w) s += x = std::pow(e(rng), sharp);
  for (int64_t i = 0; i < V; ++i) p[i] = static_cast<float>(w[i] / s);
  return p;
}

Batch make_batch(int64_t B, int64_t N, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch bt;
  bt.B = B;
  bt.N = N;
  bt.V = V;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      bt.parents.push_back(i == 0 ? -1 : static_cast<int32_t>(rng() % i));
      // Concentrated distributions so that drafts are often accepted.
      const auto t = random_dist(rng, V, 4.0), q = random_dist(rng, V, 4.0);
      bt.target.insert(bt.target.end(), t.begin(), t.end());
      bt.draft.insert(bt.draft.end(), q.begin(), q.end());
    }
    for (int64_t i = 0; i < N; ++i) {
      // Draft token of node i: drawn from its parent's draft distribution.
      int64_t tok = 0;
      if (i > 0) {
        const float* q = &bt.draft[(b * N + bt.parents[b * N + i]) * V];
        double u = std::uniform_real_distribution<double>(0, 1)(rng), c = 0;
        for (tok = 0; tok < V - 1 && (c += q[tok]) <= u; ++tok) {
        }
      }
      bt.tokens.push_back(tok);
    }
    bt.seed.push_back(static_cast<int64_t>(rng()));
    bt.offset.push_back(static_cast<int64_t>(rng() % 1000));
  }
  return bt;
}

struct Verdicts {
  std::vector<int32_t> accept, num;
  std::vector<int64_t> next;
  std::vector<unsigned long long> errors;
};

template <dev::Walk kWalk>
Verdicts run_emulated(const Batch& bt, double threshold = 0, double alpha = 0) {
  Verdicts v{std::vector<int32_t>(bt.B * bt.N, 99), std::vector<int32_t>(bt.B, 99), std::vector<int64_t>(bt.B, 99),
             std::vector<unsigned long long>(bt.B * 3, 0)};
  const dev::WalkArgs a{bt.parents.data(), bt.tokens.data(), bt.target.data(),
                        kWalk == dev::Walk::kRejectionDraft ? bt.draft.data() : nullptr,
                        bt.seed.data(), bt.offset.data(), bt.N, bt.V, threshold, alpha,
                        v.accept.data(), v.num.data(), v.next.data(), v.errors.data()};
  EmulatedGrid grid(dev::kThreads, dev::walk_smem(bt.N));
  grid.launch(bt.B, 1, 1, [&](const EmuCtx& ctx) { dev::walk_block<EmuCtx, kWalk>(ctx, a); });
  return v;
}

template <dev::Walk kWalk>
Verdicts run_host(const Batch& bt, double threshold = 0, double alpha = 0) {
  Verdicts v{std::vector<int32_t>(bt.B * bt.N, 99), std::vector<int32_t>(bt.B, 99), std::vector<int64_t>(bt.B, 99),
             std::vector<unsigned long long>(bt.B * 3, 0)};
  for (int64_t b = 0; b < bt.B; ++b) {
    const int64_t o = b * bt.N;
    int64_t where = 0, value = 0;
    const int32_t code = accept::check_tree(&bt.parents[o], &bt.tokens[o], bt.N, bt.V, &where, &value);
    if (code != accept::kOk) {
      v.errors[3 * b] = code;
      v.errors[3 * b + 1] = where;
      v.errors[3 * b + 2] = value;
      for (int64_t j = 0; j < bt.N; ++j) v.accept[o + j] = j == 0 ? 0 : -1;
      v.num[b] = 1;
      v.next[b] = 0;
      continue;
    }
    std::vector<int64_t> scratch(bt.N);
    accept::RowError error;
    const accept::RowView view(bt.N, bt.V, &bt.parents[o], &bt.tokens[o], &bt.target[o * bt.V],
                               kWalk == dev::Walk::kRejectionDraft ? &bt.draft[o * bt.V] : nullptr,
                               static_cast<uint64_t>(bt.seed[b]), static_cast<uint64_t>(bt.offset[b]),
                               &v.accept[o], &v.num[b], &v.next[b]);
    accept::SequentialRow row(view, scratch.data(), &error);
    if constexpr (kWalk == dev::Walk::kRejectionDraft) {
      accept::rejection_walk<true>(row);
    } else if constexpr (kWalk == dev::Walk::kRejection) {
      accept::rejection_walk<false>(row);
    } else {
      accept::typical_walk(row, threshold, alpha);
    }
    v.errors[3 * b] = static_cast<unsigned long long>(error.code);
    v.errors[3 * b + 1] = static_cast<unsigned long long>(error.where);
    v.errors[3 * b + 2] = static_cast<unsigned long long>(error.value);
    // The CUDA policy keeps next in [0, V) on a failed row (the CPU op raises instead).
    if (v.next[b] < 0 || v.next[b] >= bt.V) v.next[b] = 0;
  }
  return v;
}

void expect_same(const Verdicts& got, const Verdicts& want) {
  EXPECT_EQ(got.accept, want.accept);
  EXPECT_EQ(got.num, want.num);
  EXPECT_EQ(got.next, want.next);
  EXPECT_EQ(got.errors, want.errors);
}

// V 3000 spans two scan tiles of 512 x 4 entries.
TEST(AcceptanceEmulated, RejectionWithDraftProbsMatchesSequentialPolicy) {
  const Batch bt = make_batch(3, 6, 3000, 1);
  const Verdicts got = run_emulated<dev::Walk::kRejectionDraft>(bt);
  expect_same(got, run_host<dev::Walk::kRejectionDraft>(bt));
  int accepted = 0;
  for (int32_t n : got.num) accepted += n - 1;
  EXPECT_GT(accepted, 0) << "the case should exercise acceptances, not only the bonus draw";
}

TEST(AcceptanceEmulated, DeterministicDraftsAndTypicalMatchSequentialPolicy) {
  const Batch bt = make_batch(2, 7, 2500, 2);
  expect_same(run_emulated<dev::Walk::kRejection>(bt), run_host<dev::Walk::kRejection>(bt));
  expect_same(run_emulated<dev::Walk::kTypical>(bt, 0.09, 0.3), run_host<dev::Walk::kTypical>(bt, 0.09, 0.3));
}

TEST(AcceptanceEmulated, InvalidRowsReportTheSameErrors) {
  Batch bt = make_batch(3, 5, 700, 3);
  bt.target[(0 * 5 + 0) * 700 + 11] = std::nanf("");  // row 0: a NaN target probability
  bt.parents[1 * 5 + 3] = 3;                          // row 1: a broken tree
  bt.draft[(2 * 5 + 0) * 700 + 5] = -0.5f;            // row 2: a negative draft probability
  const Verdicts got = run_emulated<dev::Walk::kRejectionDraft>(bt);
  expect_same(got, run_host<dev::Walk::kRejectionDraft>(bt));
  EXPECT_EQ(got.errors[3 * 1], static_cast<unsigned long long>(accept::kParentRange));
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_GE(got.next[b], 0);
    EXPECT_LT(got.next[b], 700);
  }
}

// ---- build_tree ------------------------------------------------------------------

TEST(BuildTreeEmulated, MasksAndDepthsOfRandomTreesAndABrokenOne) {
  std::mt19937 rng(7);
  const int64_t B = 3, N = 70, W = (N + 31) / 32;  // three mask words
  std::vector<int32_t> parents(B * N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) parents[b * N + i] = i == 0 ? -1 : static_cast<int32_t>(rng() % i);
  parents[2 * N + 40] = 40;  // row 2: a node that is its own parent
  std::vector<int32_t> mask(B * N * W, 0x5a5a5a5a), depth(B * N, -9);
  std::vector<int64_t> errors(B * 3, 0);
  const int threads = static_cast<int>(std::min<int64_t>(128, (W + 31) / 32 * 32));  // as the launcher
  EmulatedGrid grid(threads, dev::kSharedBytes);
  grid.launch(B, 1, 1, [&](const EmuCtx& ctx) {
    dev::build_tree_block(ctx, parents.data(), N, W, mask.data(), depth.data(), errors.data());
  });
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      std::vector<int32_t> want(W, 0);
      int32_t d = -1;
      for (int64_t a = i; a >= 0; a = parents[b * N + a], ++d) want[a / 32] |= int32_t(1u << (a % 32));
      for (int64_t w = 0; w < W; ++w) EXPECT_EQ(mask[(b * N + i) * W + w], want[w]) << b << " " << i;
      EXPECT_EQ(depth[b * N + i], d);
    }
    EXPECT_EQ(errors[3 * b], 0);
  }
  EXPECT_EQ(errors[6], accept::kParentRange);
  EXPECT_EQ(errors[7], 40);
  EXPECT_EQ(errors[8], 40);
  for (int64_t i = 0; i < N * W; ++i) EXPECT_EQ(mask[2 * N * W + i], 0);
  for (int64_t i = 0; i < N; ++i) EXPECT_EQ(depth[2 * N + i], 0);
}

// ---- sampling_probs ------------------------------------------------------------

// float64 reference: softmax(x / T) restricted to the top-k values (ties kept),
// then to the smallest top set by value whose mass reaches top_p (ties kept).
std::vector<double> reference_probs(const std::vector<float>& x, float T, int32_t k, float p) {
  const int64_t V = static_cast<int64_t>(x.size());
  std::vector<double> y(V, 0.0);
  const int64_t hot = std::max_element(x.begin(), x.end()) - x.begin();
  if (T == 0.0f) {
    y[hot] = 1.0;
    return y;
  }
  std::vector<float> sorted(x);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  float lo = sampling::top_k_active(k, V) ? sorted[k - 1] : -INFINITY;
  double total = 0;
  std::vector<double> w(V);
  for (int64_t i = 0; i < V; ++i) total += w[i] = x[i] >= lo ? std::exp(double(x[i]) / T - double(x[hot]) / T) : 0.0;
  if (p < 1.0f) {
    // Walk distinct values downwards until the upper set holds mass >= p.
    double upper = 0;
    for (size_t j = 0; j < sorted.size() && sorted[j] >= lo;) {
      const float val = sorted[j];
      for (; j < sorted.size() && sorted[j] == val; ++j) upper += std::exp(double(val) / T - double(x[hot]) / T);
      if (upper / total >= p) {
        lo = val;
        break;
      }
    }
  }
  double kept = 0;
  for (int64_t i = 0; i < V; ++i) kept += x[i] >= lo ? w[i] : 0.0;
  for (int64_t i = 0; i < V; ++i) y[i] = x[i] >= lo ? w[i] / kept : 0.0;
  return y;
}

// Rows: plain, top-k 20 + top-p 0.9 over tied maxima, greedy, top-k 50 + top-p
// 0.8 at T 1.3, top-p 0.3; the first `B` of them.
template <int kKind>
void check_sampling(uint32_t seed, int64_t B) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t V = 2100;
  std::vector<float> values(B * V);
  for (auto& v : values) v = normal(rng);
  for (int64_t i = 0; i < 40; ++i) values[1 * V + 7 * i] = 3.5f;  // row 1: ties at the top
  std::vector<unsigned char> logits(values.size() * (kKind == kernel::kF32 ? 4 : 2));
  for (size_t i = 0; i < values.size(); ++i) {
    kernel::store<kKind>(logits.data(), static_cast<int64_t>(i), values[i]);
    values[i] = kernel::load<kKind>(logits.data(), static_cast<int64_t>(i));  // the values the kernel sees
  }
  const std::vector<float> temperature{1.0f, 0.7f, 0.0f, 1.3f, 1.0f};
  const std::vector<int32_t> top_k{0, 20, 5, 50, 0};
  const std::vector<float> top_p{1.0f, 0.9f, 0.5f, 0.8f, 0.3f};
  std::vector<float> out(B * V, std::nanf(""));
  std::vector<long long> errors(B * 2, 0);
  const dev::SamplingArgs a{logits.data(), temperature.data(), top_k.data(), top_p.data(), 1, V, out.data(),
                            errors.data()};
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(B, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kKind>(ctx, a); });
  for (long long e : errors) EXPECT_EQ(e, 0);
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<float> row(values.begin() + b * V, values.begin() + (b + 1) * V);
    const std::vector<double> want = reference_probs(row, temperature[b], top_k[b], top_p[b]);
    double err = 0;
    for (int64_t i = 0; i < V; ++i) err = std::max(err, std::abs(out[b * V + i] - want[i]) / (want[i] + 1e-30));
    EXPECT_LT(err, 1e-5) << "row " << b;
    for (int64_t i = 0; i < V; ++i) EXPECT_EQ(out[b * V + i] == 0.0f, want[i] == 0.0) << "row " << b << " x " << i;
  }
}

TEST(SamplingProbsEmulated, Fp32) { check_sampling<kernel::kF32>(4, 5); }
TEST(SamplingProbsEmulated, Fp16AndBf16) {
  check_sampling<kernel::kF16>(5, 2);
  check_sampling<kernel::kBF16>(6, 2);
}

TEST(SamplingProbsEmulated, BadRowsAreReportedAndGetOneHots) {
  const int64_t B = 3, V = 600;
  std::vector<float> logits(B * V, 0.25f);
  logits[0 * V + 9] = std::nanf("");                       // row 0: NaN logit
  for (int64_t i = 0; i < V; ++i) logits[2 * V + i] = -INFINITY;  // row 2: all masked
  const std::vector<float> temperature{1.0f, -1.0f, 1.0f};  // row 1: bad temperature
  const std::vector<int32_t> top_k{0, 0, 0};
  const std::vector<float> top_p{1.0f, 1.0f, 1.0f};
  std::vector<float> out(B * V, std::nanf(""));
  std::vector<long long> errors(B * 2, 0);
  const dev::SamplingArgs a{logits.data(), temperature.data(), top_k.data(), top_p.data(), 1, V, out.data(),
                            errors.data()};
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(B, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kernel::kF32>(ctx, a); });
  EXPECT_EQ(errors[0], sampling::kLogitInvalid);
  EXPECT_EQ(errors[2], sampling::kTemperature);
  double bad_t;
  std::memcpy(&bad_t, &errors[3], sizeof(bad_t));
  EXPECT_EQ(bad_t, -1.0);
  EXPECT_EQ(errors[4], sampling::kAllMasked);
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t i = 0; i < V; ++i) s += out[b * V + i];
    EXPECT_EQ(s, 1.0) << "row " << b << " gets a one-hot";
  }
}

}  // namespace
