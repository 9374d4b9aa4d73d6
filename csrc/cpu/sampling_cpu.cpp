// sampling_probs, CPU kernel: one row at a time per task, float64 inside.
// Thresholds by selection instead of sorting: std::nth_element for top-k and
// a three-way quickselect on probability mass for top-p (expected O(V)).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/checks.h"
#include "ops/sampling.h"
#include "specdec/sampling_rules.h"

namespace specdec {
namespace {

constexpr const char* kOp = "specdec::sampling_probs";

// The largest t among `p` such that the mass of {p >= t} is >= need.
double mass_threshold(std::vector<double>& p, double need) {
  size_t lo = 0, hi = p.size();
  while (true) {
    const double pivot = p[lo + (hi - lo) / 2];
    // [lo, gt) > pivot, [gt, lt) == pivot, [lt, hi) < pivot
    auto mid1 = std::partition(p.begin() + lo, p.begin() + hi, [&](double v) { return v > pivot; });
    auto mid2 = std::partition(mid1, p.begin() + hi, [&](double v) { return v == pivot; });
    const size_t gt = mid1 - p.begin(), lt = mid2 - p.begin();
    double above = 0.0;
    for (size_t i = lo; i < gt; ++i) above += p[i];
    if (above >= need && gt > lo) {
      hi = gt;
      continue;
    }
    double equal = 0.0;
    for (size_t i = gt; i < lt; ++i) equal += p[i];
    if (above + equal >= need || lt == hi) return pivot;
    need -= above + equal;
    lo = lt;
  }
}

// One row: logits x[V] -> out[V].  Returns an error code (0: valid).
int64_t row_probs(const float* x, int64_t vocab, float temperature, int32_t top_k, float top_p, float* out,
                  std::vector<float>& fbuf, std::vector<double>& dbuf) {
  int64_t first_max = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (std::isnan(x[i]) || x[i] == std::numeric_limits<float>::infinity()) return sampling::kLogitInvalid;
    if (x[i] > x[first_max]) first_max = i;
  }
  if (x[first_max] == -std::numeric_limits<float>::infinity()) return sampling::kAllMasked;
  if (temperature == 0.0f) {
    std::fill(out, out + vocab, 0.0f);
    out[first_max] = 1.0f;
    return kOk;
  }
  float kth = -std::numeric_limits<float>::infinity();
  if (sampling::top_k_active(top_k, vocab)) {
    fbuf.assign(x, x + vocab);
    std::nth_element(fbuf.begin(), fbuf.begin() + (top_k - 1), fbuf.end(), std::greater<float>());
    kth = fbuf[top_k - 1];
  }
  const double t = temperature;
  const double zmax = static_cast<double>(x[first_max]) / t;
  dbuf.resize(vocab);
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double e = x[i] >= kth ? std::exp(static_cast<double>(x[i]) / t - zmax) : 0.0;
    dbuf[i] = e;
    total += e;
  }
  for (int64_t i = 0; i < vocab; ++i) dbuf[i] /= total;
  double keep_from = 0.0, kept = 1.0;
  if (top_p < 1.0f) {
    std::vector<double> sel;
    sel.reserve(vocab);
    for (int64_t i = 0; i < vocab; ++i) {
      if (dbuf[i] > 0.0) sel.push_back(dbuf[i]);
    }
    keep_from = mass_threshold(sel, static_cast<double>(top_p));
    kept = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (dbuf[i] >= keep_from) kept += dbuf[i];
    }
  }
  for (int64_t i = 0; i < vocab; ++i) {
    out[i] = dbuf[i] >= keep_from && dbuf[i] > 0.0 ? static_cast<float>(dbuf[i] / kept) : 0.0f;
  }
  return kOk;
}

at::Tensor sampling_probs_cpu(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                              const at::Tensor& top_p) {
  check_sampling_args(kOp, logits, temperature, top_k, top_p);
  const int64_t batch = logits.size(0), vocab = logits.size(-1);
  const int64_t rows = logits.dim() == 3 ? logits.size(1) : 1;
  const float* temp = temperature.data_ptr<float>();
  const int32_t* k = top_k.data_ptr<int32_t>();
  const float* tp = top_p.data_ptr<float>();
  const auto raise = [](const ErrorRecord& e) { raise_sampling_error(kOp, e); };
  std::vector<ErrorRecord> params(batch);
  for (int64_t b = 0; b < batch; ++b) params[b] = sampling::check_params(temp[b], k[b], tp[b], b);
  raise_first_error(params, raise);
  const at::Tensor x = logits.scalar_type() == at::kFloat ? logits : logits.to(at::kFloat);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<ErrorRecord> errors(batch * rows, no_error(0));
  at::parallel_for(0, batch * rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> fbuf;
    std::vector<double> dbuf;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows;
      const int64_t code = row_probs(xp + r * vocab, vocab, temp[b], k[b], tp[b], op + r * vocab, fbuf, dbuf);
      if (code != kOk) errors[r] = make_error(code, b, r % rows, 0);
    }
  });
  raise_first_error(errors, raise);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("sampling_probs", &sampling_probs_cpu); }

}  // namespace specdec
