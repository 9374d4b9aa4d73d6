// sampling_probs and sampling_probs_ragged, CPU kernel: one row of logits per
// step of a task, float64 semantics (docs/ops.md, family `sampling`).
//
// Per row, close to one pass over memory:
//   scan      the maximum, its first index and validity (8 floats at a time);
//   top-k     the k-th largest logit by a streaming selection: logits above the
//             running k-th largest go to a small buffer, which is cut back to
//             its k largest (nth_element) whenever it fills up, so the buffer
//             sees about k log(V / k) values instead of V;
//   min-p     a threshold on the logits' keys found by bisection on the rule's
//             float64 expression (sampling::min_p_key), no pass at all;
//   weights   w = exp(double(x) / T - z_max) for the kept logits, float64, four
//             lanes at a time (exp4 below, within 2 ulp of exp), their float64
//             sum, and w rounded to float32 into the output; a chunk with
//             nothing kept (top-k, min-p) is written as zeros without an exp;
//   top-p     the same pass also builds a histogram of the mass over
//             z - z_max (65 buckets of width 1/4); only the bucket(s) where the
//             cumulative mass crosses top-p (within rounding margins) are then
//             gathered (their weights recomputed, bit-identical), and the
//             threshold found there by a three-way quickselect on the float64
//             probabilities, so ties and the float64 decision are exactly the
//             rule's (the whole row is gathered if the margins fall short);
//   scale     one multiply per kept entry (and zero past the top-p threshold).
// The vector code uses GNU vector extensions and is compiled twice, for the
// baseline x86-64 (or any) target and with AVX2 + FMA, picked at run time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/sampling.h"
#include "ops/tree.h"
#include "specdec/sampling_rules.h"
#include "specdec/tree_rules.h"

#if !defined(__GNUC__)
#error "csrc/cpu/sampling_cpu.cpp needs GNU vector extensions (GCC or Clang)"
#endif

#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in always-inline helpers only

namespace specdec {
namespace {

constexpr const char* kOp = "specdec::sampling_probs";
constexpr const char* kRaggedOp = "specdec::sampling_probs_ragged";

#define SPECDEC_VEC inline __attribute__((always_inline))

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef float f4 __attribute__((vector_size(16)));
typedef int32_t i4 __attribute__((vector_size(16)));
typedef double d4 __attribute__((vector_size(32)));
typedef int64_t l4 __attribute__((vector_size(32)));

constexpr float kFloatMax = std::numeric_limits<float>::max();
constexpr float kInf = std::numeric_limits<float>::infinity();

template <class V, class T>
SPECDEC_VEC V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class V, class T>
SPECDEC_VEC void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}
SPECDEC_VEC d4 widen(f4 v) { return __builtin_convertvector(v, d4); }
SPECDEC_VEC f4 narrow(d4 v) { return __builtin_convertvector(v, f4); }
SPECDEC_VEC d4 splat(double v) { return d4{v, v, v, v}; }
SPECDEC_VEC bool any(l4 m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }
SPECDEC_VEC bool any(i4 m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }

// exp(a) for a <= 0 (or -inf), four lanes: a = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite), exp(r) by its Taylor polynomial of degree 13 (truncation
// below 1e-17), times 2^n applied in two halves so that results down to the
// smallest subnormal round once; 0 below -745.2 (where exp rounds to 0).
SPECDEC_VEC d4 exp4(d4 a) {
  const d4 lo = splat(-745.2);
  const d4 c = a < lo ? lo : a;
  const d4 magic = splat(6755399441055744.0);  // 1.5 * 2^52: adding it rounds to an integer
  const d4 kn = c * splat(1.4426950408889634) + magic;
  const d4 n = kn - magic;
  d4 r = c - n * splat(0.693145751953125);  // ln2 high part: n * hi is exact
  r = r - n * splat(1.4286068203094172321e-6);
  d4 p = splat(1.0 / 6227020800.0);
  p = p * r + splat(1.0 / 479001600.0);
  p = p * r + splat(1.0 / 39916800.0);
  p = p * r + splat(1.0 / 3628800.0);
  p = p * r + splat(1.0 / 362880.0);
  p = p * r + splat(1.0 / 40320.0);
  p = p * r + splat(1.0 / 5040.0);
  p = p * r + splat(1.0 / 720.0);
  p = p * r + splat(1.0 / 120.0);
  p = p * r + splat(1.0 / 24.0);
  p = p * r + splat(1.0 / 6.0);
  p = p * r + splat(0.5);
  p = p * r + splat(1.0);
  p = p * r + splat(1.0);
  l4 ni;
  std::memcpy(&ni, &kn, sizeof(ni));
  l4 mb;
  std::memcpy(&mb, &magic, sizeof(mb));
  ni = ni - mb;           // n as an integer, in [-1075, 0]
  const l4 n1 = ni >> 1;  // floor(n / 2): both halves are normal powers of two
  const l4 n2 = ni - n1;
  const l4 b1 = (n1 + 1023) << 52, b2 = (n2 + 1023) << 52;
  d4 s1, s2;
  std::memcpy(&s1, &b1, sizeof(s1));
  std::memcpy(&s2, &b2, sizeof(s2));
  const d4 e = (p * s1) * s2;
  return a < lo ? splat(0.0) : e;
}

// The largest value t among `p` such that the mass of {p >= t} is >= need.
// Three-way quickselect on the values, expected linear.
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

struct RowParams {
  float temperature;
  int32_t top_k;
  float top_p;
  float min_p;
};

struct Candidate {
  float x;
  double p;
};

// Per-task buffers, reused across rows.
struct Scratch {
  std::vector<float> topk, row;
  std::vector<double> sel;
  std::vector<Candidate> cand;
};

// The maximum logit, its first index, and whether the row is free of NaN and +inf.
SPECDEC_VEC bool scan(const float* x, int64_t vocab, float* xmax, int64_t* first) {
  f8 m = f8{} - kInf;
  i8 at = i8{} - 1, bad = i8{};
  const i8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  int64_t i = 0;
  const int64_t vec_end = vocab <= std::numeric_limits<int32_t>::max() ? vocab / 8 * 8 : 0;
  for (; i < vec_end; i += 8) {
    const f8 v = load<f8>(x + i);
    bad |= ~(v <= kFloatMax);  // NaN and +inf fail
    const i8 up = v > m;       // strict: every lane keeps its first maximum
    m = up ? v : m;
    at = up ? lane + static_cast<int32_t>(i) : at;
  }
  float best = -kInf;
  int64_t best_i = -1;
  int any_bad = 0;
  for (int j = 0; j < 8; ++j) {
    any_bad |= bad[j];
    if (at[j] >= 0 && (m[j] > best || (m[j] == best && at[j] < best_i))) {
      best = m[j];
      best_i = at[j];
    }
  }
  for (; i < vocab; ++i) {
    const float v = x[i];
    if (!(v <= kFloatMax)) any_bad = 1;
    if (v > best) {
      best = v;
      best_i = i;
    }
  }
  if (best_i < 0) best_i = 0;  // every logit -inf (reported by the caller)
  *xmax = best;
  *first = best_i;
  return any_bad == 0;
}

// The k-th largest logit (ties counted), 0 < k < vocab: a streaming selection.
// Invariant: the buffer holds every logit seen so far that exceeds `thr`, plus
// k logits >= thr, so its k-th largest is the k-th largest of all seen.
SPECDEC_VEC float kth_largest(const float* x, int64_t vocab, int64_t k, std::vector<float>& buf) {
  const size_t cap = static_cast<size_t>(std::max<int64_t>(4 * k, 1024));
  buf.clear();
  float thr = -kInf;
  auto shrink = [&] {
    std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), std::greater<float>());
    thr = buf[k - 1];
    buf.resize(k);
  };
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8) {
    const f8 v = load<f8>(x + i);
    const i8 up = v > thr;
    if ((up[0] | up[1] | up[2] | up[3] | up[4] | up[5] | up[6] | up[7]) == 0) continue;
    for (int j = 0; j < 8; ++j) {
      if (x[i + j] > thr) buf.push_back(x[i + j]);
    }
    if (buf.size() >= cap) shrink();
  }
  for (; i < vocab; ++i) {
    if (x[i] > thr) buf.push_back(x[i]);
  }
  if (static_cast<int64_t>(buf.size()) < k) return -kInf;  // the rest are -inf
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), std::greater<float>());
  return buf[k - 1];
}

// Top-p's histogram of the kept mass over z - z_max: bucket j < kLast holds
// z - z_max in (-(j + 1) / 4, -j / 4], bucket kLast everything at or below -16.
constexpr int kLast = 64;
constexpr double kPerUnit = 4.0;

SPECDEC_VEC l4 bucket_of(d4 a) {
  const d4 f = -a * splat(kPerUnit);
  return __builtin_convertvector(f < splat(kLast) ? f : splat(kLast), l4);  // truncation = floor here
}

// The weight pass's float64 accumulators; `hist` (top-p only) has kLast + 1 buckets.
struct WeightSums {
  d4 s0, s1;
  double* hist;
};

// Four entries of the weight pass: w = exp(double(x) / t - zmax) where x >= lo
// (0 elsewhere) into the sums (and, for top-p, the histogram); returns float32 w.
template <bool kSparse, bool kHist>
SPECDEC_VEC f4 weigh_chunk(f4 xf, d4 td, d4 zd, float lo, bool second, WeightSums& acc) {
  const i4 keep = xf >= lo;
  if (kSparse && !any(keep)) return f4{};
  const d4 a = widen(xf) / td - zd;
  d4 w = exp4(a);
  if constexpr (kSparse) w = __builtin_convertvector(keep, l4) != 0 ? w : splat(0.0);
  if (second) {
    acc.s1 += w;
  } else {
    acc.s0 += w;
  }
  if constexpr (kHist) {
    const l4 j = bucket_of(a);
    acc.hist[j[0]] += w[0];
    acc.hist[j[1]] += w[1];
    acc.hist[j[2]] += w[2];
    acc.hist[j[3]] += w[3];
  }
  return narrow(w);
}

// The weight pass over a row: float32 w into out; returns their float64 sum and,
// for top-p, fills hist[kLast + 1] with the mass per bucket.
template <bool kSparse, bool kHist>
SPECDEC_VEC double weights(const float* x, int64_t vocab, double t, double zmax, float lo, float* out, double* hist) {
  WeightSums acc{splat(0.0), splat(0.0), hist};
  if constexpr (kHist) std::fill(hist, hist + kLast + 1, 0.0);
  const d4 td = splat(t), zd = splat(zmax);
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8) {
    store(out + i, weigh_chunk<kSparse, kHist>(load<f4>(x + i), td, zd, lo, false, acc));
    store(out + i + 4, weigh_chunk<kSparse, kHist>(load<f4>(x + i + 4), td, zd, lo, true, acc));
  }
  for (; i < vocab; i += 4) {  // the last 1..7 entries, padded with -inf (weight 0)
    float buf[4] = {-kInf, -kInf, -kInf, -kInf};
    const int64_t n = std::min<int64_t>(4, vocab - i);
    std::memcpy(buf, x + i, n * sizeof(float));
    float res[4];
    store(res, weigh_chunk<kSparse, kHist>(load<f4>(buf), td, zd, lo, false, acc));
    std::memcpy(out + i, res, n * sizeof(float));
  }
  const d4 s = acc.s0 + acc.s1;
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// The kept entries (x >= lo) of buckets [first, last] with a positive weight, as
// (logit, float64 probability) pairs, their weights recomputed as in weights().
SPECDEC_VEC double gather(const float* x, int64_t vocab, double t, double zmax, float lo, int first, int last,
                          double total, std::vector<Candidate>& cand) {
  cand.clear();
  const d4 td = splat(t), zd = splat(zmax);
  const l4 fv = {first, first, first, first}, lv = {last, last, last, last};
  double mass = 0.0;
  for (int64_t i = 0; i < vocab; i += 4) {
    float buf[4] = {-kInf, -kInf, -kInf, -kInf};  // the last 1..3 entries, padded with -inf
    const bool whole = i + 4 <= vocab;
    if (!whole) std::memcpy(buf, x + i, (vocab - i) * sizeof(float));
    const f4 xf = load<f4>(whole ? x + i : buf);
    const d4 a = widen(xf) / td - zd;
    const l4 j = bucket_of(a);
    const l4 in = (__builtin_convertvector(xf >= lo, l4) != 0) & (j >= fv) & (j <= lv);
    if (!any(in)) continue;
    const d4 w = exp4(a);
    for (int k = 0; k < 4; ++k) {
      if (in[k] && w[k] > 0.0) {
        const double p = w[k] / total;
        cand.push_back({xf[k], p});
        mass += p;
      }
    }
  }
  return mass;
}

// The last pass: out *= scale, and (kMask) zero where x < from.
template <bool kMask>
SPECDEC_VEC void scale_row(const float* x, int64_t vocab, double scale, float from, float* out) {
  const d4 sd = splat(scale);
  int64_t i = 0;
  for (; i + 4 <= vocab; i += 4) {
    const f4 v = narrow(widen(load<f4>(out + i)) * sd);
    if constexpr (kMask) {
      store(out + i, load<f4>(x + i) >= from ? v : f4{});
    } else {
      store(out + i, v);
    }
  }
  for (; i < vocab; ++i) {
    out[i] = (!kMask || x[i] >= from) ? static_cast<float>(static_cast<double>(out[i]) * scale) : 0.0f;
  }
}

// Top-p's cut: the smallest logit kept and the kept probability mass.
struct TopPCut {
  float from;
  double kept;
};

// Given the weight pass's histogram: buckets above `first` are surely inside the
// top-p set (their mass, even with rounding, is below top_p), buckets below `last`
// surely outside (the mass down to `last` surely reaches it), so only [first, last]
// is gathered (usually one bucket); if the rounding margins were not enough, the
// whole row is.
SPECDEC_VEC TopPCut top_p_cut(const float* x, int64_t vocab, double t, double zmax, float lo, const double* hist,
                              double total, double need, Scratch& s) {
  constexpr double kMargin = 1e-9;
  int first = kLast, last = kLast;
  double above = 0.0, cum = 0.0;
  bool found_first = false;
  for (int j = 0; j <= kLast; ++j) {
    const double next = cum + hist[j] / total;
    if (!found_first && next >= need * (1.0 - kMargin)) {
      first = j;
      above = cum;  // < need * (1 - kMargin): need - above stays positive
      found_first = true;
    }
    if (next >= need * (1.0 + kMargin)) {
      last = j;
      break;
    }
    cum = next;
  }
  if (!(above + gather(x, vocab, t, zmax, lo, first, last, total, s.cand) >= need)) {
    above = 0.0;
    gather(x, vocab, t, zmax, lo, 0, kLast, total, s.cand);
  }
  s.sel.resize(s.cand.size());
  for (size_t i = 0; i < s.cand.size(); ++i) s.sel[i] = s.cand[i].p;
  const double thr = mass_threshold(s.sel, need - above);
  TopPCut cut{kInf, above};
  for (const Candidate& c : s.cand) {
    if (c.p >= thr) {
      cut.kept += c.p;
      cut.from = std::min(cut.from, c.x);
    }
  }
  return cut;
}

// One row: logits x[V] -> out[V].  Returns an error code (0: valid).
SPECDEC_VEC int64_t row_probs_impl(const float* x, int64_t vocab, RowParams prm, float* out, Scratch& s) {
  float xmax;
  int64_t first_max;
  if (!scan(x, vocab, &xmax, &first_max)) return sampling::kLogitInvalid;
  if (xmax == -kInf) return sampling::kAllMasked;
  if (prm.temperature == 0.0f) {
    std::fill(out, out + vocab, 0.0f);
    out[first_max] = 1.0f;
    return kOk;
  }
  const double t = prm.temperature, zmax = static_cast<double>(xmax) / t;
  float lo = -kInf;  // the kept set before top-p: {x >= lo}
  if (sampling::top_k_active(prm.top_k, vocab)) lo = kth_largest(x, vocab, prm.top_k, s.topk);
  if (prm.min_p > 0.0f) lo = std::max(lo, sampling::key_value(sampling::min_p_key(xmax, t, prm.min_p)));
  const bool sparse = lo > -kInf;
  if (prm.top_p < 1.0f) {
    double hist[kLast + 1];
    const double total = sparse ? weights<true, true>(x, vocab, t, zmax, lo, out, hist)
                                : weights<false, true>(x, vocab, t, zmax, lo, out, hist);
    const TopPCut cut = top_p_cut(x, vocab, t, zmax, lo, hist, total, static_cast<double>(prm.top_p), s);
    scale_row<true>(x, vocab, 1.0 / (total * cut.kept), cut.from, out);
  } else {
    const double total = sparse ? weights<true, false>(x, vocab, t, zmax, lo, out, nullptr)
                                : weights<false, false>(x, vocab, t, zmax, lo, out, nullptr);
    scale_row<false>(x, vocab, 1.0 / total, -kInf, out);
  }
  return kOk;
}

int64_t row_probs_base(const float* x, int64_t vocab, RowParams prm, float* out, Scratch& s) {
  return row_probs_impl(x, vocab, prm, out, s);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) int64_t row_probs_avx2(const float* x, int64_t vocab, RowParams prm, float* out,
                                                           Scratch& s) {
  return row_probs_impl(x, vocab, prm, out, s);
}
#endif

using RowFn = int64_t (*)(const float*, int64_t, RowParams, float*, Scratch&);

RowFn pick_row_fn() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &row_probs_avx2;
#endif
  return &row_probs_base;
}

// Row r of the logits as float32: the row itself, or converted into s.row.
const float* row_as_float(const at::Tensor& logits, int64_t r, int64_t vocab, Scratch& s) {
  const auto type = logits.scalar_type();
  if (type == at::kFloat) return logits.data_ptr<float>() + r * vocab;
  s.row.resize(vocab);
  if (type == at::kHalf) {
    const c10::Half* h = logits.data_ptr<c10::Half>() + r * vocab;
    for (int64_t i = 0; i < vocab; ++i) s.row[i] = static_cast<float>(h[i]);
  } else {
    const c10::BFloat16* h = logits.data_ptr<c10::BFloat16>() + r * vocab;
    for (int64_t i = 0; i < vocab; ++i) s.row[i] = static_cast<float>(h[i]);
  }
  return s.row.data();
}

// The rows [0, count) of `logits`, row r with parameter row param(r), into out.
template <class ParamOf, class Record>
void run_rows(const at::Tensor& logits, int64_t count, int64_t vocab, const RowParams* params, ParamOf param_of,
              float* out, std::vector<ErrorRecord>& errors, Record record) {
  static const RowFn row_fn = pick_row_fn();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    Scratch s;
    for (int64_t r = begin; r < end; ++r) {
      const float* x = row_as_float(logits, r, vocab, s);
      const int64_t code = row_fn(x, vocab, params[param_of(r)], out + r * vocab, s);
      if (code != kOk) errors[r] = record(code, r);
    }
  });
}

// Every row's parameters, checked in row order (temperature, top_k, top_p, min_p).
std::vector<RowParams> read_params(const char* op, const at::Tensor& temperature, const at::Tensor& top_k,
                                   const at::Tensor& top_p, const std::optional<at::Tensor>& min_p) {
  const int64_t batch = temperature.size(0);
  const float* temp = temperature.data_ptr<float>();
  const int32_t* k = top_k.data_ptr<int32_t>();
  const float* tp = top_p.data_ptr<float>();
  const float* mp = min_p ? min_p->data_ptr<float>() : nullptr;
  std::vector<RowParams> params(batch);
  std::vector<ErrorRecord> errors(batch);
  for (int64_t b = 0; b < batch; ++b) {
    params[b] = RowParams{temp[b], k[b], tp[b], mp ? mp[b] : 0.0f};
    errors[b] = sampling::check_params(temp[b], k[b], tp[b], b);
    if (errors[b].code == kOk && mp) errors[b] = sampling::check_min_p(mp[b], b);
  }
  raise_first_error(errors, [op](const ErrorRecord& e) { raise_sampling_error(op, e); });
  return params;
}

at::Tensor sampling_probs_cpu(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                              const at::Tensor& top_p, const std::optional<at::Tensor>& min_p) {
  check_sampling_args(kOp, logits, temperature, top_k, top_p, min_p);
  const int64_t batch = logits.size(0), vocab = logits.size(-1);
  const int64_t rows = logits.dim() == 3 ? logits.size(1) : 1;
  const std::vector<RowParams> params = read_params(kOp, temperature, top_k, top_p, min_p);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  std::vector<ErrorRecord> errors(batch * rows, no_error(0));
  run_rows(
      logits, batch * rows, vocab, params.data(), [rows](int64_t r) { return r / rows; }, out.data_ptr<float>(), errors,
      [rows](int64_t code, int64_t r) { return make_error(code, r / rows, r % rows, 0); });
  raise_first_error(errors, [](const ErrorRecord& e) { raise_sampling_error(kOp, e); });
  return out;
}

at::Tensor sampling_probs_ragged_cpu(const at::Tensor& logits, const at::Tensor& cu_nodes,
                                     const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                                     const std::optional<at::Tensor>& min_p) {
  const RaggedShape shape = check_sampling_ragged_args(kRaggedOp, logits, cu_nodes, temperature, top_k, top_p, min_p);
  const int64_t total = shape.total, batch = shape.batch, vocab = logits.size(1);
  const int32_t* cu = cu_nodes.data_ptr<int32_t>();
  raise_first_error(std::vector<ErrorRecord>{tree::check_cu_nodes(cu, batch, total)},
                    [total](const ErrorRecord& e) { raise_cu_nodes_error(kRaggedOp, e, total); });
  const std::vector<RowParams> params = read_params(kRaggedOp, temperature, top_k, top_p, min_p);
  at::Tensor out = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
  std::vector<ErrorRecord> errors(total, no_error(0));
  run_rows(
      logits, total, vocab, params.data(), [cu, batch](int64_t t) { return tree::ragged_row_of(cu, batch, t); },
      out.data_ptr<float>(), errors,
      [cu, batch](int64_t code, int64_t t) { return make_error(code, tree::ragged_row_of(cu, batch, t), t, 0); });
  raise_first_error(errors, [](const ErrorRecord& e) { raise_sampling_ragged_error(kRaggedOp, e); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("sampling_probs", &sampling_probs_cpu);
  m.impl("sampling_probs_ragged", &sampling_probs_ragged_cpu);
}

}  // namespace specdec
