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

}  // namespace
