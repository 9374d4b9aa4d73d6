// The CUDA sampling_probs kernel body (specdec/sampling_kernels.h), run on the
// host through the CUDA emulator (cuda_emulator.h) against a sort-based float64
// reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_emulator.h"
#include "specdec/sampling_kernels.h"

namespace {

namespace dev = specdec::sampling::device;
namespace kernel = specdec::kernel;
namespace sampling = specdec::sampling;
using specdec::ErrorRecord;
using specdec::testing::EmuCtx;
using specdec::testing::EmulatedGrid;

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
  std::vector<ErrorRecord> errors(B, ErrorRecord{});
  const dev::SamplingArgs a{logits.data(), temperature.data(), top_k.data(), top_p.data(), 1, V,
                            out.data(),    errors.data()};
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(B, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kKind>(ctx, a); });
  for (const ErrorRecord& e : errors) EXPECT_EQ(e.code, 0);
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
  logits[0 * V + 9] = std::nanf("");                              // row 0: NaN logit
  for (int64_t i = 0; i < V; ++i) logits[2 * V + i] = -INFINITY;  // row 2: all masked
  const std::vector<float> temperature{1.0f, -1.0f, 1.0f};        // row 1: bad temperature
  const std::vector<int32_t> top_k{0, 0, 0};
  const std::vector<float> top_p{1.0f, 1.0f, 1.0f};
  std::vector<float> out(B * V, std::nanf(""));
  std::vector<ErrorRecord> errors(B, ErrorRecord{});
  const dev::SamplingArgs a{logits.data(), temperature.data(), top_k.data(), top_p.data(), 1, V,
                            out.data(),    errors.data()};
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(B, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kernel::kF32>(ctx, a); });
  EXPECT_EQ(errors[0].code, sampling::kLogitInvalid);
  EXPECT_EQ(errors[1].code, sampling::kTemperature);
  EXPECT_EQ(errors[1].row, 1);
  EXPECT_EQ(specdec::bits_double(errors[1].value), -1.0);
  EXPECT_EQ(errors[2].code, sampling::kAllMasked);
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t i = 0; i < V; ++i) s += out[b * V + i];
    EXPECT_EQ(s, 1.0) << "row " << b << " gets a one-hot";
  }
}

// float64 reference with min-p: z = x / T; top-k and min-p (exp(z - z_max) >=
// min_p) keep upper sets of z; softmax over both; top-p on that; renormalise.
std::vector<double> reference_probs_min_p(const std::vector<float>& x, float T, int32_t k, float p, float mp) {
  const int64_t V = static_cast<int64_t>(x.size());
  const int64_t hot = std::max_element(x.begin(), x.end()) - x.begin();
  if (T == 0.0f || mp == 0.0f) return reference_probs(x, T, k, p);
  const double zmax = double(x[hot]) / T;
  std::vector<float> kept;
  for (float v : x) {
    if (std::exp(double(v) / T - zmax) >= double(mp)) kept.push_back(v);
  }
  // min-p keeps an upper set: the same as a top-k at its size (ties included), then k.
  std::vector<float> masked(x);
  const float lo = *std::min_element(kept.begin(), kept.end());
  for (auto& v : masked) v = v >= lo ? v : -INFINITY;
  return reference_probs(masked, T, k, p);
}

struct Rows {
  int64_t B, V;
  std::vector<float> logits, temperature, top_p, min_p;
  std::vector<int32_t> top_k;
};

Rows min_p_rows(uint32_t seed, int64_t V) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Rows r{6,
         V,
         {},
         {1.0f, 0.7f, 1.3f, 0.0f, 1.0f, 2.0f},
         {1.0f, 0.9f, 0.8f, 1.0f, 1.0f, 0.5f},
         {0.05f, 0.01f, 0.3f, 0.5f, 1.0f, 1e-4f},
         {0, 20, 50, 0, 0, 7}};
  r.logits.resize(r.B * V);
  for (auto& v : r.logits) v = normal(rng);
  for (int64_t i = 0; i < 30; ++i)
    r.logits[4 * V + 11 * i] = 20.0f;  // row 4: tied maxima (above every N(0, 2) draw), min_p = 1 keeps them
  return r;
}

void expect_rows_close(const Rows& r, const std::vector<float>& out, const std::vector<int64_t>& row_of) {
  for (int64_t t = 0; t < static_cast<int64_t>(row_of.size()); ++t) {
    const int64_t b = row_of[t];
    const std::vector<float> x(r.logits.begin() + t * r.V, r.logits.begin() + (t + 1) * r.V);
    const std::vector<double> want = reference_probs_min_p(x, r.temperature[b], r.top_k[b], r.top_p[b], r.min_p[b]);
    double err = 0;
    for (int64_t i = 0; i < r.V; ++i) err = std::max(err, std::abs(out[t * r.V + i] - want[i]) / (want[i] + 1e-30));
    EXPECT_LT(err, 1e-5) << "row " << t;
    for (int64_t i = 0; i < r.V; ++i) {
      EXPECT_EQ(out[t * r.V + i] == 0.0f, want[i] == 0.0) << "row " << t << " x " << i;
    }
  }
}

TEST(SamplingProbsEmulated, MinPWithTopKAndTopP) {
  const Rows r = min_p_rows(7, 1500);
  std::vector<float> out(r.B * r.V, std::nanf(""));
  std::vector<ErrorRecord> errors(r.B, ErrorRecord{});
  dev::SamplingArgs a{r.logits.data(), r.temperature.data(), r.top_k.data(), r.top_p.data(), 1, r.V,
                      out.data(),      errors.data()};
  a.min_p = r.min_p.data();
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(r.B, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kernel::kF32>(ctx, a); });
  for (const ErrorRecord& e : errors) EXPECT_EQ(e.code, 0);
  std::vector<int64_t> row_of(r.B);
  for (int64_t b = 0; b < r.B; ++b) row_of[b] = b;
  expect_rows_close(r, out, row_of);
  int kept = 0;
  for (int64_t i = 0; i < r.V; ++i) kept += out[4 * r.V + i] > 0.0f;
  EXPECT_EQ(kept, 30) << "min_p = 1 keeps exactly the tied maxima";
}

// Ragged: entry t of the [T, V] logits takes row ragged_row_of(t)'s parameters.
TEST(SamplingProbsEmulated, RaggedRowsTakeTheirRowsParameters) {
  const int64_t V = 700;
  Rows params = min_p_rows(8, V);
  const std::vector<int32_t> cu{0, 1, 3, 4, 6, 7, 9};  // B = 6 rows of 1, 2, 1, 2, 1, 2 entries
  const int64_t T = cu.back();
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  Rows r = params;
  r.logits.resize(T * V);
  for (auto& v : r.logits) v = normal(rng);
  std::vector<float> out(T * V, std::nanf(""));
  std::vector<ErrorRecord> records(1 + r.B + T, ErrorRecord{});
  dev::SamplingArgs a{r.logits.data(), r.temperature.data(),    r.top_k.data(), r.top_p.data(), 1, V,
                      out.data(),      records.data() + 1 + r.B};
  a.min_p = r.min_p.data();
  a.cu_nodes = cu.data();
  a.batch = r.B;
  a.total = T;
  a.call_errors = records.data();
  EmulatedGrid grid(dev::kThreads, dev::kSharedBytes);
  grid.launch(T, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kernel::kF32>(ctx, a); });
  for (const ErrorRecord& e : records) EXPECT_EQ(e.code, 0);
  std::vector<int64_t> row_of(T);
  for (int64_t b = 0; b < r.B; ++b) {
    for (int32_t t = cu[b]; t < cu[b + 1]; ++t) row_of[t] = b;
  }
  expect_rows_close(r, out, row_of);
  // A bad cu_nodes is reported by block 0, a bad parameter once, by its row's first entry.
  std::vector<int32_t> bad_cu(cu);
  bad_cu[3] = 2;
  r.min_p[1] = 2.0f;
  std::fill(records.begin(), records.end(), ErrorRecord{});
  a.cu_nodes = bad_cu.data();
  a.min_p = r.min_p.data();
  grid.launch(T, 1, 1, [&](const EmuCtx& ctx) { dev::sampling_probs_block<EmuCtx, kernel::kF32>(ctx, a); });
  EXPECT_EQ(records[0].code, specdec::tree::kCuEmptyRow);
  EXPECT_EQ(records[0].where, 3);
  EXPECT_EQ(records[1 + 1].code, sampling::kMinP);
  for (int64_t t = 0; t < T; ++t) {
    double s = 0;
    for (int64_t i = 0; i < V; ++i) s += out[t * V + i];
    EXPECT_NEAR(s, 1.0, 1e-5) << "every entry still gets a distribution";
  }
}

}  // namespace
