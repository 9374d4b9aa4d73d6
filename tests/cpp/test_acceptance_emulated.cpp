// The CUDA acceptance kernel bodies (specdec/acceptance_kernels.h), run on the
// host through the CUDA emulator
// (cuda_emulator.h).  The walks are shared code, so what is under test is the
// block policy: its float64 block sum, tiled block scan + min search, the
// leader-write scratch and the first-reporter error; it must give exactly the
// verdicts of the CPU kernel's sequential policy (accept::SequentialRow) on the
// same rows and Philox streams.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cuda_emulator.h"
#include "specdec/acceptance_kernels.h"

namespace {

namespace accept = specdec::accept;
namespace dev = specdec::accept::device;
using specdec::ErrorRecord;
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

// How make_batch shapes a batch: chains or random trees; siblings drawn iid or
// without replacement; some draft rows with a support of two tokens (so that
// siblings drawn without replacement exhaust it and fillers follow), some
// draft rows equal to the target (no residual mass) and, with `similar`, the
// other draft rows close to the target (so that drafts get accepted).
struct Shape {
  bool chain = false;
  bool without_replacement = false;
  bool sparse = false;
  bool similar = false;  // draft rows 0.8 target + 0.2 an independent row (the others untouched)
};

Batch make_batch(int64_t B, int64_t N, int64_t V, uint32_t seed, Shape shape = {}) {
  std::mt19937 rng(seed);
  Batch bt;
  bt.B = B;
  bt.N = N;
  bt.V = V;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      bt.parents.push_back(i == 0 ? -1 : static_cast<int32_t>(shape.chain ? i - 1 : rng() % i));
      // Concentrated distributions so that drafts are often accepted.
      const auto t = random_dist(rng, V, 4.0);
      auto q = random_dist(rng, V, 4.0);
      if (shape.sparse && rng() % 3 == 0) {  // two tokens of mass, the rest exactly 0
        std::fill(q.begin(), q.end(), 0.0f);
        q[rng() % V] += 0.5f;
        q[rng() % V] += 0.5f;
      } else if (shape.sparse && rng() % 4 == 0) {
        q = t;
      } else if (shape.similar) {  // a draft close to the target: drafts get accepted
        for (int64_t v = 0; v < V; ++v) q[v] = 0.8f * t[v] + 0.2f * q[v];
      }
      bt.target.insert(bt.target.end(), t.begin(), t.end());
      bt.draft.insert(bt.draft.end(), q.begin(), q.end());
    }
    for (int64_t i = 0; i < N; ++i) {
      // Draft token of node i: drawn from its parent's draft distribution (without the
      // earlier siblings' tokens when drawing without replacement; the smallest unused
      // token once that has no mass left).
      int64_t tok = 0;
      if (i > 0) {
        const int64_t parent = bt.parents[b * N + i];
        std::vector<double> w(&bt.draft[(b * N + parent) * V], &bt.draft[(b * N + parent) * V] + V);
        std::vector<bool> used(V, false);
        if (shape.without_replacement) {
          for (int64_t j = 1; j < i; ++j) {
            if (bt.parents[b * N + j] != parent) continue;
            used[bt.tokens[b * N + j]] = true;
            w[bt.tokens[b * N + j]] = 0.0;
          }
        }
        double total = 0;
        for (double x : w) total += x;
        if (total > 0) {
          double u = std::uniform_real_distribution<double>(0, 1)(rng) * total, c = 0;
          for (tok = 0; tok < V - 1 && (c += w[tok]) <= u; ++tok) {
          }
        } else {
          while (tok < V - 1 && used[tok]) ++tok;
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
  std::vector<ErrorRecord> errors;
};

template <dev::Walk kWalk>
constexpr bool kUsesDraft = kWalk != dev::Walk::kRejection && kWalk != dev::Walk::kTypical;

template <dev::Walk kWalk>
Verdicts run_emulated(const Batch& bt, double threshold = 0, double alpha = 0, bool chain_only = false) {
  Verdicts v{std::vector<int32_t>(bt.B * bt.N, 99), std::vector<int32_t>(bt.B, 99), std::vector<int64_t>(bt.B, 99),
             std::vector<ErrorRecord>(bt.B, ErrorRecord{})};
  const dev::WalkArgs a{bt.parents.data(),
                        bt.tokens.data(),
                        bt.target.data(),
                        kUsesDraft<kWalk> ? bt.draft.data() : nullptr,
                        bt.seed.data(),
                        bt.offset.data(),
                        bt.N,
                        bt.V,
                        threshold,
                        alpha,
                        v.accept.data(),
                        v.num.data(),
                        v.next.data(),
                        v.errors.data(),
                        chain_only};
  EmulatedGrid grid(dev::kThreads, dev::walk_smem(bt.N, accept::scratch_words(kWalk, bt.N)));
  grid.launch(bt.B, 1, 1, [&](const EmuCtx& ctx) { dev::walk_block<EmuCtx, kWalk>(ctx, a); });
  return v;
}

template <dev::Walk kWalk>
Verdicts run_host(const Batch& bt, double threshold = 0, double alpha = 0, bool chain_only = false) {
  Verdicts v{std::vector<int32_t>(bt.B * bt.N, 99), std::vector<int32_t>(bt.B, 99), std::vector<int64_t>(bt.B, 99),
             std::vector<ErrorRecord>(bt.B, ErrorRecord{})};
  for (int64_t b = 0; b < bt.B; ++b) {
    const int64_t o = b * bt.N;
    v.errors[b] = accept::check_tree(&bt.parents[o], &bt.tokens[o], bt.N, bt.V, b);
    if (v.errors[b].code == specdec::kOk && chain_only) v.errors[b] = accept::check_chain(&bt.parents[o], bt.N, b);
    if (v.errors[b].code != specdec::kOk) {
      for (int64_t j = 0; j < bt.N; ++j) v.accept[o + j] = j == 0 ? 0 : -1;
      v.num[b] = 1;
      v.next[b] = 0;
      continue;
    }
    std::vector<int64_t> scratch(accept::scratch_words(kWalk, bt.N));
    const accept::RowView view(bt.N, bt.V, &bt.parents[o], &bt.tokens[o], &bt.target[o * bt.V],
                               kUsesDraft<kWalk> ? &bt.draft[o * bt.V] : nullptr, static_cast<uint64_t>(bt.seed[b]),
                               static_cast<uint64_t>(bt.offset[b]), &v.accept[o], &v.num[b], &v.next[b]);
    accept::SequentialRow row(view, scratch.data(), &v.errors[b]);
    accept::run_walk<kWalk>(row, threshold, alpha);
    // The CUDA policy keeps next in [0, V) on a failed row (the CPU op raises instead).
    if (v.next[b] < 0 || v.next[b] >= bt.V) v.next[b] = 0;
  }
  return v;
}

void expect_same(const Verdicts& got, const Verdicts& want) {
  EXPECT_EQ(got.accept, want.accept);
  EXPECT_EQ(got.num, want.num);
  EXPECT_EQ(got.next, want.next);
  ASSERT_EQ(got.errors.size(), want.errors.size());
  for (size_t b = 0; b < got.errors.size(); ++b) EXPECT_TRUE(got.errors[b] == want.errors[b]) << "row " << b;
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
  EXPECT_EQ(got.errors[1].code, specdec::tree::kParentRange);
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_GE(got.next[b], 0);
    EXPECT_LT(got.next[b], 700);
  }
}

// Ragged batches: rows of different sizes end to end.  Each row must get exactly
// the verdict the sequential policy gives that row alone (a batch of one).
struct RaggedBatch {
  int64_t B = 0, T = 0, V = 0;
  std::vector<int32_t> parents, cu{0};
  std::vector<int64_t> tokens, seed, offset;
  std::vector<float> target, draft;
  std::vector<Batch> rows;  // the same rows, each as a batch of one
};

RaggedBatch make_ragged(const std::vector<int64_t>& sizes, int64_t V, uint32_t seed) {
  RaggedBatch r;
  r.V = V;
  for (size_t b = 0; b < sizes.size(); ++b) {
    const Batch one = make_batch(1, sizes[b], V, seed + static_cast<uint32_t>(b));
    r.parents.insert(r.parents.end(), one.parents.begin(), one.parents.end());
    r.tokens.insert(r.tokens.end(), one.tokens.begin(), one.tokens.end());
    r.target.insert(r.target.end(), one.target.begin(), one.target.end());
    r.draft.insert(r.draft.end(), one.draft.begin(), one.draft.end());
    r.seed.push_back(one.seed[0]);
    r.offset.push_back(one.offset[0]);
    r.cu.push_back(r.cu.back() + static_cast<int32_t>(sizes[b]));
    r.rows.push_back(one);
  }
  r.B = static_cast<int64_t>(sizes.size());
  r.T = r.cu.back();
  return r;
}

struct RaggedVerdicts {
  std::vector<int32_t> accept, num;
  std::vector<int64_t> next;
  std::vector<ErrorRecord> records;  // [2B]: cu_nodes shares, then rows
};

template <dev::Walk kWalk>
RaggedVerdicts run_ragged(const RaggedBatch& r, double threshold = 0, double alpha = 0) {
  RaggedVerdicts v{std::vector<int32_t>(r.T, -1), std::vector<int32_t>(r.B, 99), std::vector<int64_t>(r.B, 99),
                   std::vector<ErrorRecord>(2 * r.B, ErrorRecord{})};
  std::vector<int64_t> scratch(r.T, 0);
  const dev::RaggedWalkArgs a{r.parents.data(),
                              r.tokens.data(),
                              r.cu.data(),
                              r.target.data(),
                              kWalk == dev::Walk::kRejectionDraft ? r.draft.data() : nullptr,
                              r.seed.data(),
                              r.offset.data(),
                              r.B,
                              r.T,
                              r.V,
                              threshold,
                              alpha,
                              v.accept.data(),
                              v.num.data(),
                              v.next.data(),
                              kWalk == dev::Walk::kRejectionDraft ? nullptr : scratch.data(),
                              v.records.data(),
                              v.records.data() + r.B};
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(r.B, 1, 1, [&](const EmuCtx& ctx) { dev::walk_block_ragged<EmuCtx, kWalk>(ctx, a); });
  return v;
}

template <dev::Walk kWalk>
void expect_rows_match_host(const RaggedBatch& r, const RaggedVerdicts& got, double threshold = 0, double alpha = 0) {
  for (int64_t b = 0; b < r.B; ++b) {
    const Verdicts want = run_host<kWalk>(r.rows[b], threshold, alpha);
    const std::vector<int32_t> slice(got.accept.begin() + r.cu[b], got.accept.begin() + r.cu[b + 1]);
    EXPECT_EQ(slice, want.accept) << "row " << b;
    EXPECT_EQ(got.num[b], want.num[0]) << "row " << b;
    EXPECT_EQ(got.next[b], want.next[0]) << "row " << b;
    const ErrorRecord& e = got.records[r.B + b];
    EXPECT_EQ(e.code, want.errors[0].code) << "row " << b;
    EXPECT_EQ(e.where, want.errors[0].where) << "row " << b;
    EXPECT_EQ(e.value, want.errors[0].value) << "row " << b;
    EXPECT_EQ(got.records[b].code, specdec::kOk) << "row " << b;
  }
}

TEST(AcceptanceEmulated, RaggedWalksEqualEachRowAlone) {
  const RaggedBatch r = make_ragged({1, 6, 2, 9, 1, 4}, 2500, 21);
  expect_rows_match_host<dev::Walk::kRejectionDraft>(r, run_ragged<dev::Walk::kRejectionDraft>(r));
  expect_rows_match_host<dev::Walk::kRejection>(r, run_ragged<dev::Walk::kRejection>(r));
  expect_rows_match_host<dev::Walk::kTypical>(r, run_ragged<dev::Walk::kTypical>(r, 0.09, 0.3), 0.09, 0.3);
  // A small vocabulary, where independent random target and draft rows overlap, so
  // that drafts are accepted too (at V = 2500 they almost never are).
  const RaggedBatch s = make_ragged({1, 6, 2, 9, 1, 4, 7, 5}, 12, 22);
  expect_rows_match_host<dev::Walk::kRejectionDraft>(s, run_ragged<dev::Walk::kRejectionDraft>(s));
  expect_rows_match_host<dev::Walk::kRejection>(s, run_ragged<dev::Walk::kRejection>(s));
  int accepted = 0;
  for (int32_t n : run_ragged<dev::Walk::kRejectionDraft>(s).num) accepted += n - 1;
  EXPECT_GT(accepted, 0) << "the case should exercise acceptances";
}

TEST(AcceptanceEmulated, RaggedBadOffsetsAndRowsAreReportedInRange) {
  RaggedBatch r = make_ragged({3, 2, 4}, 600, 31);
  r.parents[r.cu[2] + 2] = 2;  // row 2, node 2: its own parent
  RaggedVerdicts got = run_ragged<dev::Walk::kRejectionDraft>(r);
  EXPECT_EQ(got.records[r.B + 2].code, specdec::tree::kParentRange);
  EXPECT_EQ(got.records[r.B + 2].where, 2);
  EXPECT_EQ(got.accept[r.cu[2]], 0);
  EXPECT_EQ(got.num[2], 1);
  // cu_nodes beyond T: rows 0 and 1 are unsafe and skipped, row 2 reports the end.
  r.cu = {0, 10, 11, 12};
  got = run_ragged<dev::Walk::kRejectionDraft>(r);
  EXPECT_EQ(got.records[0].code, specdec::kOk);
  EXPECT_EQ(got.records[1].code, specdec::kOk);
  EXPECT_EQ(got.records[2].code, specdec::tree::kCuLast);
  EXPECT_TRUE(got.records[2] == specdec::tree::check_cu_nodes(r.cu.data(), r.B, r.T));
  for (int32_t a : got.accept) EXPECT_EQ(a, -1) << "no row wrote outside its (invalid) slice";
  for (int64_t b = 0; b < r.B; ++b) {
    EXPECT_EQ(got.num[b], 1);
    EXPECT_EQ(got.next[b], 0);
  }
  // A decreasing entry: the lowest failing row's share equals the sequential check.
  r.cu = {0, 5, 4, 9};
  got = run_ragged<dev::Walk::kRejectionDraft>(r);
  EXPECT_TRUE(got.records[1] == specdec::tree::check_cu_nodes(r.cu.data(), r.B, r.T));
  EXPECT_EQ(got.records[0].code, specdec::kOk);
}

TEST(AcceptanceEmulated, RaggedGreedyEqualsEachRowAlone) {
  RaggedBatch r = make_ragged({1, 5, 3, 7}, 50, 41);
  std::vector<int64_t> argmax(r.T);
  for (int64_t t = 0; t < r.T; ++t) argmax[t] = t + 1 < r.T ? r.tokens[t + 1] : 3;  // follows chains
  std::vector<int32_t> accept(r.T, 99), num(r.B, 99);
  std::vector<int64_t> next(r.B, 99);
  std::vector<ErrorRecord> records(2 * r.B, ErrorRecord{});
  for (int64_t b = 0; b < r.B; ++b) {
    dev::greedy_row_ragged(r.parents.data(), r.tokens.data(), argmax.data(), r.cu.data(), r.B, r.T, b, accept.data(),
                           num.data(), next.data(), records.data(), records.data() + r.B);
  }
  for (int64_t b = 0; b < r.B; ++b) {
    const int64_t lo = r.cu[b], n = r.cu[b + 1] - lo;
    std::vector<int32_t> want(n);
    int64_t want_next = 0;
    const int64_t len = accept::greedy_walk(&r.parents[lo], &r.tokens[lo], &argmax[lo], n, want.data(), &want_next);
    EXPECT_EQ(std::vector<int32_t>(accept.begin() + lo, accept.begin() + lo + n), want) << "row " << b;
    EXPECT_EQ(num[b], len);
    EXPECT_EQ(next[b], want_next);
    EXPECT_EQ(records[r.B + b].code, specdec::kOk);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// The methods of rejection_sample beyond tokenwise-iid (acceptance_rules.h:
// rsd_walk, block_walk, traversal_walk): the block policy gives the sequential
// policy's verdicts.  Small shapes (the emulator runs a thread per CUDA thread).
// ---------------------------------------------------------------------------

int accepted_drafts(const Verdicts& v) {
  int n = 0;
  for (int32_t x : v.num) n += x - 1;
  return n;
}

TEST(AcceptanceEmulated, RsdWithoutReplacementMatchesSequentialPolicy) {
  const Batch bt = make_batch(3, 7, 2500, 4, Shape{false, true, true, true});
  const Verdicts got = run_emulated<dev::Walk::kRejectionDraftWor>(bt);
  expect_same(got, run_host<dev::Walk::kRejectionDraftWor>(bt));
  EXPECT_GT(accepted_drafts(got), 0);
}

TEST(AcceptanceEmulated, BlockMatchesSequentialPolicyAndTraversalOnChains) {
  const Batch bt = make_batch(3, 6, 2500, 5, Shape{true, false, true, true});
  const Verdicts got = run_emulated<dev::Walk::kBlock>(bt, 0, 0, true);
  expect_same(got, run_host<dev::Walk::kBlock>(bt, 0, 0, true));
  // On a chain, traversal is block verification step for step (either sibling rule).
  expect_same(run_host<dev::Walk::kTraversal>(bt), got);
  expect_same(run_host<dev::Walk::kTraversalWor>(bt), got);
  EXPECT_GT(accepted_drafts(got), 0);
}

TEST(AcceptanceEmulated, TraversalMatchesSequentialPolicy) {
  const Batch iid = make_batch(3, 8, 2500, 6, Shape{false, false, true, true});
  const Verdicts got = run_emulated<dev::Walk::kTraversal>(iid);
  expect_same(got, run_host<dev::Walk::kTraversal>(iid));
  EXPECT_GT(accepted_drafts(got), 0);
  const Batch wor = make_batch(3, 8, 700, 7, Shape{false, true, true, true});
  const Verdicts got_wor = run_emulated<dev::Walk::kTraversalWor>(wor);
  expect_same(got_wor, run_host<dev::Walk::kTraversalWor>(wor));
  EXPECT_GT(accepted_drafts(got_wor), 0);
}

TEST(AcceptanceEmulated, BlockOnATreeAndBadProbabilitiesReportTheSameErrors) {
  Batch bt = make_batch(3, 5, 600, 8, Shape{true, false, false});
  bt.parents[0 * 5 + 3] = 1;                         // row 0: not a chain
  bt.target[(1 * 5 + 0) * 600 + 9] = std::nanf("");  // row 1: a NaN target probability
  bt.draft[(2 * 5 + 0) * 600 + 4] = -1.0f;           // row 2: a negative draft probability
  const Verdicts got = run_emulated<dev::Walk::kBlock>(bt, 0, 0, true);
  expect_same(got, run_host<dev::Walk::kBlock>(bt, 0, 0, true));
  EXPECT_EQ(got.errors[0].code, accept::kNotChain);
  EXPECT_EQ(got.errors[0].where, 3);
  EXPECT_EQ(got.errors[0].value, 1);
  EXPECT_EQ(got.errors[1].code, accept::kProbInvalid);
  EXPECT_EQ(got.errors[2].code, accept::kDraftProbInvalid);
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_GE(got.next[b], 0);
    EXPECT_LT(got.next[b], 600);
  }
  const Verdicts trav = run_emulated<dev::Walk::kTraversalWor>(bt);
  expect_same(trav, run_host<dev::Walk::kTraversalWor>(bt));
  EXPECT_EQ(trav.errors[0].code, specdec::kOk);  // traversal takes any tree
}
