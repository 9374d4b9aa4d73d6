// Tree attention (tree_attention, tree_attention_paged), CPU kernels.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops/attention.h"
#include "ops/checks.h"
#include "ops/dispatch.h"
#include "specdec/attention_rules.h"

namespace specdec {
namespace {

// Tree attention for one (sequence, KV head) per task: the whole GQA group's
// N * G query rows at once against blocks of kBlock keys, float32, with an
// online softmax across blocks.  QK^T and PV are at::mm; the per-block row
// max, exp, sums and rescaling are vectorised ATen ops; the tree mask is an
// additive 0 / -inf bias applied only to the tree slots.
// `load(b, h, first, count)` returns the float32 K rows [count, Dk] and V rows
// [count, Dv] of those slots (views of the cache where possible, gathered
// otherwise).  Features (docs/ops.md): the window folds into the tree bias and,
// for prefix slots, starts the key loop at the first slot any row can see
// (whole blocks before it are never loaded) and masks the blocks that some
// rows see only partly; softcap caps the block's scores before the mask;
// the sink joins each row's denominator at the end (finish_row).
constexpr int64_t kBlock = 1024;

template <typename scalar_t, class BlockLoader>
void attend(const AttentionShape& s, const scalar_t* q, const int32_t* lens, const int32_t* mask, float scale,
            const float* sinks, int64_t longest, BlockLoader load, scalar_t* out, float* lse) {
  const int64_t G = s.group(), rows = s.nodes * G, D = s.dim, Dv = s.v_dim, N = s.nodes, W = s.window;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const float cap = s.softcap;
  const auto run_tasks = [&](int64_t begin, int64_t end) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor Q = at::empty({rows, D}, f32);
    at::Tensor bias = at::empty({rows, N}, f32);  // the tree part of the mask
    at::Tensor acc = at::empty({rows, Dv}, f32);
    at::Tensor m = at::empty({rows}, f32), l = at::empty({rows}, f32);
    // The window: each row's first visible prefix slot.
    at::Tensor first_seen = at::empty({rows}, at::kLong);
    float* qp = Q.data_ptr<float>();
    float* bp = bias.data_ptr<float>();
    int64_t* fp = first_seen.data_ptr<int64_t>();
    std::vector<int64_t> depth(N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, h = task % s.kv_heads;
      const int64_t length = lens[b], total = length + N;
      const int32_t* mseq = mask + b * N * s.words;
      for (int64_t j = 0; j < N; ++j) depth[j] = attention::node_depth(mseq + j * s.words, s.words, N);
      int64_t skip = length, last_first = 0;  // min and max of the rows' first visible prefix slots
      for (int64_t i = 0; i < N; ++i) {
        const int32_t* mrow = mseq + i * s.words;
        const int64_t pos = length + depth[i];
        const int64_t first = W > 0 ? std::clamp<int64_t>(pos - W + 1, 0, length) : 0;
        skip = std::min(skip, first);
        last_first = std::max(last_first, first);
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* src = q + ((b * N + i) * s.q_heads + h * G + g) * D;
          float* dst = qp + (i * G + g) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<float>(src[d]) * scale;
          float* brow = bp + (i * G + g) * N;
          for (int64_t j = 0; j < N; ++j) {
            const bool seen =
                attention::visible(length + j, length, mrow) && attention::in_window(pos, length + depth[j], W);
            brow[j] = seen ? 0.0f : neg_inf;
          }
          fp[i * G + g] = first;
        }
      }
      acc.zero_();
      m.fill_(neg_inf);
      l.zero_();
      for (int64_t s0 = skip; s0 < total; s0 += kBlock) {
        const int64_t bk = std::min(kBlock, total - s0);
        const auto [Kb, Vb] = load(b, h, s0, bk);
        at::Tensor S = at::mm(Q, Kb.t());  // [rows, bk], already scaled
        if (cap > 0.0f) S.div_(cap).tanh_().mul_(cap);
        if (s0 + bk > length) {  // this block reaches the tree slots
          const int64_t first = std::max<int64_t>(0, length - s0);
          const int64_t tree_first = s0 + first - length;
          S.narrow(1, first, bk - first).add_(bias.narrow(1, tree_first, bk - first));
        }
        if (last_first > s0 && s0 < length) {  // some rows' windows start inside this block's prefix part
          const int64_t np = std::min(bk, length - s0);
          const at::Tensor cols = at::arange(np, at::kLong).unsqueeze(0);
          S.narrow(1, 0, np).masked_fill_(cols.lt(first_seen.sub(s0).unsqueeze(1)), neg_inf);
        }
        const at::Tensor m_new = at::maximum(m, std::get<0>(S.max(1)));
        // Rows that have seen nothing yet keep m = -inf; subtract 0 there instead.
        const at::Tensor shift = at::where(at::isinf(m_new), at::zeros_like(m_new), m_new);
        const at::Tensor alpha = at::sub(m, shift).exp_();  // 0 where m was -inf
        S.sub_(shift.unsqueeze(1)).exp_();
        l.mul_(alpha).add_(S.sum(1));
        acc.mul_(alpha.unsqueeze(1)).addmm_(S, Vb);
        m.copy_(m_new);
      }
      const float* ap = acc.data_ptr<float>();
      const float* mp = m.data_ptr<float>();
      const float* lp = l.data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r / G, head = h * G + r % G;
        scalar_t* o = out + ((b * N + i) * s.q_heads + head) * Dv;
        const attention::RowFinish f = attention::finish_row(mp[r], lp[r], attention::sink_logit(sinks, head));
        for (int64_t d = 0; d < Dv; ++d) o[d] = static_cast<scalar_t>(ap[r * Dv + d] * f.inv);
        lse[(b * N + i) * s.q_heads + head] = f.lse;
      }
    }
  };
  // Big GEMMs (many query rows or long prefixes) run one task at a time so
  // that at::mm and the softmax ops use every thread; many small tasks run
  // in parallel, one per thread.  Sized by the longest sequence, not the
  // capacity (a block table may address far more slots than any row uses).
  const int64_t task_flops = 2 * rows * (D + Dv) * (longest + N);
  if (task_flops >= (int64_t{64} << 20)) {
    run_tasks(0, s.batch * s.kv_heads);
  } else {
    at::parallel_for(0, s.batch * s.kv_heads, 1, run_tasks);
  }
}

// Small problems (decoding with small models: a few query rows, short
// prefixes) are dominated by the per-call cost of the GEMM path's ATen ops, so
// they take this direct loop: per query row, the visible scores, their max,
// exp and the weighted sum of V rows, all float32, no allocation but scratch
// per task: one score per slot of the longest sequence (`longest` + N, never
// the capacity: a block table may address far more).  `k_row(b, h, slot)` /
// `v_row` point at a slot's K / V row.  The window starts each row's loop at
// its first visible prefix slot and tests the tree slots' positions.
template <typename scalar_t, class KRow, class VRow>
void attend_direct(const AttentionShape& s, const scalar_t* q, const int32_t* lens, const int32_t* mask, float scale,
                   const float* sinks, int64_t longest, KRow k_row, VRow v_row, scalar_t* out, float* lse,
                   int64_t grain) {
  const int64_t G = s.group(), D = s.dim, Dv = s.v_dim, N = s.nodes, W = s.window;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const float cap = s.softcap;
  at::parallel_for(0, s.batch * s.kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(D), acc(Dv), scores(longest + N);
    std::vector<int64_t> depth(N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, h = task % s.kv_heads;
      const int64_t length = lens[b], total = length + N;
      const int32_t* mseq = mask + b * N * s.words;
      for (int64_t j = 0; j < N; ++j) depth[j] = attention::node_depth(mseq + j * s.words, s.words, N);
      for (int64_t i = 0; i < N; ++i) {
        const int32_t* mrow = mseq + i * s.words;
        const int64_t pos = length + depth[i];
        const int64_t first = W > 0 ? std::clamp<int64_t>(pos - W + 1, 0, length) : 0;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t head = h * G + g;
          const scalar_t* src = q + ((b * N + i) * s.q_heads + head) * D;
          for (int64_t d = 0; d < D; ++d) qf[d] = static_cast<float>(src[d]) * scale;
          float mx = neg_inf;
          for (int64_t j = first; j < total; ++j) {
            if (!attention::visible(j, length, mrow) ||
                (j >= length && !attention::in_window(pos, length + depth[j - length], W))) {
              scores[j] = neg_inf;
              continue;
            }
            const scalar_t* kr = k_row(b, h, j);
            // Eight independent partial sums: each adds D/8 terms (the error of a
            // sequential float sum grows with its length) and the loop vectorises.
            float part[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            int64_t d = 0;
            for (; d + 8 <= D; d += 8) {
              for (int64_t l = 0; l < 8; ++l) part[l] += qf[d + l] * static_cast<float>(kr[d + l]);
            }
            for (; d < D; ++d) part[d & 7] += qf[d] * static_cast<float>(kr[d]);
            const float dot = attention::soft_cap(
                ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])), cap);
            scores[j] = dot;
            mx = std::max(mx, dot);
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          float sum = 0.0f;
          if (mx != neg_inf) {
            for (int64_t j = first; j < total; ++j) {
              if (scores[j] == neg_inf) continue;
              const float p = std::exp(scores[j] - mx);
              sum += p;
              const scalar_t* vr = v_row(b, h, j);
              for (int64_t d = 0; d < Dv; ++d) acc[d] += p * static_cast<float>(vr[d]);
            }
          }
          scalar_t* o = out + ((b * N + i) * s.q_heads + head) * Dv;
          const attention::RowFinish f = attention::finish_row(mx, sum, attention::sink_logit(sinks, head));
          for (int64_t d = 0; d < Dv; ++d) o[d] = static_cast<scalar_t>(acc[d] * f.inv);
          lse[(b * N + i) * s.q_heads + head] = f.lse;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// The direct path for float32 caches: a task's R = N * G query rows against
// its slots, rows in blocks of four sharing each K and V row load, the softmax
// with a vectorisable exp.  The kernels are compiled for AVX2 + FMA as well as
// the baseline, picked at load time by the CPU (GCC's target_clones), so one
// build runs everywhere and uses the wider vectors where they exist.
// ---------------------------------------------------------------------------
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SPECDEC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SPECDEC_CPU_CLONES
#endif
// Helpers of the cloned kernels must be inlined into each clone (GCC inlines
// across different -march settings only when forced).
#define SPECDEC_VEC_INLINE inline __attribute__((always_inline))

// These vector helpers are internal and always inlined, so the ABI note GCC
// gives for passing 32-byte vectors without AVX does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
// Eight floats as one vector (GCC / Clang vector extension): one AVX register
// in the AVX2 clone, two SSE registers in the baseline one.
typedef float v8f __attribute__((vector_size(32)));
SPECDEC_VEC_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
SPECDEC_VEC_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

typedef int32_t v8i __attribute__((vector_size(32)));

// exp(x) for x <= 0, eight at a time (scores minus their row max; -inf gives 0):
// x = k ln2 + r with k rounded to nearest (the 1.5 * 2^23 trick, exact for
// |k| < 2^22) and |r| <= ln2 / 2, exp(r) by a degree-6 polynomial (relative
// error about 2e-7), times 2^k built in the exponent bits.  Below -87.3 (under
// float32's smallest normal) the result is 0.  Plain vector arithmetic, no
// branches and no calls.
SPECDEC_VEC_INLINE v8f exp8_nonpositive(v8f x) {
  const v8i keep = x >= -87.3f;  // -1 where kept, 0 where the result is 0 (-inf included)
  const v8f lo = v8f{} - 87.3f;
  x = keep ? x : lo;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const v8f shifted = x * 1.44269504088896341f + magic;
  const v8f k = shifted - magic;
  v8f r = x - k * 0.693359375f;  // ln2 in two parts: the first is exact in float
  r = r + k * 2.12194440e-4f;
  v8f y = v8f{} + 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  // (vector casts between same-size vector types reinterpret the bits)
  const v8i magic_bits = v8i{} + 0x4B400000;  // the bits of `magic`
  const v8f scale = (v8f)((((v8i)shifted - magic_bits) + 127) << 23);
  return (v8f)((v8i)(y * scale) & keep);
}

#if defined(__clang__)
#define SPECDEC_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SPECDEC_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, v8i{__VA_ARGS__})
#endif

// Pairwise sums of adjacent lanes of a then b: [a0+a1, a2+a3, a4+a5, a6+a7, b0+b1, ...].
SPECDEC_VEC_INLINE v8f pair_sums(v8f a, v8f b) {
  return SPECDEC_SHUFFLE8(a, b, 0, 2, 4, 6, 8, 10, 12, 14) + SPECDEC_SHUFFLE8(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}

// The eight lane sums of p[0..8), each ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), in
// one vector: the scalar combination below, eight at a time.
SPECDEC_VEC_INLINE v8f reduce8(const v8f* p) {
  const v8f x0 = pair_sums(p[0], p[1]), x1 = pair_sums(p[2], p[3]);
  const v8f x2 = pair_sums(p[4], p[5]), x3 = pair_sums(p[6], p[7]);
  return pair_sums(pair_sums(x0, x1), pair_sums(x2, x3));
}

// S[r][c] = Q[r] . K[c]: eight partial sums per score (lane l adds the terms
// d = l mod 8, in order), combined pairwise, as the generic loop does.  Slots
// go eight at a time (their lane sums reduced together) while D is a multiple
// of 8; the rest one at a time.
SPECDEC_CPU_CLONES
void direct_scores_f32(const float* Q, int64_t R, int64_t D, const float* const* krows, int64_t count, float* S) {
  const int64_t D8 = D / 8 * 8;
  const int64_t blocked = D8 == D ? count / 8 * 8 : 0;
  for (int64_t c = 0; c < blocked; c += 8) {
    const float* const* k = krows + c;
    for (int64_t r = 0; r < R; ++r) {
      const float* __restrict q = Q + r * D;
      v8f part[8];
      for (int j = 0; j < 8; ++j) part[j] = v8f{};
      for (int64_t d = 0; d < D; d += 8) {
        const v8f qd = load8(q + d);
        for (int j = 0; j < 8; ++j) part[j] += qd * load8(k[j] + d);
      }
      store8(S + r * count + c, reduce8(part));
    }
  }
  for (int64_t c = blocked; c < count; ++c) {
    const float* __restrict kr = krows[c];
    for (int64_t r = 0; r < R; ++r) {
      const float* __restrict q = Q + r * D;
      v8f part{};
      for (int64_t d = 0; d < D8; d += 8) part += load8(q + d) * load8(kr + d);
      float l[8];
      store8(l, part);
      for (int64_t d = D8; d < D; ++d) l[d & 7] += q[d] * kr[d];
      S[r * count + c] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    }
  }
}

// acc[0, 64) += sum_c P[c] V[c][d0 + ...] over one row's weights, 64 columns in
// eight registers (each V row read once per row).
SPECDEC_VEC_INLINE void pv_chunk64(const float* __restrict P, int64_t count, const float* const* vrows, int64_t d0,
                                   float* __restrict acc) {
  v8f a[8];
  for (int j = 0; j < 8; ++j) a[j] = load8(acc + 8 * j);
  for (int64_t c = 0; c < count; ++c) {
    const float p = P[c];
    if (p == 0.0f) continue;  // masked (or underflowed): adds nothing, V not read
    const float* __restrict vr = vrows[c] + d0;
    for (int j = 0; j < 8; ++j) a[j] += p * load8(vr + 8 * j);
  }
  for (int j = 0; j < 8; ++j) store8(acc + 8 * j, a[j]);
}

// Row softmax of S (masked entries -inf) into weights P (in place), each row's
// max into mx and its sum into sum, then acc[r] = sum_c P[r][c] V[c] (masked
// slots skipped, their V never read).
SPECDEC_CPU_CLONES
void direct_softmax_pv_f32(float* S, int64_t R, int64_t count, const float* const* vrows, int64_t Dv, float* acc,
                           float* mx, float* sum) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t C8 = count / 8 * 8;
  std::fill(acc, acc + R * Dv, 0.0f);
  for (int64_t r = 0; r < R; ++r) {
    float* __restrict row = S + r * count;
    float m = neg_inf;
    for (int64_t c = 0; c < count; ++c) m = std::max(m, row[c]);
    mx[r] = m;
    if (m == neg_inf) {
      std::fill(row, row + count, 0.0f);
      sum[r] = 0.0f;
      continue;
    }
    v8f lanes{};
    for (int64_t c = 0; c < C8; c += 8) {
      const v8f e = exp8_nonpositive(load8(row + c) - m);
      store8(row + c, e);
      lanes += e;
    }
    if (C8 < count) {  // the last partial vector, padded with -inf (exp 0)
      float t[8];
      for (int l = 0; l < 8; ++l) t[l] = C8 + l < count ? row[C8 + l] - m : neg_inf;
      const v8f e = exp8_nonpositive(load8(t));
      lanes += e;
      store8(t, e);
      for (int64_t c = C8; c < count; ++c) row[c] = t[c - C8];
    }
    float l8[8];
    store8(l8, lanes);
    sum[r] = ((l8[0] + l8[1]) + (l8[2] + l8[3])) + ((l8[4] + l8[5]) + (l8[6] + l8[7]));
    float* a = acc + r * Dv;
    int64_t d0 = 0;
    for (; d0 + 64 <= Dv; d0 += 64) pv_chunk64(row, count, vrows, d0, a + d0);
    if (d0 < Dv) {
      for (int64_t c = 0; c < count; ++c) {
        const float p = row[c];
        if (p == 0.0f) continue;
        const float* vr = vrows[c];
        for (int64_t d = d0; d < Dv; ++d) a[d] += p * vr[d];
      }
    }
  }
}

// The direct path for float32: per task, gather the slot pointers, score every
// row against every slot from the first any row sees, mask (tree bits, window),
// soft-cap, then softmax and PV in the cloned kernels.
template <class KRow, class VRow>
void attend_direct_f32(const AttentionShape& s, const float* q, const int32_t* lens, const int32_t* mask, float scale,
                       const float* sinks, int64_t longest, KRow k_row, VRow v_row, float* out, float* lse,
                       int64_t grain) {
  const int64_t G = s.group(), D = s.dim, Dv = s.v_dim, N = s.nodes, W = s.window, R = N * G;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const float cap = s.softcap;
  at::parallel_for(0, s.batch * s.kv_heads, grain, [&](int64_t begin, int64_t end) {
    const int64_t most = longest + N;
    std::vector<float> qf(R * D), acc(R * Dv), scores(R * most), mx(R), sum(R);
    std::vector<const float*> kp(most), vp(most);
    std::vector<int64_t> depth(N), first(N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, h = task % s.kv_heads;
      const int64_t length = lens[b], total = length + N;
      const int32_t* mseq = mask + b * N * s.words;
      for (int64_t j = 0; j < N; ++j) depth[j] = attention::node_depth(mseq + j * s.words, s.words, N);
      int64_t skip = length;
      for (int64_t i = 0; i < N; ++i) {
        first[i] = W > 0 ? std::clamp<int64_t>(length + depth[i] - W + 1, 0, length) : 0;
        skip = std::min(skip, first[i]);
        for (int64_t g = 0; g < G; ++g) {
          const float* src = q + ((b * N + i) * s.q_heads + h * G + g) * D;
          float* dst = qf.data() + (i * G + g) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * scale;
        }
      }
      const int64_t count = total - skip;
      for (int64_t c = 0; c < count; ++c) {
        kp[c] = k_row(b, h, skip + c);
        vp[c] = v_row(b, h, skip + c);
      }
      float* S = scores.data();
      direct_scores_f32(qf.data(), R, D, kp.data(), count, S);
      for (int64_t i = 0; i < N; ++i) {
        const int32_t* mrow = mseq + i * s.words;
        const int64_t pos = length + depth[i];
        for (int64_t g = 0; g < G; ++g) {
          float* row = S + (i * G + g) * count;
          if (cap > 0.0f) {
            for (int64_t c = 0; c < count; ++c) row[c] = attention::soft_cap(row[c], cap);
          }
          for (int64_t c = 0; c < first[i] - skip; ++c) row[c] = neg_inf;  // before the window
          for (int64_t j = 0; j < N; ++j) {
            if (!attention::visible(length + j, length, mrow) || !attention::in_window(pos, length + depth[j], W)) {
              row[length + j - skip] = neg_inf;
            }
          }
        }
      }
      direct_softmax_pv_f32(S, R, count, vp.data(), Dv, acc.data(), mx.data(), sum.data());
      for (int64_t r = 0; r < R; ++r) {
        const int64_t i = r / G, head = h * G + r % G;
        float* o = out + ((b * N + i) * s.q_heads + head) * Dv;
        const attention::RowFinish f = attention::finish_row(mx[r], sum[r], attention::sink_logit(sinks, head));
        for (int64_t d = 0; d < Dv; ++d) o[d] = acc[r * Dv + d] * f.inv;
        lse[(b * N + i) * s.q_heads + head] = f.lse;
      }
    }
  });
}

// Per-task multiply-adds (QK^T and PV) below which the direct loop wins: the
// float32 kernels (vectorised, rows sharing each K / V row) beat the GEMM path
// up to tens of millions on the development machine (one thread); the generic
// loop of the 16-bit types only up to about a million.
constexpr int64_t kDirectFlops = int64_t{1} << 20;
constexpr int64_t kDirectFlopsF32 = int64_t{1} << 24;

std::tuple<at::Tensor, at::Tensor> attention_cpu(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor* block_tables,
                                                 const at::Tensor& cache_lens, const at::Tensor& mask, double scale,
                                                 int64_t window, double softcap,
                                                 const std::optional<at::Tensor>& sinks_opt) {
  const AttentionShape s =
      check_tree_attention(op, q, k, v, block_tables, cache_lens, mask, scale, window, softcap, sinks_opt);
  const int32_t* lens = cache_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables ? block_tables->data_ptr<int32_t>() : nullptr;
  const float* sinks = s.has_sinks ? sinks_opt->data_ptr<float>() : nullptr;
  // The sinks (one record for the call) first, then every sequence's indices;
  // as on CUDA, an empty batch runs no kernel and checks no values.
  std::vector<ErrorRecord> errors(s.batch + 1);
  errors[0] = s.batch > 0 ? attention::check_sinks(sinks, s.q_heads) : no_error(0);
  for (int64_t b = 0; b < s.batch; ++b) errors[b + 1] = check_attention_row(s, b, lens, tables);
  raise_first_error(errors, [&](const ErrorRecord& e) { raise_attention_error(op, s, e); });
  at::Tensor out = at::empty({s.batch, s.nodes, s.q_heads, s.v_dim}, q.options());
  at::Tensor lse = at::empty({s.batch, s.nodes, s.q_heads}, q.options().dtype(at::kFloat));
  int64_t longest = 0;
  for (int64_t b = 0; b < s.batch; ++b) longest = std::max<int64_t>(longest, lens[b]);
  const int64_t task_flops = 2 * s.nodes * s.group() * (s.dim + s.v_dim) * (longest + s.nodes);
  const float fscale = static_cast<float>(scale);
  if (task_flops < (q.scalar_type() == at::kFloat ? kDirectFlopsF32 : kDirectFlops)) {
    // Thread only when the whole call is worth it (about 256k flops a thread).
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(task_flops, 1));
    SPECDEC_DISPATCH_KV_TYPES(q.scalar_type(), "tree_attention", [&] {
      const scalar_t* kp = k.data_ptr<scalar_t>();
      const scalar_t* vp = v.data_ptr<scalar_t>();
      const int64_t D = s.dim, Dv = s.v_dim, H = s.kv_heads;
      const auto run = [&](auto k_row, auto v_row) {
        if constexpr (std::is_same_v<scalar_t, float>) {
          attend_direct_f32(s, q.data_ptr<float>(), lens, mask.data_ptr<int32_t>(), fscale, sinks, longest, k_row,
                            v_row, out.data_ptr<float>(), lse.data_ptr<float>(), grain);
        } else {
          attend_direct<scalar_t>(s, q.data_ptr<scalar_t>(), lens, mask.data_ptr<int32_t>(), fscale, sinks, longest,
                                  k_row, v_row, out.data_ptr<scalar_t>(), lse.data_ptr<float>(), grain);
        }
      };
      if (tables == nullptr) {
        const int64_t S = s.capacity;
        run([kp, D, H, S](int64_t b, int64_t h, int64_t slot) { return kp + ((b * H + h) * S + slot) * D; },
            [vp, Dv, H, S](int64_t b, int64_t h, int64_t slot) { return vp + ((b * H + h) * S + slot) * Dv; });
      } else {
        const int64_t ps = s.page_size, mb = s.max_blocks;
        auto token = [tables, ps, mb, H](int64_t b, int64_t h, int64_t slot) {
          return (static_cast<int64_t>(tables[b * mb + slot / ps]) * ps + slot % ps) * H + h;
        };
        run([kp, token, D](int64_t b, int64_t h, int64_t slot) { return kp + token(b, h, slot) * D; },
            [vp, token, Dv](int64_t b, int64_t h, int64_t slot) { return vp + token(b, h, slot) * Dv; });
      }
    });
    return {out, lse};
  }
  SPECDEC_DISPATCH_KV_TYPES(q.scalar_type(), "tree_attention", [&] {
    const auto f32 = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); };
    if (tables == nullptr) {
      // [B, Hkv, S, D]: a block of slots is a [count, D] slice of one (b, h).
      auto load = [&](int64_t b, int64_t h, int64_t first, int64_t count) {
        return std::pair{f32(k[b][h].narrow(0, first, count)), f32(v[b][h].narrow(0, first, count))};
      };
      attend<scalar_t>(s, q.data_ptr<scalar_t>(), lens, mask.data_ptr<int32_t>(), fscale, sinks, longest, load,
                       out.data_ptr<scalar_t>(), lse.data_ptr<float>());
    } else {
      // [P, page_size, Hkv, D] seen as token rows [P * page_size, D] of head h;
      // a block is gathered through the block table.
      const int64_t ps = s.page_size, mb = s.max_blocks;
      const at::Tensor k_rows = k.view({s.num_pages * ps, s.kv_heads, s.dim});
      const at::Tensor v_rows = v.view({s.num_pages * ps, s.kv_heads, s.v_dim});
      auto load = [&, ps, mb](int64_t b, int64_t h, int64_t first, int64_t count) {
        at::Tensor index = at::empty({count}, at::kLong);
        int64_t* ip = index.data_ptr<int64_t>();
        for (int64_t c = 0; c < count; ++c) {
          const int64_t slot = first + c;
          ip[c] = static_cast<int64_t>(tables[b * mb + slot / ps]) * ps + slot % ps;
        }
        return std::pair{f32(k_rows.select(1, h).index_select(0, index)),
                         f32(v_rows.select(1, h).index_select(0, index))};
      };
      attend<scalar_t>(s, q.data_ptr<scalar_t>(), lens, mask.data_ptr<int32_t>(), fscale, sinks, longest, load,
                       out.data_ptr<scalar_t>(), lse.data_ptr<float>());
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                                      const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                      const at::Tensor& mask, double scale, int64_t window,
                                                      double softcap, const std::optional<at::Tensor>& sinks) {
  return attention_cpu("specdec::tree_attention", q, k_cache, v_cache, nullptr, cache_lens, mask, scale, window,
                       softcap, sinks);
}

std::tuple<at::Tensor, at::Tensor> tree_attention_paged_cpu(const at::Tensor& q, const at::Tensor& k_pages,
                                                            const at::Tensor& v_pages, const at::Tensor& block_tables,
                                                            const at::Tensor& cache_lens, const at::Tensor& mask,
                                                            double scale, int64_t window, double softcap,
                                                            const std::optional<at::Tensor>& sinks) {
  return attention_cpu("specdec::tree_attention_paged", q, k_pages, v_pages, &block_tables, cache_lens, mask, scale,
                       window, softcap, sinks);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("tree_attention", &tree_attention_cpu);
  m.impl("tree_attention_paged", &tree_attention_paged_cpu);
}

}  // namespace specdec
